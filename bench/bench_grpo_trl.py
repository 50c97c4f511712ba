"""r1kit's GRPO against TRL's `GRPOTrainer`: seconds per step, completions/s, peak memory, held-out accuracy.

Both trainers start from the same model directory and train on the same task with the same settings: P prompts
per step × G completions each (one generation and one optimiser step per step: r1kit `mu=1, mini_batches=1`;
TRL `generation_batch_size = per_device_train_batch_size = P×G`, `num_iterations=1`), completions of at most L
tokens sampled at the same temperature (top-p 1, no top-k), reward = accuracy + format from r1kit's verifier
(`task.score`), group-std-scaled advantages, per-sequence mean loss (r1kit `grpo`, TRL `loss_type="grpo"`), clip
ε 0.2, the same KL weight β, AdamW (β2 0.99, no weight decay) at a constant learning rate, gradient clipping at 1,
fp32, no gradient checkpointing, and the same torch thread count.

Each trainer runs in its own subprocess, so `ru_maxrss` (the resident-set high-water mark, taken at the end of
the child, after training and the held-out evaluation) is per trainer; the TRL child also pays for importing
trl/datasets/pandas/pyarrow. The parent runs the children one after another and collects the JSON each prints on
its last stdout line. After training, both final models are saved, loaded back and evaluated by the same call,
`r1kit.evaluation.evaluate.evaluate` (pass@1 over k samples at T=0.6, top-p 0.95, on the test split); a third child
evaluates the starting model the same way (skip it with `--no-baseline`).

Timing: "s/step" is the training call's wall time over the steps (r1kit: its step loop, including the final
checkpoint write; TRL: `trainer.train()`); "step-only" sums the per-step times (r1kit: `time_step` from
metrics.jsonl; TRL: a callback between `on_step_begin` and `on_step_end`). Completions/s = steps × P × G / wall.

TRL is a benchmark-only extra (written against TRL 1.16.0, whose GRPOConfig has no `max_prompt_length`; neither
trainer truncates prompts): `.venv/bin/pip install -e ".[bench]" "torch==2.13.0"` (the pin keeps the CPU torch).

    .venv/bin/python bench/bench_grpo_trl.py --model runs/demo/base --json bench/grpo_trl.json
    .venv/bin/python bench/bench_grpo_trl.py --model runs/demo/base --steps 2 --prompts 2 --group 4 \\
        --max-new-tokens 16 --eval-n 10 --eval-k 1     # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROLES = ("start", "r1kit", "trl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", required=True, help="the starting model directory (a trained base, e.g. runs/demo/base)"
    )
    ap.add_argument("--task", default="arithmetic", help="task spec")
    ap.add_argument("--steps", type=int, default=20, help="optimiser steps (= generations) for each trainer")
    ap.add_argument("--prompts", type=int, default=8, help="P: prompts per step")
    ap.add_argument("--group", type=int, default=8, help="G: completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="L: completion budget (training and eval)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature during training")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument(
        "--beta", type=float, default=0.0, help="KL weight (0: no reference model, TRL's default)"
    )
    ap.add_argument(
        "--train-problems", type=int, default=2000, help="size of the training pool (both trainers)"
    )
    ap.add_argument("--eval-n", type=int, default=500, help="held-out problems")
    ap.add_argument("--eval-k", type=int, default=4, help="samples per held-out problem")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each child")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true", help="skip evaluating the starting model")
    ap.add_argument("--work-dir", help="where the runs and logs go (default: a new temporary directory)")
    ap.add_argument("--json", help="also write the full report to this path")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each trainer, alternating r1kit, TRL, r1kit, ...; the table gives medians")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="fp32, or bf16 autocast over fp32 weights (r1kit parallel.dtype=bf16, TRL bf16=True)")
    ap.add_argument("--r1kit-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an r1kit config override (e.g. rollout.overlap=true), to measure one lever")
    ap.add_argument("--no-trl", action="store_true", help="run r1kit only (lever measurements)")
    ap.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)  # set by the parent for its children
    ap.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.steps, args.prompts, args.max_new_tokens, args.threads, args.eval_n, args.eval_k) < 1:
        ap.error("--steps, --prompts, --max-new-tokens, --threads, --eval-n and --eval-k must be at least 1")
    if args.group < 2:
        ap.error("--group must be at least 2")
    return args


# -- children ------------------------------------------------------------------------------------------------


def _eval_config(args):
    from r1kit.config import EvalConfig

    return EvalConfig(n=args.eval_n, k=args.eval_k, max_new_tokens=args.max_new_tokens, seed=args.seed)


def _evaluate_dir(model_dir: Path | str, args) -> dict:
    """The held-out metrics of a saved model: loaded from disk and evaluated the same way for every trainer."""
    from r1kit.evaluation.evaluate import evaluate
    from r1kit.models.modeling import load_model
    from r1kit.tasks import get_task

    model, tokenizer = load_model(model_dir)
    result = evaluate(model, tokenizer, get_task(args.task), _eval_config(args), progress=False)
    return {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}


def child_start(args, work: Path) -> dict:
    return {"eval": _evaluate_dir(args.model, args)}


def child_r1kit(args, work: Path) -> dict:
    from r1kit.algo.rl_config import AlgoConfig, OptimConfig, RLConfig, RolloutConfig
    from r1kit.config import ParallelConfig, apply_overrides, build, to_dict
    from r1kit.cost.devices import ledger_for
    from r1kit.loops.rl import run_rl

    run_dir = work / f"r1kit{args.repeat}"
    cfg = RLConfig(
        model=args.model,
        task=args.task,
        out=str(run_dir),
        steps=args.steps,
        seed=args.seed,
        train_problems=args.train_problems,
        rollout=RolloutConfig(
            prompts_per_step=args.prompts,
            group_size=args.group,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
        ),
        algo=AlgoConfig(beta=args.beta, mu=1, mini_batches=1),
        optim=OptimConfig(lr=args.lr),
        eval=_eval_config(args),
        checkpoint_every=args.steps,
        parallel=ParallelConfig(dtype=args.dtype),
    )
    if args.r1kit_set:
        cfg = build(RLConfig, apply_overrides(to_dict(cfg), args.r1kit_set))
    t0 = time.perf_counter()
    summary = run_rl(cfg, progress=False, ledger_factory=lambda d, stage, mc: ledger_for(d, stage, model_config=mc))
    call_seconds = time.perf_counter() - t0  # loading, the loop, saving and run_rl's own evaluation
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "time_step" in r]
    return {
        "train_seconds": summary["seconds_this_process"],
        "step_seconds": [r["time_step"] for r in rows],
        "completions": sum(r["completions_sampled"] for r in rows),
        "run_rl_seconds": call_seconds,
        "train_reward_mean": [r["reward_mean"] for r in rows],
        "train_accuracy": [r["accuracy"] for r in rows],
        "run_rl_eval_pass@1": (summary.get("after") or {}).get("pass@1"),  # same config: a cross-check
        "eval": _evaluate_dir(run_dir / "model", args),
        "run_dir": str(run_dir),
        "phases": _ledger_phases(run_dir),
    }


def _ledger_phases(run_dir: Path) -> dict:
    """Per ledger phase of the run: wall seconds, FLOPs, achieved FLOP/s and its share of the probed CPU peak
    (the ledger's MFU: FLOPs / (wall x threads x per-thread peak))."""
    from r1kit.cost.ledger import read_ledger, summarize

    phases = summarize(read_ledger(run_dir))["phases"].get("rl", {})
    return {
        name: {"wall_s": t["wall_s"], "flops": t["flops"] or 0.0,
               "achieved_flops_per_s": (t["flops"] or 0.0) / t["wall_s"] if t["wall_s"] else None,
               "share_of_peak": t["mfu"]}
        for name, t in phases.items()
    }


def _checkpointing_flag(config_cls) -> str:
    """`activation_checkpointing` since transformers 5.x; `gradient_checkpointing` (now a deprecated alias) before."""
    fields = getattr(config_cls, "__dataclass_fields__", {})
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def child_trl(args, work: Path) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.models.modeling import load_model, save_model
    from r1kit.tasks import get_task
    from r1kit.tasks.prompting import make_prompter

    task = get_task(args.task)
    problems = task.problems("train", args.train_problems, seed=args.seed)
    by_id = {p.id: p for p in problems}
    model, tokenizer = load_model(args.model, trainable=True)  # padding side left, pad token set
    prompter = make_prompter(task, tokenizer)  # the prompt text r1kit's run tokenizes (a chat template rendered)
    dataset = Dataset.from_dict(
        {
            "prompt": [prompter.text(p) for p in problems],
            "problem_id": [p.id for p in problems],
            "answer": [p.answer for p in problems],
        }
    )

    # r1kit's default reward, {"accuracy": 1, "format": 1}, from the same verifier; TRL sums the two.
    def accuracy_reward(prompts, completions, problem_id, **kwargs) -> list[float]:
        return [float(prompter.score(by_id[i], c).correct) for i, c in zip(problem_id, completions)]

    def format_reward(prompts, completions, problem_id, **kwargs) -> list[float]:
        return [float(prompter.score(by_id[i], c).formatted) for i, c in zip(problem_id, completions)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._t0)

    batch = args.prompts * args.group
    config = GRPOConfig(
        output_dir=str(work / f"trl{args.repeat}" / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=batch,  # completions per optimiser step
        gradient_accumulation_steps=1,
        generation_batch_size=batch,  # one generation per optimiser step (steps_per_generation = 1)
        num_generations=args.group,
        num_iterations=1,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        top_p=1.0,
        top_k=0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.99,
        max_grad_norm=1.0,
        beta=args.beta,
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        mask_truncated_completions=False,
        **{_checkpointing_flag(GRPOConfig): False},  # TRL turns it on by default
        bf16=args.dtype == "bf16",
        fp16=False,
        use_cpu=True,
        disable_dropout=True,
        shuffle_dataset=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[accuracy_reward, format_reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    model_dir = work / f"trl{args.repeat}" / "model"
    save_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, model_dir)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {
        "trl": trl.__version__,
        "activation_checkpointing": bool(getattr(trainer.args, _checkpointing_flag(GRPOConfig))),
        "train_seconds": train_seconds,
        "step_seconds": timer.seconds,
        "completions": trainer.state.global_step * batch,
        "train_reward_mean": [h["reward"] for h in logs],
        "train_accuracy": [h.get("rewards/accuracy_reward/mean") for h in logs],
        "eval": _evaluate_dir(model_dir, args),
        "model_dir": str(model_dir),
    }


CHILDREN = {"start": child_start, "r1kit": child_r1kit, "trl": child_trl}


def run_child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    result = CHILDREN[args.role](args, work)
    result.update(
        role=args.role,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        torch_threads_at_end=torch.get_num_threads(),
    )
    print(json.dumps(result), flush=True)


# -- parent --------------------------------------------------------------------------------------------------


def spawn(role: str, argv: list[str], work: Path, threads: int) -> dict:
    """Run one child to completion; its JSON result is the last line of its stdout. Logs go to `work`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads))
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--work-dir", str(work), "--role", role]
    print(f"running {role} ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (work / f"{role}.stdout.log").write_text(proc.stdout)
    (work / f"{role}.stderr.log").write_text(proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the {role} child failed (exit {proc.returncode}); logs in {work}")
    result = json.loads(lines[-1])
    result["child_seconds"] = time.perf_counter() - t0
    return result


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    out.update(cpu=cpu, cpu_count=os.cpu_count())
    return out


def _summary(r: dict, steps: int) -> dict:
    steps_done = max(len(r["step_seconds"]), 1)
    return {
        "s_per_step": r["train_seconds"] / steps,
        "s_per_step_steps_only": sum(r["step_seconds"]) / steps_done,
        "completions_per_s": r["completions"] / r["train_seconds"],
        "peak_rss_mib": r["peak_rss_mib"],
        "pass@1": r["eval"]["pass@1"],
        "pass@1_ci95": r["eval"]["pass@1_ci95"],
        "format_rate": r["eval"]["format_rate"],
    }


def _median_summary(runs: list[dict], steps: int) -> dict:
    """Medians over the repeats of each figure (peak RSS: the largest), and the repeats' own figures."""
    each = [_summary(r, steps) for r in runs]
    out = {k: statistics.median(e[k] for e in each) for k in each[0]}
    out["peak_rss_mib"] = max(e["peak_rss_mib"] for e in each)
    out["repeats"] = len(each)
    out["each"] = each
    return out


def format_table(report: dict) -> str:
    s, v = report["settings"], report["environment"]
    lines = [
        f"GRPO: r1kit vs TRL {v['trl']} GRPOTrainer (torch {v['torch']}, transformers {v['transformers']}, "
        f"{s['threads']} threads, {s['dtype']}, {v['cpu']})",
        f"model {s['model']}, task {s['task']}: {s['steps']} steps × {s['prompts']} prompts × {s['group']} "
        f"completions, ≤{s['max_new_tokens']} tokens at T={s['temperature']}, lr {s['lr']}, β {s['beta']}; "
        f"held-out pass@1 over {s['eval_n']} test problems × k={s['eval_k']} (T=0.6, top-p 0.95)",
        "",
        "| trainer | s/step | s/step (steps only) | completions/s | peak RSS (MiB) | held-out pass@1 | format rate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    if report.get("start"):
        e = report["start"]["eval"]
        lines.append(
            f"| starting model | – | – | – | – | {100 * e['pass@1']:.1f}% ± {100 * e['pass@1_ci95']:.1f} | "
            f"{100 * e['format_rate']:.1f}% |"
        )
    for name in report["summary"]:
        m = report["summary"][name]
        lines.append(
            f"| {name} | {m['s_per_step']:.2f} | {m['s_per_step_steps_only']:.2f} | {m['completions_per_s']:.1f} | "
            f"{m['peak_rss_mib']:.0f} | {100 * m['pass@1']:.1f}% ± {100 * m['pass@1_ci95']:.1f} | "
            f"{100 * m['format_rate']:.1f}% |"
        )
    if "trl" in report["summary"]:
        a, b = report["summary"]["r1kit"], report["summary"]["trl"]
        lines += ["", f"r1kit / TRL: {b['s_per_step'] / a['s_per_step']:.2f}× faster per step (wall), "
                  f"{a['completions_per_s'] / b['completions_per_s']:.2f}× the completions/s "
                  f"(medians of {a['repeats']} alternating runs each)"]
    if s.get("r1kit_set"):
        lines.append(f"r1kit settings: {', '.join(s['r1kit_set'])}")
    phases = _median_phases(report["runs"].get("r1kit", []))
    if phases:
        lines += ["", "r1kit's ledger per phase (medians over the repeats; FLOP/s against the probed CPU peak):", "",
                  "| phase | seconds | FLOPs | achieved FLOP/s | share of peak |", "|---|---:|---:|---:|---:|"]
        for name, ph in phases.items():
            share = "–" if ph["share_of_peak"] is None else f"{100 * ph['share_of_peak']:.1f}%"
            rate = "–" if ph["achieved_flops_per_s"] is None else f"{ph['achieved_flops_per_s'] / 1e9:.1f} G"
            lines.append(f"| {name} | {ph['wall_s']:.1f} | {ph['flops'] / 1e12:.2f} T | {rate} | {share} |")
    return "\n".join(lines)


def _median_phases(runs: list[dict]) -> dict:
    """Each ledger phase's figures, median over the r1kit runs that recorded it."""
    names = [n for r in runs for n in r.get("phases", {})]
    out = {}
    for name in dict.fromkeys(names):
        rows = [r["phases"][name] for r in runs if name in r.get("phases", {})]
        out[name] = {k: (None if any(x[k] is None for x in rows) else statistics.median(x[k] for x in rows))
                     for k in rows[0]}
    return out


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.role:
        run_child(args)
        return None
    if not Path(args.model, "config.json").is_file():
        raise SystemExit(f"--model {args.model!r} is not a Hugging Face model directory")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="r1kit-bench-grpo-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if (work / "r1kit").exists() or (work / "trl").exists():
        raise SystemExit(f"{work} already holds runs: give a new --work-dir")
    passed = [
        item
        for key, value in vars(args).items()
        if key not in ("role", "json", "work_dir", "no_baseline", "r1kit_set", "no_trl", "repeat")
        for item in (f"--{key.replace('_', '-')}", str(value))
    ] + [item for kv in args.r1kit_set for item in ("--r1kit-set", kv)]
    print(f"work dir: {work}", flush=True)
    trainers = ("r1kit",) if args.no_trl else ("r1kit", "trl")
    runs = {name: [] for name in trainers}
    for repeat in range(args.repeats):  # alternating, so slow spells of a shared machine hit both
        order = trainers if repeat % 2 == 0 else trainers[::-1]
        for name in order:
            runs[name].append(spawn(name, [*passed, "--repeat", str(repeat)], work, args.threads))
    results = {name: rs[0] for name, rs in runs.items()}
    if not args.no_baseline:
        results["start"] = spawn("start", passed, work, args.threads)
    settings = {k: v for k, v in vars(args).items() if k not in ("role", "json")}
    settings["work_dir"] = str(work)
    report = {
        "benchmark": "grpo_trl",
        "settings": settings,
        "environment": _versions(),
        "summary": {name: _median_summary(rs, args.steps) for name, rs in runs.items()},
        "start": results.get("start"),
        "runs": runs,
    }
    print()
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

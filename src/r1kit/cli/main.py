"""The `r1kit` command: parses arguments and dispatches to the loops. The only place that reads argv.

A user's mistake (missing model dir, unknown task, bad flag value, unreadable data file) prints one line,
`r1kit: error: ...`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, no usage dump
        self.exit(2, f"r1kit: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range")
    return value


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    """Evaluation flags; one left out takes the task's default (a preset's paper settings), else EvalConfig's."""
    p.add_argument("--split", default=None, choices=["train", "test", "all"],
                   help="problems to evaluate on (default: test; all rows of an unsplit data file)")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="number of problems (default: every one of a dataset, 500 of a generated task)")
    p.add_argument("--k", type=_positive_int, default=None, help="samples per problem (default 4; a preset's)")
    p.add_argument("--temperature", type=_unit_float, default=None, help="default 0.6")
    p.add_argument("--top-p", type=_unit_float, default=None, help="default 0.95")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None, help="default 128 (a preset's: 32768)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="default 128")
    p.add_argument("--seed", type=int, default=None, help="default 0")


def _add_format_flags(p: argparse.ArgumentParser) -> None:
    """The task's format options (tasks/formats.py), over whatever the task spec says."""
    p.add_argument("--prompt-format", default=None,
                   help="auto (chat if the tokenizer has a chat template, else r1-zero) | chat | r1-zero | "
                   "a template with {question}")
    p.add_argument("--answer-format", default=None, help="auto | think-answer | think-boxed | boxed | gsm8k")
    p.add_argument("--system", default=None, help="system prompt of a chat prompt")
    p.add_argument("--instruction", default=None, help="appended to each question: auto | r1-math | none | text")


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """The run's device and precision (r1kit/parallel/engine.py), for every command that runs a model."""
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="auto (default): CUDA when torch sees a GPU (under torchrun each rank its LOCAL_RANK GPU)")
    p.add_argument("--dtype", default=None, choices=["auto", "fp32", "bf16", "bf16-pure"],
                   help="auto (default): bf16 on CUDA (fp32 master weights), fp32 on a CPU; bf16-pure: bf16 "
                   "weights and optimiser state")


def add_backend_flag(p: argparse.ArgumentParser) -> None:
    """The rollout engine that samples (r1kit/rollout)."""
    p.add_argument("--backend", default=None, choices=["auto", "r1kit", "vllm"],
                   help="rollout engine: r1kit (default: its own sampler), vllm (in-process; `make vllm-venv`), "
                   "auto (vLLM on a GPU when installed)")


def device_overrides(args) -> dict:
    """{"device": ..., "dtype": ...} for the flags given: a config's [parallel] section."""
    return {k: getattr(args, k) for k in ("device", "dtype") if getattr(args, k, None) is not None}


def _format_overrides(args) -> dict:
    return {k: getattr(args, k) for k in ("prompt_format", "answer_format", "system", "instruction")
            if getattr(args, k, None) is not None}


def _eval_config(args, task):
    from r1kit.evaluation.metrics import eval_config_for

    return eval_config_for(task, split=args.split, n=args.n, k=args.k, temperature=args.temperature,
                           top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="r1kit", description="Train DeepSeek-R1-style reasoning models; know what it cost.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("base", help="build a tiny base model: tokenizer + Llama pre-trained from scratch")
    p.add_argument("--task", default="arithmetic", help="task spec, e.g. arithmetic or arithmetic:digits=2")
    p.add_argument("--size", default="tiny", help="micro (~0.26M parameters), mini (~0.44M), tiny (~1.9M) or "
                   "small (~24M)")
    p.add_argument("--tokenizer", default=None, help="reuse this model directory's tokenizer (default: train one)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=_positive_int, default=None, help="pre-training steps")
    p.add_argument("--eval-n", type=_positive_int, default=500, help="held-out problems for the final eval")
    p.add_argument("--eval-k", type=_positive_int, default=4, help="samples per problem for the final eval")
    add_device_flags(p)

    p = sub.add_parser("eval", help="evaluate a model as the R1 paper does (pass@1 over k samples, cons@k)")
    p.add_argument("--model", required=True, help="a Hugging Face causal-LM directory")
    p.add_argument("--task", required=True, help="task spec: arithmetic, countdown, jsonl:PATH, "
                   "data:PATH, hf:NAME[:CONFIG], gsm8k, math500, aime24, aime25")
    _add_eval_flags(p)
    _add_format_flags(p)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_backend_flag(p)
    add_device_flags(p)

    p = sub.add_parser("rl", help="R1-Zero RL (GRPO) from a model; extra --section.key=value set the config")
    p.add_argument("--model", default=None, help="the policy to start from (a Hugging Face model directory)")
    p.add_argument("--task", default=None, help="task spec (default: the config's, else arithmetic)")
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--config", default=None, help="a recipe TOML file (see recipes/)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--strict", action="store_true", help="stop when the run doctor finds the run cannot learn")
    p.add_argument("--estimate", action="store_true",
                   help="first predict the run's time and cost (a 3-step calibration) into RUN_DIR/estimate.json")
    add_device_flags(p)

    from r1kit.cli.commands import add_parsers

    add_parsers(sub, _positive_int)

    p = sub.add_parser("demo", help="the main job: the tiny R1 pipeline (recipes/tiny-r1.toml)")
    p.add_argument("--out", default="runs/demo", help="run directory")

    p = sub.add_parser("cost", help="cost ledger: `cost paper`, `cost estimate --config R --model M`, `cost RUN_DIR`")
    p.add_argument("what", help="`paper` for DeepSeek's published table, `probe` to re-measure the CPU peak, "
                   "`estimate` to predict an RL run's cost "
                   "before launch (extra --section.key=value set its config), or a run directory")
    p.add_argument("--price", type=float, default=None, help="USD per device-hour (default: the price table)")
    p.add_argument("--config", default=None, help="estimate: a recipe TOML file (see recipes/)")
    p.add_argument("--model", default=None, help="estimate: the policy's model directory")
    p.add_argument("--task", default=None, help="estimate: task spec (default: the config's)")
    p.add_argument("--gpu", default=None, help="estimate for this device kind (A100, H100, H800, H200, B200, cpu)")
    p.add_argument("--count", type=_positive_int, default=None, help="estimate for this many devices")
    p.add_argument("--mfu", type=_unit_float, default=None, help="estimate at this MFU (0-1) in every phase")
    p.add_argument("--calibrate-steps", type=int, default=None,
                   help="estimate: real RL steps run here first to measure rates and lengths (0: none; default 3 "
                   "when estimating for this machine, else 0)")
    p.add_argument("--completion-len", type=float, default=None, help="estimate: expected completion tokens")
    p.add_argument("--prompt-len", type=float, default=None,
                   help="estimate: mean prompt tokens (default: measured with the model's tokenizer, or by the "
                   "calibration); with --completion-len a model directory holding only config.json will do")
    p.add_argument("--save", default=None, help="estimate: also write it as DIR/estimate.json")

    p = sub.add_parser(
        "plan", help="will it fit? memory per GPU of an RL run before launch (exit 1 when it does not fit)",
        description="Plan an RL run's memory per device (r1kit/memplan.py): parameters, gradients and AdamW state "
        "sharded by FSDP2 over --count ranks, activations, logits, KV cache, reference and inference copies; with "
        "--gpu also its hours and dollars at an assumed MFU (as `r1kit cost estimate --gpu`). Extra "
        "--section.key=value set the config. Exit status: 0 when it fits or the capacity is unknown (no --gpu: "
        "this CPU), 1 when it does not fit, 2 on a usage error.")
    p.add_argument("--config", default=None, help="a recipe TOML file (see recipes/)")
    p.add_argument("--model", default=None, help="the policy's model directory (only its config.json is read)")
    p.add_argument("--gpu", default=None, help="device kind: A100, H100, H800, H200, B200 (default: this CPU, "
                   "capacity unknown)")
    p.add_argument("--count", type=_positive_int, default=1, help="devices (ranks) the run is sharded over")
    p.add_argument("--prompt-len", type=_positive_int, default=256, help="prompt tokens to plan for (default 256)")

    p = sub.add_parser("report", help="write RUN_DIR/report.html: curves, evaluation, cost, lineage")
    p.add_argument("run_dir", help="a run (or pipeline) directory")
    p.add_argument("--out", default=None, help="the HTML file to write (default RUN_DIR/report.html)")
    for name in ("base", "eval", "rl", "generate", "run", "demo"):  # the commands that may score code tasks
        sub.choices[name].add_argument(
            "--unsafe-local-exec", action="store_true",
            help="code tasks without bubblewrap installed: run the model's programs UNCONFINED on this machine "
            "(default: refuse; see r1kit.sandbox)")
    return parser


def _ledger(run_dir, stage: str, model_config: dict | None = None):
    from r1kit.cost.devices import ledger_for

    return ledger_for(run_dir, stage, model_config=model_config)


def cmd_base(args) -> int:
    from r1kit.config import ParallelConfig
    from r1kit.evaluation.evaluate import EvalConfig
    from r1kit.loops.base import BaseConfig, describe, run_base

    kwargs = {"steps": args.steps} if args.steps else {}
    if args.tokenizer:
        kwargs["tokenizer"] = args.tokenizer
    cfg = BaseConfig(
        task=args.task,
        size=args.size,
        out=args.out,
        seed=args.seed,
        eval=EvalConfig(n=args.eval_n, k=args.eval_k),
        parallel=ParallelConfig(**device_overrides(args)),
        **kwargs,
    )
    summary = run_base(cfg, ledger_factory=_ledger, resume=args.resume)
    print(describe(summary))
    return 0


def rl_config_from(args, overrides: list[str]):
    """RLConfig from a recipe file, then --section.key=value overrides, then the explicit flags."""
    from r1kit.algo.rl_config import RLConfig
    from r1kit.config import apply_overrides, build, load_toml

    data = load_toml(args.config) if args.config else {}
    data = {k: v for k, v in data.items() if k != "recipe"}  # [recipe] holds notes for people
    data = apply_overrides(data, overrides)
    for key in ("model", "task", "out"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    if args.strict:
        data.setdefault("doctor", {})["strict"] = True
    data.setdefault("parallel", {}).update(device_overrides(args))
    return build(RLConfig, data)


def cmd_rl(args, overrides: list[str]) -> int:
    from r1kit.evaluation.evaluate import format_eval_table
    from r1kit.loops.rl import run_rl

    cfg = rl_config_from(args, overrides)
    if args.estimate and not args.resume and os.environ.get("WORLD_SIZE", "1") == "1":
        from r1kit.cost.estimate import estimate_from_config, write_estimate
        from r1kit.cost.views import format_estimate

        est = estimate_from_config(cfg, run_rl, calibrate_steps=3, ledger_factory=_ledger)
        print(format_estimate(est))
        write_estimate(cfg.out, est)
    from r1kit.parallel.dist import shutdown

    try:
        summary = run_rl(cfg, resume=args.resume, ledger_factory=_ledger)
    finally:
        shutdown()  # leave the process group cleanly (NCCL warns, or hangs, at exit otherwise)
    if summary.get("eval") and int(os.environ.get("RANK", "0")) == 0:
        if summary.get("before"):
            b = summary["before"]
            print(f"before RL: held-out pass@1 {100 * b['pass@1']:.1f}% (n={b['problems']} x k={cfg.eval.k})")
        print(format_eval_table(summary["eval"], title=f"after RL: {cfg.out}/model"))
    return 0


def cmd_eval(args) -> int:
    from r1kit.config import ParallelConfig
    from r1kit.evaluation.evaluate import evaluate, format_eval_table
    from r1kit.models.modeling import load_model
    from r1kit.parallel.engine import resolve_engine
    from r1kit.reporting.runlog import write_json
    from r1kit.tasks import get_task

    task = get_task(args.task, **_format_overrides(args))
    cfg = _eval_config(args, task)
    engine = resolve_engine(ParallelConfig(**device_overrides(args)))
    model, tokenizer = load_model(args.model, dtype=engine.compute_dtype)
    model = model.to(engine.device)
    from r1kit.tasks.prompting import format_warnings, make_prompter

    for w in format_warnings(make_prompter(task, tokenizer), args.model):
        print(f"r1kit doctor: {w}", file=sys.stderr)
    from r1kit.rollout import make_engine, resolve_backend

    backend = resolve_backend(args.backend or "r1kit", engine.device)
    longest = 0
    if backend == "vllm":  # the engine's context: the longest prompt of the evaluation + the completion budget
        prompter = make_prompter(task, tokenizer)
        longest = max(len(p) for p in prompter.encode(task.problems(cfg.split, cfg.n, seed=cfg.seed)))
    sampler = make_engine(backend, model, source=args.model, max_len=longest + cfg.max_new_tokens, seed=cfg.seed,
                          device=engine.device, options={"max_num_seqs": cfg.batch_size})
    try:
        with engine.autocast():
            result = evaluate(model, tokenizer, task, cfg, engine=sampler)
    finally:
        sampler.close()
    result["model"] = args.model
    result["backend"] = sampler.name
    print(format_eval_table(result, title=f"evaluation: {args.model} on {task.name} / {cfg.split}"))
    if args.json:
        write_json(args.json, result)
    return 0


def find_recipe(name: str) -> str:
    """A shipped recipe: ./recipes/NAME, else the repository's recipes/ beside the package source."""
    from pathlib import Path

    from r1kit.errors import UserError

    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        path = root / "recipes" / name
        if path.is_file():
            return str(path)
    raise UserError(f"recipe {name!r} not found: run from the r1kit repository, or give --config PATH")


def cmd_demo(args) -> int:
    from r1kit.cli.commands import cmd_demo as demo

    return demo(args, _ledger, find_recipe)


def cmd_cost_estimate(args, overrides: list[str]) -> int:
    """`r1kit cost estimate`: calibrate the RL config here for a few steps, then predict the whole run."""
    import types

    from r1kit.cost.devices import detect_device
    from r1kit.cost.estimate import estimate_from_config, write_estimate
    from r1kit.cost.views import format_estimate
    from r1kit.loops.rl import run_rl

    flags = types.SimpleNamespace(config=args.config, model=args.model, task=args.task, out=None, strict=False)
    cfg = rl_config_from(flags, overrides)
    here = detect_device()[0]
    steps = args.calibrate_steps
    if steps is None:  # calibrating a big model on this machine for another device would take too long
        steps = 3 if args.gpu in (None, here) else 0
    if steps > 0:
        print(f"calibrating: {steps} RL steps of this config on this machine ({here}) ...", file=sys.stderr)
    est = estimate_from_config(cfg, run_rl, device_kind=args.gpu, device_count=args.count, mfu=args.mfu,
                               price=args.price, calibrate_steps=max(steps, 0),
                               expected_completion_len=args.completion_len, ledger_factory=_ledger,
                               prompt_len=args.prompt_len)
    print(format_estimate(est))
    if args.save:
        print(f"written to {write_estimate(args.save, est)}")
    return 0


def cmd_plan(args, overrides: list[str]) -> int:
    """`r1kit plan`: the RL config's memory per device; on a GPU also its time and cost at the assumed MFU."""
    import types

    from r1kit.cost.estimate import estimate_rl, load_model_config
    from r1kit.cost.memplan import format_plan, memory_plan
    from r1kit.errors import UserError

    flags = types.SimpleNamespace(config=args.config, model=args.model, task=None, out=None, strict=False)
    cfg = rl_config_from(flags, overrides)
    if not cfg.model:
        raise UserError("plan needs the policy's model directory (--model DIR, or model = in the recipe)")
    model_config = load_model_config(cfg.model)
    plan = memory_plan(model_config, cfg, args.count, args.gpu, prompt_len=args.prompt_len)
    print(format_plan(plan))
    if plan.device == "cpu":  # a CPU has no table peak: its rates need a calibration run
        print(f"time and cost: a CPU estimate needs a calibration, run `r1kit cost estimate --model {cfg.model}`"
              + (f" --config {args.config}" if args.config else ""))
    else:  # the same numbers as `r1kit cost estimate --gpu ... --count ...` without a calibration
        est = estimate_rl(cfg, model_config, plan.device, args.count, prompt_len=args.prompt_len)
        t = est["total"]
        usd = "-" if t["usd"] is None else f"${t['usd']:,.0f}"
        print(f"time and cost (as `r1kit cost estimate --gpu {plan.device} --count {args.count}`): "
              f"{t['wall_s'] / 3600:.3g} h wall, {t['device_hours']:.4g} GPU-hours, {usd}")
        for note in est["notes"]:
            if note.startswith("ASSUMPTION"):
                print(f"  {note}")
    return 1 if plan.fits is False else 0


def cmd_cost(args, overrides: list[str] | None = None) -> int:
    from pathlib import Path

    from r1kit.cost.ledger import format_table, read_ledger, summarize
    from r1kit.cost.paper import format_paper_table
    from r1kit.errors import UserError

    if args.what == "estimate":
        return cmd_cost_estimate(args, overrides or [])
    if overrides:
        raise UserError(f"unrecognized arguments: {' '.join(overrides)} (config overrides go with `cost estimate`)")
    if args.what == "paper":
        print(format_paper_table(args.price or 2.0))
        return 0
    if args.what == "probe":  # re-measure the CPU's matmul peak (MFU's denominator); the best value is kept
        from r1kit.cost.devices import cpu_model, cpu_peak_flops

        peak = cpu_peak_flops(refresh=True, seconds=2.0)
        print(f"CPU peak ({cpu_model()}): {peak / 1e9:.1f} GFLOP/s fp32 on all threads (cached; best seen)")
        return 0
    path = Path(args.what)
    if not path.exists():
        raise UserError(f"{args.what!r} is neither `paper` nor an existing run directory")
    records = read_ledger(path)
    if not records:
        raise UserError(f"no ledger.jsonl under {args.what!r}: is it an r1kit run directory?")
    print(format_table(summarize(records)))
    from r1kit.cost.views import estimates_beside_measured

    for text in estimates_beside_measured(path):
        print("\n" + text)
    return 0


def cmd_report(args) -> int:
    from r1kit.reporting.report import write_report

    print(f"wrote {write_report(args.run_dir, out=args.out)}")
    return 0


def _stage_command(name: str):
    def run(args, overrides):
        from r1kit.cli import commands

        return getattr(commands, f"cmd_{name}")(args, overrides, _ledger)

    return run


def cmd_run(args) -> int:
    from r1kit.cli.commands import cmd_run as run

    return run(args, _ledger)


def cmd_import(args) -> int:
    from r1kit.cli.commands import cmd_import as run

    return run(args)


COMMANDS = {"base": cmd_base, "eval": cmd_eval, "demo": cmd_demo, "report": cmd_report, "run": cmd_run,
            "import": cmd_import}
TAKES_OVERRIDES = {"rl": cmd_rl, "cost": cmd_cost, "plan": cmd_plan, "generate": _stage_command("generate"),
                   "sft": _stage_command("sft"), "distill": _stage_command("distill")}


def main(argv: list[str] | None = None) -> int:
    from r1kit.errors import UserError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if not (e.startswith("--") and "=" in e)]  # --key=value or --section.key=value
    if args.command not in TAKES_OVERRIDES and extra or bad:
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command != "rl":
        print(f"r1kit: error: `r1kit {args.command}` runs on one process; under torchrun only `r1kit rl` runs "
              "(sharded over the ranks): launch this command without torchrun", file=sys.stderr)
        return 2
    if getattr(args, "unsafe_local_exec", False):  # code tasks without bubblewrap: unconfined, loudly
        from r1kit.sandbox import allow_unsafe_local_exec

        allow_unsafe_local_exec()
    try:
        if args.command in TAKES_OVERRIDES:
            return TAKES_OVERRIDES[args.command](args, extra)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"r1kit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("r1kit: interrupted", file=sys.stderr)
        return 130
    except json.JSONDecodeError as e:  # a corrupt run file
        print(f"r1kit: error: unreadable JSON ({e}); the run directory may be damaged", file=sys.stderr)
        return 2

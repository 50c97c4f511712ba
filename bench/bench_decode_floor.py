"""The floor under a decoding step on this CPU: what the sampler's step costs by batch, and what bounds it.

Three measurements, 2 torch threads by default, medians:

1. memory read bandwidth: summing a 1 GiB float32 tensor;
2. PyTorch's own GEMMs on cold weights: the MLP of a SmolLM2-shaped model (30 layers of 576 -> 2 x 1536 -> 576,
   too big for any cache) and its tied head (49,152 x 576), at M = 1, 8 and 32 rows: the bytes of weights streamed
   per second is what bounds a decode step whose weights do not fit in cache;
3. r1kit's sampler (the fast path, compiled) on `--model` with EOS switched off, so every row runs all
   `--new-tokens`: seconds per decoding step at each batch size, and tokens/s with every row alive.

    .venv/bin/python bench/bench_decode_floor.py --model runs/smollm2/SmolLM2-135M-Instruct \
        --json bench/results/decode_floor_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _median_seconds(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_bandwidth(reps: int = 7) -> float:
    import torch

    x = torch.ones(256 * 1024 * 1024)
    return x.numel() * 4 / _median_seconds(x.sum, reps) / 1e9


def gemm_streaming(dtype_name: str, reps: int = 7) -> dict:
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    layers = [
        (torch.randn(3072, 576, generator=gen).to(dtype), torch.randn(576, 1536, generator=gen).to(dtype))
        for _ in range(30)
    ]
    head = torch.randn(49152, 576, generator=gen).to(dtype)
    mlp_bytes = sum(a.numel() + b.numel() for a, b in layers) * head.element_size()
    head_bytes = head.numel() * head.element_size()
    out = {}
    for m in (1, 8, 32):
        x = torch.randn(m, 576, generator=gen).to(dtype)

        def mlp(x=x):
            for up, down in layers:
                g, u = F.linear(x, up).chunk(2, -1)
                F.linear(g * u, down)

        t_mlp = _median_seconds(mlp, reps)
        t_head = _median_seconds(lambda x=x: F.linear(x, head), reps)
        out[f"m{m}"] = {
            "mlp30_ms": 1e3 * t_mlp,
            "mlp30_GBps": mlp_bytes / t_mlp / 1e9,
            "head_ms": 1e3 * t_head,
            "head_GBps": head_bytes / t_head / 1e9,
        }
    return out


def sampler_steps(model_dir: str, dtype_name: str, batches: list[int], new_tokens: int, reps: int) -> dict:
    import torch

    from r1kit.models.modeling import load_model
    from r1kit.rollout.sampler import SamplingParams, sample

    model, tok = load_model(model_dir)
    if dtype_name == "bf16":
        model = model.to(torch.bfloat16)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    params = SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=new_tokens)
    out = {"weight_bytes": weight_bytes}
    for b in batches:
        prompts = [tok.encode(f"What is {i}+{2 * i + 1}?") for i in range(b)]
        gen = torch.Generator().manual_seed(0)
        sec = _median_seconds(lambda p=prompts, g=gen: sample(model, p, params, eos_ids=[], pad_id=0, generator=g), reps, 1)
        out[f"b{b}"] = {
            "s_per_step": sec / new_tokens,
            "tokens_per_s_all_rows_alive": b * new_tokens / sec,
            "weights_GBps": weight_bytes * new_tokens / sec / 1e9,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a Llama-family Hugging Face model directory")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not Path(args.model, "config.json").is_file():
        ap.error(f"--model {args.model!r} is not a Hugging Face model directory (no config.json)")
    import torch

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    report = {"threads": args.threads, "torch": torch.__version__, "read_GBps": read_bandwidth()}
    print(f"memory read: {report['read_GBps']:.1f} GB/s", flush=True)
    for dt in args.dtypes.split(","):
        g = report[f"gemm_{dt}"] = gemm_streaming(dt)
        for m, r in g.items():
            print(f"{dt} GEMM {m}: 30 MLP layers {r['mlp30_ms']:.1f} ms ({r['mlp30_GBps']:.1f} GB/s), "
                  f"head {r['head_ms']:.1f} ms ({r['head_GBps']:.1f} GB/s)", flush=True)
        s = report[f"sampler_{dt}"] = sampler_steps(args.model, dt, batches, args.new_tokens, args.reps)
        for b in batches:
            r = s[f"b{b}"]
            print(f"{dt} sampler batch {b}: {1e3 * r['s_per_step']:.1f} ms/step, "
                  f"{r['tokens_per_s_all_rows_alive']:.0f} tok/s with every row alive, "
                  f"weights at {r['weights_GBps']:.1f} GB/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Where a sampling run's time goes in r1kit's fast path: decode steps, prefill, token choice, row compaction, the rest.

Timers wrap the decoder's calls (FastDecoder.decode / prefill / select_rows) and the token choice (`_pick`). The
arithmetic test prompts, batch 64, <= 128 new tokens, T = 0.6, top-p 0.95, 2 threads, 2 warm-ups then 7 timed runs:

    .venv/bin/python bench/profile_sampler.py runs/bench/base
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

import r1kit.rollout.sampler as S
from r1kit.models.modeling import load_model
from r1kit.tasks import get_task
from r1kit.tasks.prompting import make_prompter

PARTS = {"decode": "decode", "prefill": "prefill", "select_rows": "row compaction"}


def main(model_dir: str, runs: int = 7) -> None:
    torch.set_num_threads(2)
    model, tok = load_model(model_dir)
    task = get_task("arithmetic")
    prompter = make_prompter(task, tok)
    prompts = [tok.encode(prompter.text(p)) for p in task.problems("test", 64, seed=0)]
    params = S.SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=128)
    spent = {name: 0.0 for name in [*PARTS.values(), "token choice"]}
    decode_calls = [0]

    def timed(fn, part):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[part] += time.perf_counter() - t0
            if part == "decode":
                decode_calls[0] += 1
            return out

        return wrapper

    S._pick = timed(S._pick, "token choice")
    for method, part in PARTS.items():
        setattr(S.FastDecoder, method, timed(getattr(S.FastDecoder, method), part))

    gen = torch.Generator().manual_seed(0)

    def one_run():
        return S.sample(model, prompts, params, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id or 0,
                        generator=gen)

    for _ in range(2):
        one_run()
    for part in spent:
        spent[part] = 0.0
    decode_calls[0] = 0
    seconds, tokens = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        out = one_run()
        seconds.append(time.perf_counter() - t0)
        tokens += out.num_tokens
    total = sum(seconds)
    print(f"{runs} runs: median {1e3 * statistics.median(seconds):.0f} ms, {tokens / total:.0f} tokens/s, "
          f"{decode_calls[0] / runs:.0f} decoding steps a run")
    for part, s in spent.items():
        print(f"  {part}: {1e3 * s / runs:.1f} ms a run ({100 * s / total:.0f}%)")
    rest = total - sum(spent.values())
    print(f"  the rest (Python loop, EOS checks, reassembly): {1e3 * rest / runs:.1f} ms a run ({100 * rest / total:.0f}%)")
    print(f"  a decoding step: {1e3 * spent['decode'] / max(decode_calls[0], 1):.2f} ms")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1], "config.json").is_file():
        raise SystemExit("usage: bench/profile_sampler.py MODEL_DIR (a Hugging Face model directory, e.g. runs/bench/base)")
    main(sys.argv[1])

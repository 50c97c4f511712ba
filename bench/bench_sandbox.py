"""Sandbox throughput: executions per second of trivial programs through `r1kit.sandbox.run_many`.

Each execution is a fresh bubblewrap sandbox (namespaces, binds, judge + program processes, rlimits, seccomp)
running a one-line program; `--mode tests` also runs one assert in the judge through a proxy call (the path of
HumanEval and the `pysynth` task). The pool runs `--workers` executions at once (default: one per core); the
table gives executions/s over `--n` executions, after a warm-up, for each worker count. Target: >= 50/s on a
2-core machine.

    .venv/bin/python bench/bench_sandbox.py --n 400 --workers 1,2,4 --json bench/results/sandbox.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from r1kit.cost.devices import cpu_model
from r1kit.sandbox import Job, Limits, run_many

PROGRAMS = {
    "program": dict(source="print(sum(range(10)))", expected_stdout="45"),
    "tests": dict(source="def f(x):\n    return 3 * x + 1\n", tests="assert f(2) == 7\n"),
}


def bench(mode: str, n: int, workers: int) -> dict:
    jobs = [Job(**PROGRAMS[mode], limits=Limits(cpu_s=1, wall_s=5)) for _ in range(n)]
    run_many(jobs[: 2 * workers], workers=workers)  # warm-up
    t0 = time.perf_counter()
    results = run_many(jobs, workers=workers)
    seconds = time.perf_counter() - t0
    bad = [r for r in results if not r.passed]
    if bad:
        raise SystemExit(f"{len(bad)} of {n} trivial executions did not pass: {bad[0]}")
    return {"mode": mode, "workers": workers, "executions": n, "seconds": seconds, "per_s": n / seconds,
            "sandbox_cpu_s_mean": sum(r.cpu_s for r in results) / n,
            "wall_s_mean": sum(r.wall_s for r in results) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="executions per measurement")
    ap.add_argument("--workers", default=f"1,{os.cpu_count()},{2 * (os.cpu_count() or 1)}",
                    help="comma-separated pool sizes")
    ap.add_argument("--modes", default="program,tests")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    rows = [bench(mode, args.n, int(w)) for mode in args.modes.split(",") for w in args.workers.split(",")]
    print(f"{'mode':<8} {'workers':>7} {'executions/s':>13} {'CPU s/exec':>11} {'wall s/exec':>12}")
    for r in rows:
        print(f"{r['mode']:<8} {r['workers']:>7} {r['per_s']:>13.1f} {r['sandbox_cpu_s_mean']:>11.4f} "
              f"{r['wall_s_mean']:>12.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

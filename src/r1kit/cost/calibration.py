"""Calibration: a few real RL steps of a config on the machine at hand, read back from their ledger.

`calibrate` runs the config for `steps` steps into a temporary directory (no periodic evaluation, one final
sampling batch of evaluation) with the run function it is given (`r1kit.loops.rl.run_rl`: passed in, so this
module stays below the loops), and `calibration_from_run` reads each phase's achieved FLOP/s and MFU, the mean
prompt and completion lengths and the per-completion scoring and per-save seconds from any RL run directory,
which `r1kit.cost.estimate` turns into a prediction. The first step is left out of the rates (warm-up) when there are
more. `ContentionProbe` watches for other jobs on the CPU while it runs: a shared CPU makes the rates far too
low (3-15x here, with two torch threads on two busy cores). Layer 1: torch only enters through `devices`.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r1kit.algo.rl_config import RLConfig
from r1kit.cost.ledger import LEDGER_FILE, read_ledger
from r1kit.errors import UserError


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rate(records: list[dict]) -> tuple[float | None, float | None]:
    """(achieved FLOP/s, MFU) over some ledger records: sum of FLOPs over sum of wall seconds."""
    wall = sum(r["wall_s"] for r in records)
    flops = sum(r.get("flops") or 0 for r in records)
    budget = sum(r["wall_s"] * (r.get("peak_flops") or 0) * r.get("device_count", 1) for r in records)
    return (flops / wall if wall > 0 else None), (flops / budget if budget > 0 else None)


def calibration_from_run(run_dir: str | Path, steps: int | None = None, skip_first: bool = True) -> dict:
    """What a (calibration) RL run measured in its first `steps` steps (all when None): per-phase FLOP/s and MFU,
    mean prompt and completion lengths, completions sampled/trained per step, scoring and saving seconds.

    Reads RUN_DIR/ledger.jsonl (a step ends at its "training" record), metrics.jsonl and run.json.
    """
    run_dir = Path(run_dir)
    records = [r for r in read_ledger(run_dir / LEDGER_FILE) if not r.get("error")]
    config = (
        json.loads((run_dir / "run.json").read_text())["config"] if (run_dir / "run.json").is_file() else {}
    )
    by_step, current, evals, saves, syncs, startups = [], [], [], [], [], []
    for r in records:
        if r["phase"] == "evaluation":
            evals.append(r)
        elif r["phase"] == "checkpointing":
            saves.append(r)
        elif r["phase"] == "weight_sync":
            syncs.append(r)
        elif r["phase"] == "rollout_engine_startup":
            startups.append(r)
        elif r["phase"] in ("rollout", "scoring", "sandbox", "training"):  # sandbox: a code task's scoring
            current.append(r)
            if r["phase"] == "training":
                by_step.append(current)
                current = []
    by_step = by_step[:steps] if steps else by_step
    if not by_step:
        raise UserError(f"{run_dir}: the ledger holds no complete RL step to calibrate from")
    skip = 1 if skip_first and len(by_step) > 1 else 0
    timed = by_step[skip:]
    flat = [r for step in by_step for r in step]
    timed_flat = [r for step in timed for r in step]

    rollout = config.get("rollout", {})
    nominal = rollout.get("prompts_per_step", 1) * rollout.get("group_size", 1)
    rows = {m["step"]: m for m in _read_jsonl(run_dir / "metrics.jsonl")}
    sampled = [rows.get(i + 1, {}).get("completions_sampled", nominal) for i in range(len(by_step))]
    trained = [rows.get(i + 1, {}).get("completions_trained", nominal) for i in range(len(by_step))]
    generated = sum(r["generated_tokens"] for r in flat if r["phase"] == "rollout")
    prompted = sum(r["prompt_tokens"] for r in flat if r["phase"] == "rollout")
    timed_sampled = sum(sampled[skip:])

    first = next(iter(records))
    out: dict[str, Any] = {
        "source": str(run_dir),
        "steps": len(by_step),
        "timed_steps": len(timed),
        "device_kind": first["device_kind"],
        "device_count": first["device_count"],
        "peak_flops": first.get("peak_flops"),
        "completion_len": generated / max(sum(sampled), 1),
        "prompt_len": prompted / max(sum(sampled), 1),
        "sampled_share": sum(sampled) / (nominal * len(by_step)),
        "trained_share": sum(trained) / (nominal * len(by_step)),
        "flops_per_s": {},
        "mfu": {},
        "scoring_s_per_completion": sum(r["wall_s"] for r in timed_flat if r["phase"] in ("scoring", "sandbox"))
        / max(timed_sampled, 1),
        "seconds_per_save": sum(r["wall_s"] for r in saves) / len(saves) if saves else None,
        "engine_startup_s": sum(r["wall_s"] for r in startups),
        "weight_sync_s_per_step": sum(r["wall_s"] for r in syncs) / len(by_step),
        "wall_s": sum(r["wall_s"] for r in records),
    }
    for phase in ("rollout", "training"):
        out["flops_per_s"][phase], out["mfu"][phase] = _rate([r for r in timed_flat if r["phase"] == phase])
    if evals:
        ev = config.get("eval", {})
        samples = max(ev.get("n", 1) * ev.get("k", 1), 1)
        out["flops_per_s"]["evaluation"], out["mfu"]["evaluation"] = _rate(evals[:1])
        out["eval_completion_len"] = evals[0]["generated_tokens"] / samples
        out["eval_prompt_len"] = evals[0]["prompt_tokens"] / samples
    return out


def calibration_config(cfg: RLConfig, steps: int, out: str | Path) -> RLConfig:
    """The config of a calibration run: `steps` steps into `out`, one checkpoint, no periodic evaluation, and a
    final evaluation of one sampling batch (same batch shape as the real one, so its rate carries over)."""
    cal = copy.deepcopy(cfg)
    cal.out, cal.steps, cal.eval_every, cal.log_every = str(out), steps, 0, 1
    cal.checkpoint_every, cal.keep_checkpoints = steps, 1
    cal.doctor.strict = False
    cal.eval.n = min(cal.eval.n, max(1, cal.eval.batch_size // cal.eval.k))
    return cal


class ContentionProbe:
    """Counts runnable threads of *other* processes while a calibration runs (Linux: /proc/stat's procs_running
    minus this process's threads in state R), sampled every `interval` seconds in a background thread.

    On a CPU, other work makes the calibration slow (two torch threads sharing two cores with another job ran
    up to 15x slower here), and the estimate then far too long: `mean_other` > 0.5 says so.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def sample() -> int | None:
        try:
            stat = Path("/proc/stat").read_text()
            running = int(
                next(line.split()[1] for line in stat.splitlines() if line.startswith("procs_running"))
            )
            ours = 0
            for task in Path("/proc/self/task").iterdir():
                text = (task / "stat").read_text()
                ours += text[text.rindex(")") + 2] == "R"
            return max(running - ours, 0)
        except (OSError, StopIteration, ValueError):
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self) -> None:
        n = self.sample()
        if n is not None:
            self.samples.append(n)

    def __enter__(self) -> ContentionProbe:
        self._take()  # one sample at each end: a calibration shorter than `interval` is still probed
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    @property
    def mean_other(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def calibrate(
    cfg: RLConfig,
    run: Callable[..., dict],
    steps: int = 3,
    ledger_factory: Callable | None = None,
    work_dir: str | Path | None = None,
) -> dict:
    """Run `steps` real RL steps of `cfg` with `run` (pass `r1kit.loops.rl.run_rl`) into a temporary directory
    (or `work_dir`, kept) on this machine, and return `calibration_from_run` of it."""
    if steps < 1:
        raise UserError("calibration needs at least 1 step")
    if ledger_factory is None:
        from r1kit.cost.devices import ledger_for

        def ledger_factory(d, stage, model_config):
            return ledger_for(d, stage, model_config=model_config)

    with tempfile.TemporaryDirectory(prefix="r1kit-calibrate-") as tmp, ContentionProbe() as probe:
        out = Path(work_dir) if work_dir else Path(tmp) / "run"
        run(calibration_config(cfg, steps, out), progress=False, ledger_factory=ledger_factory)
        result = calibration_from_run(out)
    result["other_runnable"] = probe.mean_other  # other work on the machine slows the calibration
    result["cpu_count"] = os.cpu_count()
    return result

"""A run directory's records: the resolved config, metrics as JSONL and in the trackers (trackers.py), on rank 0 only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from r1kit.config import LogConfig
from r1kit.reporting.trackers import Trackers, table_of


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar: redrawn often on a terminal, every 30 s in a log file (so CI logs stay readable)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


COST_TOTALS = ("wall_s", "device_hours", "tokens", "flops", "mfu", "energy_j", "usd")  # the ledger's, to trackers


def cost_totals(run_dir: str | os.PathLike) -> dict:
    """`cost/...`: the totals of the run directory's cost ledger(s) (empty when it has none)."""
    from r1kit.cost.ledger import LEDGER_FILE, read_ledger, summarize

    if not any(Path(run_dir).rglob(LEDGER_FILE)):
        return {}
    total = summarize(read_ledger(run_dir))["total"]
    return {f"cost/{key}": total[key] for key in COST_TOTALS if total.get(key) is not None}


class MetricsLog:
    """Appends one JSON line per step to `metrics.jsonl` (or `name`) and hands it to the trackers of `[log]
    report_to` (trackers.py; TensorBoard by default): numbers as scalars; a `table_log`'s lines (samples.jsonl) as
    tables; at `finish`, the held-out evaluation and the cost ledger's totals. Disabled (ranks other than 0), it
    writes nothing and opens no tracker. `resumed`: the run continues from a checkpoint (so does its tracker run).
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, name: str = "metrics.jsonl",
                 log: LogConfig | None = None, config: dict | None = None, resumed: bool = False,
                 trackers: Trackers | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self._owner = trackers is None  # the log that opened the trackers closes them
        self._table = None if self._owner else self.path.stem
        if trackers is None:
            trackers = Trackers()
            if enabled:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                trackers = Trackers(run_dir, log or LogConfig(), config, resumed)
        self.trackers = trackers

    def table_log(self, name: str) -> MetricsLog:
        """A log of its own JSONL file (e.g. samples.jsonl) whose lines go to this log's trackers as tables."""
        return MetricsLog(self.run_dir, self.enabled, name, trackers=self.trackers)

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self._table is None:
            self.trackers.scalars(step, values)
        else:
            self.trackers.table(step, self._table, *table_of({"step": step, **values}))

    def table(self, step: int, key: str, rows: list[dict]) -> None:
        """Rows (dicts with the same keys) as one table in the trackers, e.g. every model's evaluation."""
        if self.enabled and rows:
            columns = list(dict.fromkeys(c for row in rows for c in row))
            self.trackers.table(step, key, columns, [[row.get(c) for c in columns] for row in rows])

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (a resumed run rewrites them)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [
            line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in keep))

    def finish(self, step: int, evaluation: dict | None = None) -> None:
        """The end of a finished run: its held-out evaluation (`eval/...`) and the cost ledger's totals
        (`cost/...`) to the trackers, as scalars at `step` and the run's summary; then close."""
        if self.enabled and self.trackers.backends:
            final = {f"eval/{k}": v for k, v in (evaluation or {}).items()}
            self.trackers.summary(step, {**final, **cost_totals(self.run_dir)})
        self.close()

    def close(self) -> None:
        if self._owner:
            self.trackers.close()

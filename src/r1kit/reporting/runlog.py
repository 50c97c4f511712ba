"""A run directory's records: the resolved config, metrics as JSONL and TensorBoard events, on rank 0 only."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


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


class MetricsLog:
    """Appends one JSON line per step to `metrics.jsonl` and mirrors scalar values to TensorBoard (`tb/`)."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 name: str = "metrics.jsonl"):
        self.enabled = enabled
        self.path = Path(run_dir) / name
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (a resumed run rewrites them)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [
            line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in keep))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

"""The trackers users already watch — TensorBoard, trackio, Weights & Biases — fed by every loop's MetricsLog.

`[log] report_to` (LogConfig, config.py; `--log.report_to=tensorboard,trackio,wandb`) names them. MetricsLog
(runlog.py) writes metrics.jsonl itself and hands each tracker the run's numbers per step as scalars, sample
completions (samples.jsonl's lines) and evaluation results as tables, and at the end the held-out evaluation and
the cost ledger's totals (`eval/...`, `cost/...`: scalars at the last step, and the run's summary where the tracker
keeps one). The project and run are named after the run directory (runs/demo/r1-zero: project "demo", run
"r1-zero") unless [log] names them; the config goes along. Only rank 0 opens trackers (a disabled MetricsLog opens
none); a run resumed from a checkpoint continues its tracker run.

    tensorboard  event files in RUN_DIR/tb; tables as text
    trackio      `pip install 'r1kit[trackio]'`: local-first, SQLite under TRACKIO_DIR (default
                 ~/.cache/huggingface/trackio; `trackio show` opens its dashboard); it syncs to a Hugging Face Space
                 or a server only where you set TRACKIO_SPACE_ID or TRACKIO_SERVER_URL
    wandb        `pip install 'r1kit[wandb]'`: files in RUN_DIR/wandb, offline (`wandb sync RUN_DIR/wandb/...`
                 uploads later) unless you configured wandb: WANDB_MODE set, or an API key (WANDB_API_KEY, or the
                 ~/.netrc entry `wandb login` writes)
"""

from __future__ import annotations

import math
import netrc
import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

from r1kit.config import LogConfig
from r1kit.errors import UserError


def run_names(run_dir: str | os.PathLike, cfg: LogConfig) -> tuple[str, str]:
    """(project, run name): [log]'s, else the run directory's parent folder and its own name."""
    path = Path(run_dir).resolve()
    return cfg.project or path.parent.name or "r1kit", cfg.name or path.name or "run"


def scalars_of(values: dict) -> dict[str, float]:
    """The finite numbers of a metrics line (booleans, strings, NaN and nested values stay in the JSONL only)."""
    return {k: v for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _import(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"log.report_to names {module}, which is not installed: pip install 'r1kit[{module}]' "
                        "(or drop it from [log] report_to)") from None


def wandb_mode(env=os.environ) -> str:
    """What the user configured (WANDB_MODE), online when they have an API key, else offline."""
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        found = netrc.netrc(env.get("NETRC") or None).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError):
        found = None
    return "online" if found else "offline"


class TensorBoard:
    def __init__(self, run_dir: Path, project: str, name: str, config: dict, resumed: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))

    def scalars(self, step: int, values: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def table(self, step: int, key: str, columns: list[str], rows: list[list]) -> None:
        cells = [columns, ["---"] * len(columns), *rows]
        text = "\n".join("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
                         for row in cells)
        self.writer.add_text(key, text, step)

    def summary(self, values: dict) -> None:
        pass  # the final values are scalars at the last step

    def close(self) -> None:
        self.writer.close()


class Trackio:
    def __init__(self, run_dir: Path, project: str, name: str, config: dict, resumed: bool):
        self.trackio = _import("trackio")
        self.run = self.trackio.init(project=project, name=name, config=config, resume="allow" if resumed else "never",
                                     embed=False, auto_log_cpu=False, auto_log_gpu=False)

    def scalars(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def table(self, step: int, key: str, columns: list[str], rows: list[list]) -> None:
        self.run.log({key: self.trackio.Table(columns=columns, data=rows)}, step=step)

    def summary(self, values: dict) -> None:
        pass  # trackio keeps no summary: the final values are scalars at the last step

    def close(self) -> None:
        self.run.finish()


class Wandb:
    ID_FILE = "r1kit-run-id"  # RUN_DIR/wandb/r1kit-run-id: the wandb run a resumed r1kit run continues

    def __init__(self, run_dir: Path, project: str, name: str, config: dict, resumed: bool):
        self.wandb = _import("wandb")
        folder = run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / self.ID_FILE
        if resumed and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(6)  # wandb's run ids: letters and digits
            id_file.write_text(run_id + "\n")
        self.run = self.wandb.init(project=project, name=name, id=run_id, resume="allow", config=config,
                                   dir=str(run_dir), mode=wandb_mode())

    def scalars(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def table(self, step: int, key: str, columns: list[str], rows: list[list]) -> None:
        self.run.log({key: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def summary(self, values: dict) -> None:
        self.run.summary.update(values)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoard, "trackio": Trackio, "wandb": Wandb}


class Trackers:
    """The trackers of one run: each call goes to every one of them."""

    def __init__(self, run_dir: str | os.PathLike | None = None, cfg: LogConfig | None = None,
                 config: dict | None = None, resumed: bool = False):
        self.backends = []
        if run_dir is None or cfg is None:
            return
        project, name = run_names(run_dir, cfg)
        for tracker in cfg.report_to:
            self.backends.append(TRACKERS[tracker](Path(run_dir), project, name, config or {}, resumed))

    def scalars(self, step: int, values: dict) -> None:
        values = scalars_of(values)
        if values:
            for backend in self.backends:
                backend.scalars(step, values)

    def table(self, step: int, key: str, columns: list[str], rows: list[list]) -> None:
        if rows:
            for backend in self.backends:
                backend.table(step, key, columns, rows)

    def summary(self, step: int, values: dict) -> None:
        """Final values (held-out evaluation, cost totals): scalars at `step`, and the run's summary."""
        values = scalars_of(values)
        self.scalars(step, values)
        for backend in self.backends:
            backend.summary(values)

    def close(self) -> None:
        backends, self.backends = self.backends, []
        for backend in backends:
            backend.close()


def table_of(values: dict) -> tuple[list[str], list[list]]:
    """A JSONL line as a table: one row per item of its list of records (samples.jsonl's `samples`), the line's
    other fields repeated in each; a line without such a list is one row."""
    lists = [k for k, v in values.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    shared = {k: v for k, v in values.items() if k not in lists and not isinstance(v, (dict, list))}
    records = [dict(item) for k in lists for item in values[k]] or [{}]
    columns = list(shared)
    for record in records:
        columns += [c for c in record if c not in columns]
    return columns, [[{**shared, **record}.get(c) for c in columns] for record in records]

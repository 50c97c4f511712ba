"""Estimated beside measured: text tables of an RL estimate (`r1kit.cost.estimate`) and of its error against the
run's ledger, for `r1kit cost estimate` and `r1kit cost RUN_DIR`. Pure Python.

The error is (estimated - measured) / measured, per phase and in total, on wall seconds, FLOPs and dollars. A run
without estimate.json gets one made after the fact, calibrated on its own first steps (no new compute).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r1kit.algo.rl_config import RLConfig
from r1kit.cost.calibration import calibration_from_run
from r1kit.cost.estimate import (
    ESTIMATE_FILE,
    PHASES,
    estimate_rl,
    load_model_config,
    read_estimate,
)
from r1kit.cost.ledger import _duration, _si, read_ledger, summarize
from r1kit.errors import UserError


def estimate_for_run(run_dir: str | Path, calibrate_steps: int = 3) -> dict:
    """An RL run's estimate: its estimate.json, else one made after the fact from run.json, the model's config
    and the run's own first `calibrate_steps` steps as the calibration (no new compute)."""
    run_dir = Path(run_dir)
    saved = read_estimate(run_dir)
    if saved is not None:
        saved.setdefault("origin", f"{run_dir / ESTIMATE_FILE}")
        return saved
    from r1kit.config import build

    data = json.loads((run_dir / "run.json").read_text())["config"]
    cfg = build(RLConfig, data)
    calibration = calibration_from_run(run_dir, steps=calibrate_steps)
    model_dir = Path(cfg.model)
    model_config = load_model_config(model_dir if model_dir.is_dir() else run_dir / "model")
    est = estimate_rl(
        cfg, model_config, calibration["device_kind"], calibration["device_count"], calibration=calibration
    )
    est["origin"] = f"after the fact: calibrated on this run's first {calibration['steps']} steps"
    return est


# ---- Estimated beside measured ---------------------------------------------------------------------------


def _err(est: float | None, measured: float | None) -> float | None:
    if est is None or not measured:
        return None
    return 100.0 * (est - measured) / measured


def compare(estimate: Mapping[str, Any], records: list[dict]) -> dict:
    """Per phase and in total: estimated and measured wall seconds, FLOPs, device-hours and dollars, and the
    estimate's error in % of the measured value."""
    stage = estimate.get("stage", "rl")
    names = {r.get("stage") for r in records}
    if stage not in names and len(names) == 1:  # a pipeline's ledger names the stage ("r1-zero"), not its kind
        stage = names.pop()
    s = summarize([r for r in records if r.get("stage") == stage])
    measured_phases = s["phases"].get(stage, {})
    rows = {}
    for phase in [*PHASES, "total"]:
        e = estimate["total"] if phase == "total" else estimate["phases"].get(phase, {})
        m = s["stages"].get(stage) if phase == "total" else measured_phases.get(phase)
        if phase == "scoring" and m is None:  # a code task's scoring is the ledger's sandbox phase
            m = measured_phases.get("sandbox")
        if m is None and not e:
            continue
        row = {}
        for key in ("wall_s", "flops", "device_hours", "usd"):
            mv = m.get(key) if m else None
            row[key] = {"estimated": e.get(key), "measured": mv, "error_pct": _err(e.get(key), mv)}
        rows[phase] = row
    return rows


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:,.2f}" if x >= 1 else f"${x:.4f}"


def format_estimate(est: Mapping[str, Any]) -> str:
    """The estimate as text: what it assumes, then one row per phase and the total."""
    i = est["inputs"]
    head = [
        f"estimate of an RL run: {i['steps']} steps x {i['prompts_per_step']} prompts x G={i['group_size']} on "
        f"{est['device_kind']} x {est['device_count']} ({_si(est['peak_flops'], 'FLOP/s')} peak each, "
        f"{est['dtype']}; basis: {est['basis']})",
        f"  model {i['params'] / 1e6:.2f}M parameters; prompt {i['prompt_len']:.1f} + completion "
        f"{i['completion_len']:.1f} tokens; {i['completions_sampled']:,.0f} completions sampled; "
        f"{i['evals']} evaluations x {i['eval_samples']} samples; {i['saves']} saves",
        *(f"  {n}" for n in est["notes"]),
    ]
    rows = []
    for name, p in [*est["phases"].items(), ("total", est["total"])]:
        rows.append(
            [
                name,
                _si(p["tokens"]),
                _si(p["flops"]),
                _si(p.get("flops_per_s") if name != "total" else None),
                "-" if p.get("mfu") is None else f"{100 * p['mfu']:.1f}%",
                _duration(p["wall_s"]),
                f"{p['device_hours']:.4g}",
                "-" if p["energy_j"] is None else f"{p['energy_j'] / 1e3:,.1f}",
                _usd(p["usd"]),
            ]
        )
    table = _table(["phase", "tokens", "FLOPs", "FLOP/s", "MFU", "wall", "device-h", "energy kJ", "$"], rows)
    t = est["total"]
    tail = (
        f"predicted: {t['wall_s'] / 3600:.3g} h wall, {t['device_hours']:.4g} device-hours, {_usd(t['usd'])}"
    )
    return "\n".join([*head, table, tail])


def format_comparison(estimate: Mapping[str, Any], rows: Mapping[str, Any], title: str = "") -> str:
    """Estimated beside measured, per phase, with the error in %."""
    out = []
    for phase, row in rows.items():
        w, f, u = row["wall_s"], row["flops"], row["usd"]
        out.append(
            [
                phase,
                "-" if w["estimated"] is None else _duration(w["estimated"]),
                "-" if w["measured"] is None else _duration(w["measured"]),
                _fmt_pct(w["error_pct"]),
                _si(f["estimated"]),
                _si(f["measured"]),
                _fmt_pct(f["error_pct"]),
                _usd(u["estimated"]),
                _usd(u["measured"]),
                _fmt_pct(u["error_pct"]),
            ]
        )
    header = ["phase", "est. wall", "wall", "error", "est. FLOPs", "FLOPs", "error", "est. $", "$", "error"]
    lines = [title or "estimate vs measured"]
    if estimate.get("origin"):
        lines.append(
            f"  estimate: {estimate['origin']} (basis: {estimate['basis']}, for "
            f"{estimate['device_kind']} x {estimate['device_count']})"
        )
    return "\n".join([*lines, _table(header, out)])


def rl_run_dirs(root: str | Path) -> list[Path]:
    """RL run directories at or under `root` (a pipeline holds one per RL stage): run.json says stage "rl"."""
    found = []
    for run_json in sorted(Path(root).rglob("run.json")):
        try:
            if json.loads(run_json.read_text()).get("stage") == "rl":
                found.append(run_json.parent)
        except (OSError, ValueError):
            continue
    return found


def estimates_beside_measured(root: str | Path) -> list[str]:
    """One comparison table per RL run under `root`; a run that cannot be estimated gets a one-line reason."""
    texts = []
    for run_dir in rl_run_dirs(root):
        title = f"estimate vs measured: {run_dir}"
        try:
            est = estimate_for_run(run_dir)
            records = read_ledger(run_dir / "ledger.jsonl")
        except (UserError, OSError, KeyError, ValueError) as e:
            texts.append(f"{title}: no estimate ({e})")
            continue
        text = format_comparison(est, compare(est, records), title)
        if not (run_dir / "summary.json").is_file():
            text += "\n  (the run has not finished: the measured side covers only the steps done so far)"
        texts.append(text)
    return texts

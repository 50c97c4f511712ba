"""The pipeline's closing table: every model it made, side by side on the same held-out set, with what each stage
cost and what its whole lineage cost (the stage plus every stage upstream of it, each counted once).

Reads only the run directory (pipeline.json, each stage's ledger, the eval stage's results), so `r1kit run`
prints it after the last stage and `r1kit cost RUN_DIR` or a later session can rebuild it.
"""

from __future__ import annotations

import json
from pathlib import Path

from r1kit.cost.ledger import read_ledger, summarize


def _eval_of(run: Path, name: str, eval_stages: list[str]) -> dict | None:
    """A model's held-out result: an eval stage's file for it first, else the stage's own final eval."""
    for stage in eval_stages:
        file = run / stage / f"{name}.json"
        if file.is_file():
            return json.loads(file.read_text())
    own = run / name / "eval.json"
    return json.loads(own.read_text()) if own.is_file() else None


def _costs(run: Path) -> dict[str, dict]:
    records = read_ledger(run) if any(run.rglob("ledger.jsonl")) else []
    return summarize(records)["stages"] if records else {}


def summary_rows(run_dir: str | Path) -> list[dict]:
    """One row per stage: kind, params, held-out metrics, own and lineage device-hours, $, FLOPs."""
    run = Path(run_dir)
    pipe = json.loads((run / "pipeline.json").read_text())
    stages = {s["name"]: s for s in pipe["stages"]}
    costs = _costs(run)
    eval_stages = [s["name"] for s in pipe["stages"] if s["kind"] == "eval"]

    def lineage(name: str, seen: set) -> set:
        if name in seen or name not in stages:
            return seen
        seen.add(name)
        for up in stages[name]["upstream"]:
            lineage(up, seen)
        return seen

    rows = []
    for s in pipe["stages"]:
        name = s["name"]
        own = costs.get(name, {})
        line = lineage(name, set())
        total = {k: sum((costs.get(n, {}).get(k) or 0.0) for n in line) for k in ("device_hours", "usd", "flops")}
        ev = None if s["kind"] == "eval" else _eval_of(run, name, eval_stages)
        m = ev["metrics"] if ev else {}
        k = ev["settings"]["k"] if ev else None
        done = (run / name / "done.json").is_file()
        rows.append({
            "stage": name, "kind": s["kind"], "done": done, "params": ev.get("params") if ev else None,
            "pass@1": m.get("pass@1"), "pass@1_ci95": m.get("pass@1_ci95"), "k": k,
            "cons@k": m.get(f"cons@{k}") if k else None, "pass@k": m.get(f"pass@{k}") if k else None,
            "problems": m.get("problems"), "settings": ev["settings"] if ev else None, "wall_s": own.get("wall_s"), "device_hours": own.get("device_hours"),
            "usd": own.get("usd"), "flops": own.get("flops"), "lineage_device_hours": total["device_hours"],
            "lineage_usd": total["usd"], "lineage_flops": total["flops"],
        })
    return rows


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _money(x) -> str:
    return "-" if x is None else f"${x:,.2f}" if x >= 1 else f"${x:.4f}"


def format_summary(rows: list[dict]) -> str:
    """The rows as a fixed-width table, with a line on the held-out set."""
    header = ["stage", "kind", "params", "pass@1", "± 95%", "cons@k", "pass@k", "wall", "device-h", "$",
              "lineage device-h", "lineage $"]
    body = []
    for r in rows:
        body.append([
            r["stage"] + ("" if r["done"] else " (not finished)"), r["kind"],
            "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}M",
            _pct(r["pass@1"]), "-" if r["pass@1_ci95"] is None else f"{100 * r['pass@1_ci95']:.1f}",
            _pct(r["cons@k"]), _pct(r["pass@k"]),
            "-" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} min",
            "-" if r["device_hours"] is None else f"{r['device_hours']:.3f}", _money(r["usd"]),
            f"{r['lineage_device_hours']:.3f}", _money(r["lineage_usd"]),
        ])
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))
             for x in [header, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    evaluated = [r for r in rows if r["problems"]]
    if evaluated:
        r = evaluated[0]
        st = r["settings"]
        lines.append(f"held-out: {r['problems']} {st['split']} problems x k={r['k']} samples per model "
                     f"(T={st['temperature']}, top-p {st['top_p']}, max {st['max_new_tokens']} new tokens)")
    return "\n".join(lines)

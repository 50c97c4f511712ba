"""The run report: one self-contained HTML file (RUN_DIR/report.html) that opens with no network.

Per stage of a run (a pipeline directory holds one sub-directory per stage; each stage directory has run.json):
curves per step of reward, held-out pass@1, completion length and KL (loss for pre-training) drawn as inline SVG
by `line_chart` (no JavaScript, no fonts or styles fetched); the evaluation table (eval.json, before/after RL
when summary.json has both); the cost table per stage and phase from the ledger (device-hours, dollars, MFU,
energy), with the estimate beside it for RL runs (`r1kit.cost.views`); and the lineage (run.json). Pure Python.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r1kit.cost.ledger import _duration, _si, read_ledger, summarize
from r1kit.errors import UserError
from r1kit.reporting.modelcard import cost_rows, eval_rows, format_usd, lineage_of

REPORT_FILE = "report.html"
# (metrics.jsonl key, chart title); a chart is drawn when its key has at least one finite value.
CURVES = [
    ("reward_mean", "reward (mean over sampled completions)"),
    ("eval/pass@1", "held-out pass@1"),
    ("completion_len_mean", "completion length (tokens)"),
    ("kl", "KL to the reference policy (k3)"),
    ("accuracy", "training accuracy (sampled)"),
    ("loss", "loss"),
]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.lineage td, table.eval td { text-align: left; }
th { background: #f3f3f3; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { background: #fff; border: 1px solid #ddd; }
svg text { font: 11px sans-serif; fill: #333; }
pre { background: #f7f7f7; padding: 6px; white-space: pre-wrap; font-size: 12px; }
.note { color: #666; font-size: 12px; }
"""


# ---- SVG -------------------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = lo - (abs(lo) or 1) * 0.5, hi + (abs(hi) or 1) * 0.5
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def _label(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def line_chart(
    points: Sequence[tuple[float, float]],
    title: str,
    metric: str,
    *,
    width: int = 560,
    height: int = 230,
    color: str = COLORS[0],
    x_label: str = "step",
) -> str:
    """An SVG line chart of (x, y) points with axes, round ticks and a title; one dot per point when few."""
    pts = [(float(x), float(y)) for x, y in points if y is not None and math.isfinite(y) and math.isfinite(x)]
    left, right, top, bottom = 58, 14, 26, 36
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg class="chart" data-metric="{html.escape(metric)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f'<text x="{left}" y="16" font-weight="bold">{html.escape(title)}</text>',
    ]
    if not pts:
        out.append(f'<text x="{left + 10}" y="{top + ph / 2}">no data</text></svg>')
        return "\n".join(out)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    for y in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{_label(y)}</text>')
    for x in xt:
        out.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#555"/>'
        )
        out.append(f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{_label(x)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#555"/>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(pts))
    out.append(f'<path class="series" d="{d}" fill="none" stroke="{color}" stroke-width="1.8"/>')
    if len(pts) <= 30:
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.8" fill="{color}"/>' for x, y in pts]
    out.append("</svg>")
    return "\n".join(out)


# ---- HTML pieces -----------------------------------------------------------------------------------------


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash: skip it, the report still renders
    return rows


def stage_dirs(run_dir: str | Path) -> list[Path]:
    """Directories at or under run_dir holding a run.json (one per stage), oldest first."""
    dirs = [p.parent for p in Path(run_dir).rglob("run.json") if "checkpoints" not in p.parts]
    return sorted(dirs, key=lambda d: (d / "run.json").stat().st_mtime)


def _pass1(eval_file: Path) -> float | None:
    try:
        return json.loads(eval_file.read_text())["metrics"]["pass@1"]
    except (OSError, ValueError, KeyError):
        return None


def with_final_eval(metrics: list[dict], stage_dir: Path) -> list[dict]:
    """metrics.jsonl rows plus the evaluations not logged per step: the final one (eval.json) at the last step,
    and for an RL run without its own step-0 evaluation, the starting model's eval.json at step 0."""
    config = json.loads((stage_dir / "run.json").read_text()).get("config", {})
    extra = []
    has_start = any(m.get("step") == 0 and "eval/pass@1" in m for m in metrics)
    if config.get("model") and not has_start:
        start = _pass1(Path(config["model"]) / "eval.json")
        if start is not None:
            extra.append({"step": 0, "eval/pass@1": start})
    final = _pass1(stage_dir / "eval.json")
    if final is not None and isinstance(config.get("steps"), int):
        extra.append({"step": config["steps"], "eval/pass@1": final})
    return extra[:1] + metrics + extra[1:] if extra and extra[0]["step"] == 0 else metrics + extra


def charts_html(metrics: list[dict]) -> str:
    charts = []
    for i, (key, title) in enumerate(CURVES):
        points = [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
        if key == "loss" and any("reward_mean" in m for m in metrics):
            continue  # an RL loss is ~0 by construction; its curve says nothing
        if any(math.isfinite(y) for _, y in points):
            charts.append(line_chart(points, title, key, color=COLORS[i % len(COLORS)]))
    return (
        '<div class="charts">' + "\n".join(charts) + "</div>" if charts else '<p class="note">no metrics</p>'
    )


def eval_html(stage_dir: Path) -> str:
    path = stage_dir / "eval.json"
    if not path.is_file():
        return '<p class="note">no eval.json (the run has not finished its final evaluation)</p>'
    result = json.loads(path.read_text())
    rows = [list(r) for r in eval_rows(result)]
    summary = stage_dir / "summary.json"
    before = json.loads(summary.read_text()).get("before") if summary.is_file() else None
    parts = [html_table(["metric", "value"], rows, "eval")]
    if before:
        k = result["settings"]["k"]
        after = result["metrics"]
        keys = [("pass@1", "pass@1"), (f"cons@{k}", f"cons@{k}"), ("format_rate", "format rate")]
        parts.append(
            html_table(
                ["held-out", "before RL", "after RL", "change"],
                [
                    [
                        name,
                        f"{100 * before[key]:.1f}%",
                        f"{100 * after[key]:.1f}%",
                        f"{100 * (after[key] - before[key]):+.1f} points",
                    ]
                    for key, name in keys
                    if key in before
                ],
                "eval-before-after",
            )
        )
    for ex in result.get("examples", [])[:3]:
        mark = "correct" if ex.get("correct") else "wrong"
        parts.append(
            f"<pre>Q: {html.escape(str(ex.get('question')))}  (answer {html.escape(str(ex.get('answer')))}"
            f", {mark})\n{html.escape(str(ex.get('completion')))}</pre>"
        )
    return "\n".join(parts)


def cost_html(records: list[dict]) -> str:
    """The per-stage cost table, then one row per (stage, phase)."""
    if not records:
        return '<p class="note">no ledger.jsonl</p>'
    s = summarize(records)
    devices: dict[str, str] = {}
    for r in records:
        devices.setdefault(r["stage"], f"{r.get('device_kind')} x {r.get('device_count')}")
    parts = [
        html_table(
            ["stage", "devices", "wall h", "device-h", "MFU", "energy kWh", "$"],
            cost_rows({**s, "devices": devices}),
            "cost",
        )
    ]
    rows = []
    for stage, phases in s["phases"].items():
        for phase, t in phases.items():
            rows.append(
                [
                    stage,
                    phase,
                    _duration(t["wall_s"]),
                    f"{t['device_hours']:.4g}",
                    _si(t["tokens"]),
                    _si(t["flops"]),
                    "-" if t["mfu"] is None else f"{100 * t['mfu']:.1f}%",
                    "-" if t["energy_j"] is None else f"{t['energy_j'] / 1e3:,.2f}",
                    format_usd(t["usd"]),
                ]
            )
    parts.append(
        html_table(
            ["stage", "phase", "wall", "device-h", "tokens", "FLOPs", "MFU", "energy kJ", "$"],
            rows,
            "cost-phases",
        )
    )
    return "\n".join(parts)


def estimate_html(stage_dir: Path) -> str:
    """Estimated beside measured for an RL stage (its estimate.json, or one made from its first steps)."""
    from r1kit.cost.views import compare, estimate_for_run

    try:
        est = estimate_for_run(stage_dir)
        rows = compare(est, read_ledger(stage_dir / "ledger.jsonl"))
    except (UserError, OSError, KeyError, ValueError) as e:
        return f'<p class="note">no estimate: {html.escape(str(e))}</p>'

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:+.1f}%"

    table = [
        [
            phase,
            _duration(r["wall_s"]["estimated"] or 0),
            _duration(r["wall_s"]["measured"] or 0),
            pct(r["wall_s"]["error_pct"]),
            format_usd(r["usd"]["estimated"]),
            format_usd(r["usd"]["measured"]),
            pct(r["usd"]["error_pct"]),
        ]
        for phase, r in rows.items()
    ]
    note = html.escape(
        f"estimate: {est.get('origin', '')} (basis {est['basis']}, for {est['device_kind']} x "
        f"{est['device_count']}); " + "; ".join(est.get("notes", []))
    )
    return f'<p class="note">{note}</p>' + html_table(
        ["phase", "est. wall", "wall", "error", "est. $", "$", "error"], table, "estimate"
    )


def lineage_html(dirs: list[Path]) -> str:
    rows = []
    for d in dirs:
        try:
            lin = lineage_of(d)
        except (OSError, ValueError) as e:
            rows.append([str(d), "?", "", "", html.escape(str(e))])
            continue
        keys = [k for k in lin if k not in ("stage", "from", "to", "task")]
        settings = "; ".join(
            f"{k} {json.dumps(lin[k]) if isinstance(lin[k], dict) else lin[k]}" for k in keys
        )
        rows.append([lin["stage"], lin.get("from", ""), lin.get("to", str(d)), lin.get("task", ""), settings])
    return html_table(["stage", "from", "to", "task", "key settings"], rows, "lineage")


def models_html(run_dir: Path) -> str:
    """A pipeline's summary: every model on the same held-out set, with its own and its lineage's cost."""
    from r1kit.reporting.summary import format_summary, summary_rows

    rows = summary_rows(run_dir)
    body = [[r["stage"], r["kind"], "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}M",
             "-" if r["pass@1"] is None else f"{100 * r['pass@1']:.1f}% ± {100 * r['pass@1_ci95']:.1f}",
             "-" if r["cons@k"] is None else f"{100 * r['cons@k']:.1f}%",
             "-" if r["device_hours"] is None else f"{r['device_hours']:.3f}",
             f"{r['lineage_device_hours']:.3f}"] for r in rows]
    note = format_summary(rows).splitlines()[-1] if any(r["problems"] for r in rows) else ""
    return html_table(["stage", "kind", "params", "pass@1", "cons@k", "device-h", "lineage device-h"], body,
                      "cost") + (f'<p class="note">{html.escape(note)}</p>' if note.startswith("held-out") else "")


def build_report(run_dir: str | Path) -> str:
    """The report's HTML text."""
    run_dir = Path(run_dir)
    dirs = stage_dirs(run_dir)
    if not dirs:
        raise UserError(f"{run_dir} holds no run.json: is it an r1kit run directory?")
    records = read_ledger(run_dir) if any(run_dir.rglob("ledger.jsonl")) else []
    body = [f"<h1>r1kit run report: {html.escape(str(run_dir))}</h1>"]
    if (run_dir / "pipeline.json").is_file():
        body += ["<h2>Models</h2>", models_html(run_dir)]
    body += [
        "<h2>Lineage</h2>",
        lineage_html(dirs),
        "<h2>Cost</h2>",
        cost_html(records),
    ]
    for d in dirs:
        stage = json.loads((d / "run.json").read_text()).get("stage", "?")
        name = html.escape(f"{stage}: {d.relative_to(run_dir) if d != run_dir else d.name}")
        body += [
            f'<h2 class="stage">Stage {name}</h2>',
            "<h3>Curves per step</h3>",
            charts_html(with_final_eval(_read_jsonl(d / "metrics.jsonl"), d)),
            "<h3>Evaluation</h3>",
            eval_html(d),
        ]
        if stage == "rl" and (d / "ledger.jsonl").is_file():
            body += ["<h3>Estimated beside measured</h3>", estimate_html(d)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>r1kit report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report (default RUN_DIR/report.html) and return its path."""
    path = Path(out) if out else Path(run_dir) / REPORT_FILE
    text = build_report(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path

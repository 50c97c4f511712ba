"""DeepSeek's published training cost, recomputed from GPUs x hours x price (`r1kit cost paper`).

Follows the cost table of the R1 paper's Nature supplement (H800 at $2 per GPU-hour): R1-Zero ran on
512 H800s for about 198 h, R1 on 512 for about 80 h, and SFT data creation took 5K GPU-hours (no hour count
published). The DeepSeek-V3 base (arXiv 2412.19437) took 2,664K + 119K + 5K H800 GPU-hours.

Departure, or rather a finding: the paper prices the GPU-hours *after* rounding them to thousands
(101K x $2 = $202K), while the exact 512 x 198 x $2 = $202,752 would round to $203K. The "published" columns
reproduce the paper's method; the exact figures are kept beside them. Totals are sums of the parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PAPER_PRICE_PER_HOUR = 2.0  # USD per H800 GPU-hour, the paper's assumption


@dataclass(frozen=True)
class PaperStage:
    """One published run: either count x hours, or GPU-hours alone where no duration was published."""

    name: str
    device: str
    count: int
    hours: float | None = None  # wall-clock hours of the run (approx., as published)
    gpu_hours: float | None = None  # given directly when hours is None

    def device_hours(self) -> float:
        return self.count * self.hours if self.hours is not None else float(self.gpu_hours or 0)


PAPER_STAGES: tuple[PaperStage, ...] = (
    PaperStage("DeepSeek-R1-Zero", "H800", 512, hours=198),
    PaperStage("SFT data creation", "H800", 512, gpu_hours=5_000),
    PaperStage("DeepSeek-R1", "H800", 512, hours=80),
)

V3_STAGES: tuple[PaperStage, ...] = (
    PaperStage("V3 pre-training", "H800", 2048, gpu_hours=2_664_000),
    PaperStage("V3 context extension", "H800", 2048, gpu_hours=119_000),
    PaperStage("V3 post-training", "H800", 2048, gpu_hours=5_000),
)


def _thousands(x: float) -> int:
    return int(x / 1000 + 0.5)  # half up, as a person rounds


def _row(group: str, name: str, stages: tuple[PaperStage, ...], price: float, total: bool) -> dict[str, Any]:
    gpu_hours = sum(s.device_hours() for s in stages)
    gpu_hours_k = _thousands(gpu_hours)
    one = stages[0]
    return {
        "group": group,
        "stage": name,
        "device": one.device,
        "total": total,
        "count": None if total else one.count,
        "hours": None if total else one.hours,
        "gpu_hours": gpu_hours,
        "usd": gpu_hours * price,  # exact
        "gpu_hours_k": gpu_hours_k,
        "usd_k": gpu_hours_k * price,  # as published: rounded GPU-hours x price
        "price_per_hour": price,
    }


def paper_table(price_per_hour: float = PAPER_PRICE_PER_HOUR) -> list[dict[str, Any]]:
    """Rows for each R1 stage, the R1 total, each V3 stage and the V3 total, computed from the parts."""
    rows = [_row("DeepSeek-R1", s.name, (s,), price_per_hour, False) for s in PAPER_STAGES]
    rows.append(_row("DeepSeek-R1", "total", PAPER_STAGES, price_per_hour, True))
    rows += [_row("DeepSeek-V3", s.name, (s,), price_per_hour, False) for s in V3_STAGES]
    rows.append(_row("DeepSeek-V3", "DeepSeek-V3 total", V3_STAGES, price_per_hour, True))
    return rows


def _usd(usd_k: float) -> str:
    return f"${usd_k / 1000:.3f}M" if usd_k >= 1000 else f"${usd_k:,.0f}K"


def format_paper_table(price_per_hour: float = PAPER_PRICE_PER_HOUR) -> str:
    """The paper's cost table (GPU-hours in K, USD as published), then the V3 base, then the exact sums."""
    rows = paper_table(price_per_hour)
    header = ["stage", "GPUs x hours", "H800 GPU-hours", "USD"]
    body = []
    for r in rows:
        if r["group"] == "DeepSeek-V3" and r["stage"] == V3_STAGES[0].name:
            body.append(None)  # blank line between R1 and V3
        span = f"{r['count']} x {r['hours']:g} h" if r["hours"] is not None else ""
        body.append([r["stage"], span, f"{r['gpu_hours_k']:,}K", _usd(r["usd_k"])])
    cells = [header, *(b for b in body if b)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]

    def line(c: list[str]) -> str:
        return " | ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths)))

    out = [
        f"DeepSeek-R1 training cost, H800 at ${price_per_hour:.2f} per GPU-hour (Nature supplement)",
        line(header),
        "-+-".join("-" * w for w in widths),
    ]
    out += ["" if b is None else line(b) for b in body]
    r1_total = next(r for r in rows if r["group"] == "DeepSeek-R1" and r["total"])
    out += [
        "",
        f"exact R1 total: {r1_total['gpu_hours']:,.0f} GPU-h = ${r1_total['usd']:,.0f} "
        "(the paper prices the GPU-hours rounded to thousands).",
        "Rental prices of those runs only: no ablations, failed runs, staff or hardware purchase.",
    ]
    return "\n".join(out)

"""`r1kit cost paper`: DeepSeek's published cost table, recomputed from GPUs x hours x price."""

import pytest

from r1kit.cost_paper import PAPER_STAGES, V3_STAGES, format_paper_table, paper_table


def rows_by_name(price=2.0):
    return {(r["group"], r["stage"]): r for r in paper_table(price)}


@pytest.mark.parametrize(
    "stage,gpu_hours_k,usd_k",
    [
        ("DeepSeek-R1-Zero", 101, 202),
        ("SFT data creation", 5, 10),
        ("DeepSeek-R1", 41, 82),
        ("total", 147, 294),
    ],
)
def test_r1_rows_match_the_published_rounding(stage, gpu_hours_k, usd_k):
    row = rows_by_name()[("DeepSeek-R1", stage)]
    assert row["gpu_hours_k"] == gpu_hours_k and row["usd_k"] == usd_k


def test_rows_come_from_gpus_times_hours():
    rows = rows_by_name()
    assert rows[("DeepSeek-R1", "DeepSeek-R1-Zero")]["gpu_hours"] == 512 * 198 == 101_376
    assert rows[("DeepSeek-R1", "DeepSeek-R1")]["gpu_hours"] == 512 * 80 == 40_960
    total = rows[("DeepSeek-R1", "total")]
    assert total["gpu_hours"] == 101_376 + 5_000 + 40_960 and total["usd"] == 2 * 147_336
    # the paper prices rounded GPU-hours: the exact $202,752 would round to $203K
    assert rows[("DeepSeek-R1", "DeepSeek-R1-Zero")]["usd"] == 202_752


def test_v3_base():
    rows = rows_by_name()
    v3 = rows[("DeepSeek-V3", "DeepSeek-V3 total")]
    assert v3["gpu_hours"] == 2_664_000 + 119_000 + 5_000 == 2_788_000
    assert v3["gpu_hours_k"] == 2_788 and v3["usd"] == 5_576_000 and v3["usd_k"] == 5_576


def test_totals_are_computed_not_typed():
    rows = paper_table(price_per_hour=3.0)
    r1 = [r for r in rows if r["group"] == "DeepSeek-R1" and not r["total"]]
    total = next(r for r in rows if r["stage"] == "total")
    assert len(r1) == len(PAPER_STAGES) and len(rows) == len(PAPER_STAGES) + len(V3_STAGES) + 2
    assert total["gpu_hours"] == sum(r["gpu_hours"] for r in r1) and total["usd_k"] == 147 * 3


def test_format_prints_the_papers_table():
    text = format_paper_table()
    lines = {line.split("|")[0].strip(): line for line in text.splitlines() if "|" in line}
    for stage, gpu_h, usd in [
        ("DeepSeek-R1-Zero", "101K", "$202K"),
        ("SFT data creation", "5K", "$10K"),
        ("DeepSeek-R1", "41K", "$82K"),
        ("total", "147K", "$294K"),
        ("DeepSeek-V3 total", "2,788K", "$5.576M"),
    ]:
        cells = [c.strip() for c in lines[stage].split("|")]
        assert cells[2:] == [gpu_h, usd]
    assert "512 x 198 h" in lines["DeepSeek-R1-Zero"] and "$2.00 per GPU-hour" in text

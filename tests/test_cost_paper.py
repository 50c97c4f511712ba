"""`r1kit cost paper`: DeepSeek's published cost table, recomputed from GPUs x hours x price; and R1-Zero
re-estimated from its recipe (recipes/r1-zero-paper.toml) against that table."""

from pathlib import Path

import pytest

from r1kit.cost.paper import PAPER_STAGES, V3_STAGES, format_paper_table, paper_table


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


# ---- R1-Zero re-estimated from its recipe (recipes/r1-zero-paper.toml, README "What R1-Zero cost, re-estimated")

ROOT = Path(__file__).resolve().parent.parent
PAPER_RECIPE = ROOT / "recipes" / "r1-zero-paper.toml"
V3_ACTIVE = ROOT / "recipes" / "models" / "deepseek-v3-active-37b"


def paper_recipe_config():
    from r1kit.cli.train import rl_config_from

    class Args:
        config, model, task, out, strict = str(PAPER_RECIPE), str(V3_ACTIVE), None, None, False

    return rl_config_from(Args, [])


def test_the_dense_stand_in_has_v3s_active_parameters():
    from r1kit.cost.estimate import load_model_config
    from r1kit.cost.ledger import matmul_param_count, param_count

    config = load_model_config(V3_ACTIVE)
    assert param_count(config) == pytest.approx(37.55e9, rel=0.01)  # V3: 61 layers + embedding + head, active
    assert matmul_param_count(config) == pytest.approx(36.6e9, rel=0.01)  # DeepSeek: 36.6B without the embedding


def test_r1_zero_re_estimated_is_within_10x_of_the_papers_gpu_hours():
    """The paper's settings on 512 H800s at r1kit's assumed MFU (no calibration, no tokenizer): the estimate
    must land within an order of magnitude of the 101K GPU-hours DeepSeek reported."""
    from r1kit.cost.estimate import estimate_from_config

    cfg = paper_recipe_config()
    est = estimate_from_config(cfg, None, device_kind="H800", device_count=512, prompt_len=200,
                               expected_completion_len=8000)
    assert est["basis"] == "assumed" and est["calibration"] is None
    i = est["inputs"]
    # 650 rollouts x 512 questions x 16 = the paper's 10,400 optimiser steps x 512 outputs
    assert i["steps"] * i["prompts_per_step"] * i["group_size"] == 10_400 * 512
    paper = rows_by_name()[("DeepSeek-R1", "DeepSeek-R1-Zero")]["gpu_hours"]
    hours = est["total"]["device_hours"]
    assert paper / 10 < hours < paper * 10, f"{hours:,.0f} GPU-hours against the paper's {paper:,}"
    assert est["phases"]["rollout"]["flops"] > 0 and est["phases"]["training"]["flops"] > 0


def test_cli_estimate_takes_lengths_instead_of_a_tokenizer(capsys):
    """--prompt-len and --completion-len: a directory holding only config.json (no tokenizer) will do."""
    from r1kit.cli.main import main

    argv = ["cost", "estimate", "--config", str(PAPER_RECIPE), "--model", str(V3_ACTIVE), "--gpu", "H800",
            "--count", "512", "--completion-len", "8000"]
    assert main([*argv, "--prompt-len", "200"]) == 0
    out = capsys.readouterr().out
    assert "H800 x 512" in out and "prompt 200.0 + completion 8000.0 tokens" in out
    assert main(argv) == 2  # without --prompt-len the prompts are measured, and there is no tokenizer to do it
    assert "tokenizer" in capsys.readouterr().err

"""Estimating an RL run: the arithmetic by hand (no model), then a calibrated estimate of a tiny run against the
run itself, and the `cost estimate` / `cost RUN_DIR` commands. About ten seconds on one thread."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1kit.algo.rl_config import AlgoConfig, RLConfig, RolloutConfig
from r1kit.cli.main import main
from r1kit.config import EvalConfig
from r1kit.cost.calibration import ContentionProbe, calibration_config
from r1kit.cost.estimate import (
    ASSUMED_MFU,
    count_evals,
    count_saves,
    estimate_from_config,
    estimate_rl,
    read_estimate,
    write_estimate,
)
from r1kit.cost.ledger import flops_per_token, read_ledger, summarize
from r1kit.cost.views import compare, estimate_for_run, format_comparison, format_estimate
from r1kit.errors import UserError

# d=64, 2 layers, ff=128, 4 heads of 16, 2 kv heads, vocab 100 (tests/test_ledger.py works out its FLOPs).
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
}


def rl_config(out="", model="m", steps=10, **kw) -> RLConfig:
    return RLConfig(
        model=model,
        out=str(out),
        steps=steps,
        train_problems=200,
        checkpoint_every=100,
        rollout=RolloutConfig(prompts_per_step=4, group_size=4, max_new_tokens=24),
        algo=AlgoConfig(mini_batches=2),
        eval=EvalConfig(n=8, k=2, max_new_tokens=24),
        **kw,
    )


CALIBRATION = {
    "steps": 2,
    "device_kind": "cpu",
    "device_count": 2,
    "peak_flops": 1e10,
    "completion_len": 20.0,
    "prompt_len": 10.0,
    "sampled_share": 1.0,
    "trained_share": 0.5,
    "flops_per_s": {"rollout": 2e9, "training": 8e9, "evaluation": 1e9},
    "mfu": {"rollout": 0.1, "training": 0.4, "evaluation": 0.05},
    "scoring_s_per_completion": 0.001,
    "seconds_per_save": 0.5,
    "eval_completion_len": 30.0,
    "eval_prompt_len": 10.0,
}


@pytest.mark.parametrize("steps,every,n", [(10, 0, 1), (10, 5, 3), (10, 3, 5), (1, 1, 2), (120, 40, 4)])
def test_count_evals_matches_run_rl(steps, every, n):
    # before step 1 (if every), at every multiple of `every` below `steps`, and the final one
    assert count_evals(steps, every) == n


def test_count_saves():
    assert count_saves(120, 20) == 6 + 1 and count_saves(10, 4) == 3 + 1 and count_saves(2, 100) == 2


def test_estimate_arithmetic_by_hand():
    est = estimate_rl(rl_config(steps=10, eval_every=5), TINY, "cpu", 2, calibration=CALIBRATION)
    seq = 10 + 20  # prompt + completion
    sampled, trained = 10 * 4 * 4, 10 * 4 * 4 * 0.5
    roll = est["phases"]["rollout"]
    assert roll["tokens"] == sampled * seq
    assert roll["flops"] == sampled * seq * flops_per_token(TINY, 10 + 24, training=False)
    # cpu x 2 at the calibration's MFU: the measured rate of the same machine
    assert roll["wall_s"] == pytest.approx(roll["flops"] / (1e10 * 2 * 0.1))
    train = est["phases"]["training"]  # μ=1 x 3F (fwd + bwd) + F for the reference (β > 0)
    assert train["flops"] == pytest.approx(trained * seq * 4 * flops_per_token(TINY, seq, training=False))
    assert train["wall_s"] == pytest.approx(train["flops"] / (1e10 * 2 * 0.4))
    ev = est["phases"]["evaluation"]  # 3 evaluations (before, step 5, final) of 8 x 2 samples
    assert ev["tokens"] == 3 * 16 * (10 + 30)
    assert est["phases"]["scoring"]["wall_s"] == pytest.approx(sampled * 0.001)
    assert est["phases"]["checkpointing"]["wall_s"] == pytest.approx(2 * 0.5)
    total = est["total"]
    assert total["wall_s"] == pytest.approx(sum(p["wall_s"] for p in est["phases"].values()))
    assert total["device_hours"] == pytest.approx(total["wall_s"] * 2 / 3600)
    assert total["usd"] == pytest.approx(total["device_hours"] * est["price_per_hour"])
    assert total["energy_j"] == pytest.approx(5.0 * 2 * total["wall_s"])
    assert est["basis"] == "calibrated" and est["inputs"]["evals"] == 3
    json.dumps(est)  # plain data: it goes to estimate.json
    text = format_estimate(est)
    for word in ("rollout", "training", "evaluation", "total", "calibrated", "device-hours"):
        assert word in text


def test_other_device_uses_an_assumed_or_given_mfu():
    est = estimate_rl(rl_config(), TINY, "H100", 8, calibration=CALIBRATION, price=3.0)
    assert est["basis"] == "assumed" and any("ASSUMPTION" in n for n in est["notes"])
    roll = est["phases"]["rollout"]
    assert roll["wall_s"] == pytest.approx(roll["flops"] / (989.4e12 * 8 * ASSUMED_MFU["rollout"]))
    assert est["total"]["usd"] == pytest.approx(est["total"]["device_hours"] * 3.0)
    assert est["inputs"]["completion_len"] == 20.0  # lengths still come from the calibration
    given = estimate_rl(rl_config(), TINY, "H100", 8, mfu=0.5, calibration=CALIBRATION)
    assert given["basis"] == "given"
    assert given["phases"]["training"]["mfu"] == 0.5 == given["phases"]["rollout"]["mfu"]
    assert "ASSUMPTION" in format_estimate(est)


def test_a_busy_calibration_is_flagged():
    quiet = estimate_rl(rl_config(), TINY, "cpu", 2, calibration={**CALIBRATION, "other_runnable": 0.1})
    busy = estimate_rl(rl_config(), TINY, "cpu", 2, calibration={**CALIBRATION, "other_runnable": 1.8})
    assert not any("WARNING" in n for n in quiet["notes"])
    assert any("WARNING: other jobs ran during the calibration" in n for n in busy["notes"])


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads Linux's /proc")
def test_contention_probe_sees_another_busy_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with ContentionProbe(interval=0.05) as probe:
            time.sleep(1.0)
    finally:
        busy.kill()
    assert len(probe.samples) >= 5 and probe.mean_other >= 0.5  # others on the machine only add to it


def test_without_calibration():
    est = estimate_rl(rl_config(), TINY, "A100", 1, prompt_len=12)
    assert est["inputs"]["completion_len"] == 24  # the whole budget: an upper bound, said so
    assert any("upper bound" in n for n in est["notes"])
    with pytest.raises(UserError, match="calibration"):
        estimate_rl(rl_config(), TINY, "cpu", 2, prompt_len=12)
    with pytest.raises(UserError, match="peak"):
        estimate_rl(rl_config(), TINY, "Tesla T4", 1, mfu=0.3, prompt_len=12)


def test_calibration_config_keeps_the_batch_shape(tmp_path):
    cfg = rl_config(steps=120, eval_every=40)
    cal = calibration_config(cfg, 3, tmp_path)
    assert (cal.steps, cal.eval_every, cal.checkpoint_every, cal.out) == (3, 0, 3, str(tmp_path))
    assert cal.eval.n == 8 and cal.rollout == cfg.rollout and cfg.steps == 120  # the original is untouched
    big = rl_config()
    big.eval = EvalConfig(n=500, k=4, batch_size=128)
    assert calibration_config(big, 2, tmp_path).eval.n == 32  # one sampling batch of 128


# ---- a real tiny run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model, tokenizer):
    from r1kit.models.modeling import save_model

    path = tmp_path_factory.mktemp("policy") / "model"
    save_model(tiny_model, tokenizer, path)
    return path


@pytest.fixture(scope="module")
def estimated_run(model_dir, tmp_path_factory):
    from r1kit.cost.devices import ledger_for
    from r1kit.loops.rl import run_rl

    def factory(d, stage, model_config):
        return ledger_for(d, stage, model_config=model_config)

    out = tmp_path_factory.mktemp("rl") / "run"
    cfg = rl_config(out, model=str(model_dir), steps=12, eval_every=6)
    est = estimate_from_config(cfg, run_rl, calibrate_steps=3, ledger_factory=factory)
    run_rl(cfg, progress=False, ledger_factory=factory)
    write_estimate(out, est)
    return out, est


@pytest.mark.slow
def test_calibrated_estimate_is_close_to_the_run(estimated_run):
    out, est = estimated_run
    assert est["basis"] == "calibrated" and est["calibration"]["steps"] == 3
    assert est["calibration"]["device_kind"] == "cpu" and 0 < est["inputs"]["completion_len"] <= 24
    assert est["calibration"]["other_runnable"] >= 0  # the contention probe ran beside the calibration
    records = read_ledger(out)
    measured = summarize(records)["stages"]["rl"]
    rows = compare(est, records)
    # FLOPs follow from token counts the calibration measured; the time also from its noisy rates
    assert abs(rows["total"]["flops"]["error_pct"]) < 20, rows["total"]
    assert abs(rows["total"]["wall_s"]["error_pct"]) < 40, format_comparison(est, rows)
    assert rows["total"]["wall_s"]["measured"] == pytest.approx(measured["wall_s"])
    assert est["inputs"]["evals"] == 3 == sum(r["phase"] == "evaluation" for r in records)


@pytest.mark.slow
def test_cost_run_dir_shows_estimate_beside_measured(estimated_run, capsys):
    out, est = estimated_run
    assert read_estimate(out)["total"] == est["total"]
    assert main(["cost", str(out)]) == 0
    text = capsys.readouterr().out
    assert "estimate vs measured" in text and "error" in text and "est. wall" in text
    # without estimate.json: estimated after the fact from the run's own first steps
    (out / "estimate.json").rename(out / "saved.json")
    try:
        after = estimate_for_run(out)
        assert "after the fact" in after["origin"] and after["calibration"]["steps"] == 3
    finally:
        (out / "saved.json").rename(out / "estimate.json")


@pytest.mark.slow
def test_cli_cost_estimate(model_dir, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "steps = 50\ntrain_problems = 100\n[rollout]\nprompts_per_step = 2\ngroup_size = 2\n"
        "max_new_tokens = 8\n[eval]\nn = 2\nk = 1\nmax_new_tokens = 8\n"
    )
    argv = ["cost", "estimate", "--config", str(recipe), "--model", str(model_dir)]
    assert (
        main([*argv, "--gpu", "H100", "--count", "8", "--calibrate-steps", "0", "--save", str(tmp_path)]) == 0
    )
    text = capsys.readouterr().out
    assert "ASSUMPTION" in text and "H100 x 8" in text and "upper bound" in text
    saved = read_estimate(tmp_path)
    assert saved["inputs"]["steps"] == 50 and saved["device_count"] == 8 and saved["calibration"] is None
    assert main([*argv, "--calibrate-steps", "1", "--rollout.group_size=4"]) == 0
    text = capsys.readouterr().out
    assert "basis: calibrated" in text and "G=4" in text
    assert main(["cost", "paper", "--rollout.group_size=4"]) == 2  # overrides only go with `cost estimate`


def test_cost_modules_import_no_torch():
    code = (
        "import sys, r1kit.cost.estimate, r1kit.cost.calibration, r1kit.cost.views, r1kit.reporting.report, r1kit.reporting.modelcard; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_flops_budget_caps_the_estimated_steps():
    """An RL stage with max_flops (a pipeline's match_compute) stops after the step that reaches the budget."""
    full = estimate_rl(rl_config(steps=100), TINY, "cpu", 2, calibration=CALIBRATION)
    one_step = (full["phases"]["rollout"]["flops"] + full["phases"]["training"]["flops"]) / 100
    capped = estimate_rl(rl_config(steps=100, max_flops=12.5 * one_step), TINY, "cpu", 2, calibration=CALIBRATION)
    assert capped["phases"]["rollout"]["flops"] == pytest.approx(full["phases"]["rollout"]["flops"] * 13 / 100)
    assert capped["phases"]["training"]["flops"] == pytest.approx(full["phases"]["training"]["flops"] * 13 / 100)
    assert any("13 of at most 100 steps" in n for n in capped["notes"])
    roomy = estimate_rl(rl_config(steps=100, max_flops=1e30), TINY, "cpu", 2, calibration=CALIBRATION)
    assert roomy["phases"]["training"]["flops"] == full["phases"]["training"]["flops"]

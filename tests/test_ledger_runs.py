"""The ledger of a real (micro) run on this CPU: no GPU, a price override, and energy, MFU, FLOPs and dollars
that are present and add up. One 5-step pre-training run, a few seconds on one thread."""

import pytest
import torch

from r1kit.config import EvalConfig
from r1kit.cost.devices import cpu_peak_flops, ledger_for
from r1kit.cost.hardware import CPU_WATTS_PER_THREAD
from r1kit.cost.ledger import flops_per_token, read_ledger, summarize
from r1kit.loops.base import BaseConfig, run_base

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of the ledger"),
]
PRICE = 0.5  # USD per thread-hour: far from the table's cpu price (0.04), so the override is visible


@pytest.fixture(scope="module")
def run(tmp_path_factory, torch_threads):
    out = tmp_path_factory.mktemp("ledger") / "base"
    cfg = BaseConfig(
        size="micro",
        out=str(out),
        corpus=300,
        steps=5,
        batch_size=8,
        warmup=1,
        log_every=1,
        eval=EvalConfig(n=4, k=1, max_new_tokens=16),
    )
    seen_configs = []

    def factory(run_dir, stage, model_config):
        seen_configs.append(model_config)
        return ledger_for(run_dir, stage, price_override=PRICE, model_config=model_config)

    run_base(cfg, progress=False, ledger_factory=factory)
    return out, read_ledger(out), seen_configs[0]


def test_every_phase_is_recorded_on_the_cpu(run):
    _, records, _ = run
    phases = [r["phase"] for r in records]
    assert phases == ["training"] * 5 + ["checkpointing", "evaluation"]
    for r in records:
        assert r["stage"] == "base" and r["schema"] == 1 and "error" not in r
        assert r["device_kind"] == "cpu" and r["device_count"] == torch.get_num_threads()  # no GPU: threads
        assert r["wall_s"] > 0 and r["end"] > r["start"]
        assert r["device_hours"] == pytest.approx(r["wall_s"] * r["device_count"] / 3600)


def test_price_override_sets_the_dollars(run):
    _, records, _ = run
    for r in records:
        assert r["price_per_hour"] == PRICE
        assert r["usd"] == pytest.approx(r["device_hours"] * PRICE)
    total = summarize(records)["total"]
    assert total["usd"] == pytest.approx(total["device_hours"] * PRICE)


def test_energy_is_power_times_time_without_nvml(run):
    _, records, _ = run
    for r in records:
        assert r["power_w"] == CPU_WATTS_PER_THREAD and r["energy_source"] == "tdp"
        assert r["energy_j"] == pytest.approx(CPU_WATTS_PER_THREAD * r["wall_s"] * r["device_count"])


def test_flops_and_mfu_are_plausible(run):
    _, records, model_config = run
    peak = cpu_peak_flops() / torch.get_num_threads()  # the cached probe, per thread
    for r in records:
        assert r["peak_flops"] == pytest.approx(peak)
        assert r["flops_per_s"] == pytest.approx(r["flops"] / r["wall_s"])
        assert r["mfu"] == pytest.approx(r["flops"] / (r["wall_s"] * r["peak_flops"] * r["device_count"]))
    for r in (r for r in records if r["phase"] == "training"):
        assert r["trained_tokens"] > 0
        assert r["flops"] == flops_per_token(model_config, r["seq_len"], training=True) * r["trained_tokens"]
        # a micro model on a CPU: well above 0.1% of the probed matmul peak, and not absurdly above it
        assert 1e-3 < r["mfu"] < 5
    (ev,) = (r for r in records if r["phase"] == "evaluation")
    assert ev["prompt_tokens"] > 0 and 0 < ev["generated_tokens"] <= 4 * 16 and 0 < ev["mfu"] < 5
    (ck,) = (r for r in records if r["phase"] == "checkpointing")
    assert ck["flops"] == 0 and ck["mfu"] == 0


def test_environment_price_reaches_a_run_ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("R1KIT_PRICE_PER_HOUR", "7")
    monkeypatch.delenv("R1KIT_PRICE_CPU", raising=False)
    assert ledger_for(tmp_path, "rl").record("rollout", 3600.0)["price_per_hour"] == 7.0
    monkeypatch.setenv("R1KIT_PRICE_CPU", "3")  # the per-kind variable wins over the general one
    rec = ledger_for(tmp_path, "rl").record("rollout", 3600.0)
    assert rec["price_per_hour"] == 3.0 and rec["usd"] == pytest.approx(3.0 * rec["device_count"])

"""The cost ledger's arithmetic, worked out by hand: records, sums, prices, FLOPs and run estimates."""

import json
import subprocess
import sys
import time

import pytest

from r1kit.cost.hardware import resolve_price
from r1kit.cost.ledger import (
    LEDGER_FILE,
    SCHEMA_VERSION,
    Ledger,
    estimate_run,
    flops_per_token,
    format_table,
    matmul_param_count,
    param_count,
    read_ledger,
    summarize,
)
from r1kit.errors import UserError

H800_PEAK = 989.4e12
# d=64, 2 layers, ff=128, 4 heads of 16, 2 kv heads, vocab 100. Per layer: q 64x64 + k,v 2x64x32 + o 64x64
# = 12,288; MLP 3x64x128 = 24,576; so 2 x 36,864 + LM head 100x64 = 80,128 matmul weights.
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
}


def h800_ledger(path, stage="rl", **kw):
    args = {
        "device_kind": "H800",
        "device_count": 8,
        "peak_flops": H800_PEAK,
        "price_per_hour": 2.0,
        "power_w": 700.0,
    }
    return Ledger(path, stage, **{**args, **kw})


def test_phase_writes_one_plausible_line(tmp_path):
    ledger = h800_ledger(tmp_path / "ledger.jsonl")
    before = time.time()
    with ledger.phase("rollout") as ph:
        ph.add(prompt_tokens=100, generated_tokens=400, flops=1e12)
        ph.add(generated_tokens=100, step=3)  # counters sum, other fields are set
        time.sleep(0.02)
    (line,) = (tmp_path / "ledger.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["schema"] == SCHEMA_VERSION and rec["stage"] == "rl" and rec["phase"] == "rollout"
    assert 0.02 <= rec["wall_s"] < 5 and before <= rec["start"] < rec["end"] <= time.time()
    assert rec["end"] - rec["start"] == pytest.approx(rec["wall_s"], abs=1e-5)
    assert (rec["prompt_tokens"], rec["generated_tokens"], rec["trained_tokens"]) == (100, 500, 0)
    assert rec["flops"] == 1e12 and rec["flops_per_s"] == pytest.approx(1e12 / rec["wall_s"])
    assert rec["device_kind"] == "H800" and rec["device_count"] == 8 and rec["step"] == 3
    for key in ("device_hours", "mfu", "energy_j", "usd", "price_per_hour"):
        assert rec[key] > 0
    assert "error" not in rec


def test_record_arithmetic(tmp_path):
    rec = h800_ledger(tmp_path / "l.jsonl").record("training", 1800.0, trained_tokens=10, flops=1e18)
    assert rec["device_hours"] == pytest.approx(1800 * 8 / 3600) == 4.0
    assert rec["usd"] == pytest.approx(4.0 * 2.0)
    assert rec["mfu"] == pytest.approx(1e18 / (1800 * H800_PEAK * 8))
    assert rec["energy_j"] == pytest.approx(700 * 1800 * 8) and rec["energy_source"] == "tdp"
    measured = h800_ledger(tmp_path / "l.jsonl").record("training", 10.0, energy_j=123.0)
    assert measured["energy_j"] == 123.0 and measured["energy_source"] == "measured"


def test_unknown_device_leaves_mfu_usd_energy_null(tmp_path):
    ledger = Ledger(tmp_path, "rl", "Tesla T4", 1, peak_flops=None, price_per_hour=None, power_w=None)
    rec = ledger.record("rollout", 5.0, flops=1e9)
    assert rec["mfu"] is None and rec["usd"] is None and rec["energy_j"] is None
    assert (tmp_path / LEDGER_FILE).exists()  # a directory path gets ledger.jsonl
    assert summarize([rec])["total"]["usd"] is None


def test_energy_meter_and_failed_phase(tmp_path):
    readings = iter([1000.0, 1250.0])
    ledger = h800_ledger(tmp_path / "l.jsonl", energy_meter=lambda: next(readings))
    with pytest.raises(RuntimeError), ledger.phase("scoring"):
        raise RuntimeError("boom")
    (rec,) = read_ledger(tmp_path / "l.jsonl")
    assert rec["energy_j"] == 250.0 and rec["energy_source"] == "nvml" and rec["error"] is True


def test_computed_fields_cannot_be_added(tmp_path):
    with pytest.raises(ValueError, match="usd"), h800_ledger(tmp_path / "l.jsonl").phase("rollout") as ph:
        ph.add(usd=1.0)


def test_summary_sums_stages_and_recomputes_mfu(tmp_path):
    run = tmp_path / "pipeline"
    zero = h800_ledger(run / "r1_zero" / LEDGER_FILE, stage="r1_zero")
    zero.record("rollout", 3600.0, generated_tokens=1000, flops=0.1 * 3600 * H800_PEAK * 8)
    zero.record("training", 7200.0, trained_tokens=500, flops=0.4 * 7200 * H800_PEAK * 8)
    zero.record("training", 3600.0, trained_tokens=500, flops=0.4 * 3600 * H800_PEAK * 8)
    sft = h800_ledger(run / "sft" / "nested", stage="sft", device_count=4)  # a run dir, not yet made
    sft.record("training", 3600.0, prompt_tokens=7, flops=0.0)
    records = read_ledger(run)
    assert len(records) == 4
    s = summarize(records)
    stage = s["stages"]["r1_zero"]
    assert stage["wall_s"] == 14400 and stage["device_hours"] == pytest.approx(32.0)
    assert stage["usd"] == pytest.approx(64.0) and stage["tokens"] == 2000 and stage["entries"] == 3
    # (0.1 x 1 h + 0.4 x 3 h) / 4 h, not the mean of per-line MFUs (0.3)
    assert stage["mfu"] == pytest.approx(0.325)
    assert s["phases"]["r1_zero"]["training"]["mfu"] == pytest.approx(0.4)
    assert s["phases"]["r1_zero"]["training"]["trained_tokens"] == 1000
    total = s["total"]
    assert total["device_hours"] == pytest.approx(36.0) and total["usd"] == pytest.approx(72.0)
    assert total["energy_j"] == pytest.approx(700 * 3600 * (8 * 4 + 4))
    assert total["mfu"] == pytest.approx(1.3 * 8 / (4 * 8 + 4))
    table = format_table(s)
    for text in ("stage", "MFU", "energy kJ", "r1_zero", "sft", "(all)", "total", "$72.00", "32.5%"):
        assert text in table
    assert len({len(line) for line in table.splitlines() if line}) == 1  # fixed width


def test_read_ledger_errors(tmp_path):
    with pytest.raises(UserError, match="no ledger"):
        read_ledger(tmp_path / "missing")
    (tmp_path / LEDGER_FILE).write_text('{"stage": "rl"}\n\nnot json\n')
    with pytest.raises(UserError, match=":3:"):
        read_ledger(tmp_path)


def test_resolve_price_precedence(monkeypatch):
    monkeypatch.delenv("R1KIT_PRICE_PER_HOUR", raising=False)
    monkeypatch.delenv("R1KIT_PRICE_H800", raising=False)
    assert resolve_price("H800") == 2.0 and resolve_price("Tesla T4") is None
    monkeypatch.setenv("R1KIT_PRICE_PER_HOUR", "3.5")
    assert resolve_price("H800") == 3.5 and resolve_price("Tesla T4") == 3.5
    monkeypatch.setenv("R1KIT_PRICE_H800", "1.25")
    assert resolve_price("H800") == 1.25 and resolve_price("A100") == 3.5
    assert resolve_price("H800", override=0.5) == 0.5
    assert resolve_price("H800", env={}) == 2.0


@pytest.mark.parametrize("bad", ["two dollars", "-1", "nan", "inf"])
def test_bad_env_price_is_a_user_error(monkeypatch, bad):
    monkeypatch.setenv("R1KIT_PRICE_PER_HOUR", bad)
    with pytest.raises(UserError, match="R1KIT_PRICE_PER_HOUR") as e:
        resolve_price("H800")
    assert "\n" not in str(e.value)


def test_flops_per_token_by_hand():
    assert matmul_param_count(TINY) == 80_128
    # forward: 2 x 80,128 + 2 x 2 layers x 10 tokens x 64 = 160,256 + 2,560
    assert flops_per_token(TINY, seq_len=10, training=False) == 162_816
    assert flops_per_token(TINY, seq_len=10, training=True) == 3 * 162_816
    # params: matmuls + input embedding 6,400 + 2 norms of 64 per layer + final norm 64
    assert param_count(TINY) == 80_128 + 6_400 + 2 * 128 + 64
    assert param_count({**TINY, "tie_word_embeddings": True}) == 80_128 + 2 * 128 + 64
    with pytest.raises(UserError, match="hidden_size"):
        param_count({"n_embd": 64})


@pytest.mark.parametrize(
    "arch,extra",
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True, "head_dim": 32}),
        ("llama", {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 4}),
        ("qwen2", {}),
        ("qwen2", {"tie_word_embeddings": True}),
    ],
)
def test_param_count_matches_transformers(arch, extra):
    import transformers

    config_cls, model_cls = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    }[arch]
    kwargs = {k: v for k, v in TINY.items()} | extra
    config = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(config)
    assert param_count(config.to_dict()) == sum(p.numel() for p in model.parameters())


def test_estimate_run_arithmetic():
    est = estimate_run(
        TINY,
        steps=10,
        prompts_per_step=4,
        group_size=2,
        prompt_len=6,
        completion_len=4,
        device_kind="H800",
        device_count=2,
        mfu=0.5,
        ref_forward=True,
    )
    tokens = 10 * 4 * 2 * 10
    assert est["tokens"] == tokens
    assert est["rollout_flops"] == tokens * 162_816 == est["reference_flops"]
    assert est["training_flops"] == tokens * 3 * 162_816
    assert est["flops"] == tokens * 5 * 162_816
    assert est["seconds"] == pytest.approx(est["flops"] / (H800_PEAK * 2 * 0.5))
    assert est["device_hours"] == pytest.approx(est["seconds"] * 2 / 3600)
    assert est["usd"] == pytest.approx(est["device_hours"] * 2.0)
    no_ref = estimate_run(TINY, 10, 4, 2, 6, 4, "H800", 2, 0.5, price_per_hour=10.0)
    assert no_ref["reference_flops"] == 0 and no_ref["usd"] == pytest.approx(no_ref["device_hours"] * 10)
    with pytest.raises(UserError, match="peak"):
        estimate_run(TINY, 1, 1, 1, 1, 1, "cpu", 2, 0.5)
    cpu = estimate_run(TINY, 1, 1, 1, 1, 1, "cpu", 2, 0.5, peak=1e9)
    assert cpu["seconds"] == pytest.approx(cpu["flops"] / 1e9) and cpu["price_per_hour"] == 0.04


def test_layer_zero_modules_do_not_import_torch():
    code = "import sys, r1kit.cost.ledger, r1kit.cost.paper, r1kit.cost.devices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

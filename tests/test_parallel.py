"""The device and precision decision (parallel/engine.py) and what the loops do with it on one process: activation
checkpointing changes no number, bf16 runs with float32 masters, bf16-pure keeps bfloat16 weights and saves and
loads them back in bfloat16, and a CUDA request on a machine without one is a one-line error."""

import json

import pytest
import torch

from r1kit.algo.grpo import UpdateSettings, build_rollout, train_on_rollout
from r1kit.config import ParallelConfig
from r1kit.errors import UserError
from r1kit.parallel.engine import Engine, resolve_engine
from r1kit.parallel.fsdp import decoder_layers, prepare_training_model


def test_auto_is_this_machine_and_bad_values_are_refused():
    engine = resolve_engine(ParallelConfig())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert engine.device.type == expected and engine.precision == ("bf16" if expected == "cuda" else "fp32")
    assert not engine.sharded and not engine.activation_checkpointing  # off on a CPU, even for RL
    assert resolve_engine(ParallelConfig(activation_checkpointing="on")).activation_checkpointing
    with pytest.raises(UserError, match="parallel.dtype"):
        ParallelConfig(dtype="fp16")
    with pytest.raises(UserError, match="parallel.device"):
        ParallelConfig(device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error():
    with pytest.raises(UserError, match="no CUDA GPU") as e:
        resolve_engine(ParallelConfig(device="cuda"))
    assert "\n" not in str(e.value)


_PEAK_CHILD = """
from r1kit.parallel.engine import peak_rss_mib, reset_peak_rss
block = bytearray(200 * 2**20)  # 200 MiB, touched, then freed
del block
high = peak_rss_mib()
reset_peak_rss()
print(high, peak_rss_mib())
"""


def test_peak_rss_restarts():
    """In a fresh process (a long-lived one reuses freed memory): the peak holds a freed block until reset."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD], capture_output=True, text=True, check=True)
    high, after = map(float, out.stdout.split())
    assert high > after + 150


def _rollout():
    rollout = build_rollout([[5, 6, 7], [8, 9]], [[10, 11, 12], [13]], 0, torch.tensor([1.0, -1.0]))
    rollout.ref_logprobs = torch.full((2, 3), -5.0)
    return rollout


def _update(model, engine):
    settings = UpdateSettings(1.0, "seq_mean", 0.01, 0.2, 0.2, 1, 1, 8, 1.0)
    stats = train_on_rollout(model, torch.optim.SGD(model.parameters(), lr=0.5), _rollout(), settings, engine)
    return stats, {k: v.detach().clone() for k, v in model.named_parameters()}


def test_activation_checkpointing_changes_no_number(tiny_config, tokenizer, torch_threads):
    from r1kit.models.modeling import new_model

    cpu = torch.device("cpu")
    plain = prepare_training_model(new_model(tiny_config, tokenizer, seed=0), Engine(cpu, "fp32"))
    ac_engine = Engine(cpu, "fp32", activation_checkpointing=True)
    checkpointed = prepare_training_model(new_model(tiny_config, tokenizer, seed=0), ac_engine)
    assert checkpointed.is_activation_checkpointing and len(decoder_layers(checkpointed)) == 2
    (s1, p1), (s2, p2) = _update(plain, Engine(cpu, "fp32")), _update(checkpointed, ac_engine)
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-6)
    for name in p1:
        torch.testing.assert_close(p1[name], p2[name], atol=1e-7, rtol=1e-6, msg=name)


def test_bf16_trains_float32_masters_and_bf16_pure_keeps_bfloat16(tiny_config, tokenizer, torch_threads, tmp_path):
    from r1kit.models.modeling import load_model, new_model, save_model

    cpu = torch.device("cpu")
    mixed = prepare_training_model(new_model(tiny_config, tokenizer, seed=0), Engine(cpu, "bf16"))
    stats, params = _update(mixed, Engine(cpu, "bf16"))
    assert all(p.dtype == torch.float32 for p in params.values()) and stats["updates"] == 1
    pure = prepare_training_model(new_model(tiny_config, tokenizer, seed=0), Engine(cpu, "bf16-pure"))
    stats, params = _update(pure, Engine(cpu, "bf16-pure"))
    assert all(p.dtype == torch.bfloat16 for p in params.values()) and stats["updates"] == 1
    save_model(pure, tokenizer, tmp_path / "pure")
    assert json.loads((tmp_path / "pure" / "config.json").read_text())["dtype"] == "bfloat16"
    back, _ = load_model(tmp_path / "pure", dtype="auto")
    assert back.dtype == torch.bfloat16
    for name, p in back.named_parameters():
        assert torch.equal(p, params[name]), name  # saved in its own dtype: loaded back bit for bit


def test_rl_runs_in_bf16_on_this_machine(tiny_config, tokenizer, tmp_path, torch_threads):
    from r1kit.algo.rl_config import RLConfig
    from r1kit.config import build
    from r1kit.loops.rl import run_rl
    from r1kit.models.modeling import new_model, save_model

    save_model(new_model(tiny_config, tokenizer, seed=0), tokenizer, tmp_path / "base")
    cfg = build(RLConfig, {"model": str(tmp_path / "base"), "out": str(tmp_path / "rl"), "steps": 2,
                           "train_problems": 16, "final_eval": False,
                           "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6},
                           "parallel": {"device": "cpu", "dtype": "bf16"}})
    summary = run_rl(cfg, progress=False)
    assert summary["finished"]
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2, rows
    assert all(r["peak_memory_mib"] > 0 and r["time_weight_sync"] < 0.01 for r in rows), rows
    run = json.loads((tmp_path / "rl" / "run.json").read_text())
    assert run["engine"] == "cpu bf16 (1 process)"


def test_the_doctor_checks_the_memory_plan_before_step_1(tiny_config, tokenizer, tmp_path, monkeypatch, capsys,
                                                         torch_threads):
    from r1kit.algo.rl_config import RLConfig
    from r1kit.config import build
    from r1kit.loops.rl import run_rl
    from r1kit.models.modeling import new_model, save_model

    save_model(new_model(tiny_config, tokenizer, seed=0), tokenizer, tmp_path / "base")
    monkeypatch.setattr(Engine, "memory_capacity_bytes", lambda self: 2**20)  # a 1 MiB machine

    def config(out: str, strict: bool) -> RLConfig:
        return build(RLConfig, {"model": str(tmp_path / "base"), "out": str(tmp_path / out), "steps": 1,
                                "train_problems": 16, "final_eval": False, "doctor": {"strict": strict},
                                "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4}})

    with pytest.raises(UserError, match=r"--strict.*memory plan needs .* GiB per rank of this machine's RAM"):
        run_rl(config("strict", True), progress=False)
    assert not (tmp_path / "strict" / "checkpoints").exists()
    assert run_rl(config("warned", False), progress=False)["finished"]
    assert "r1kit doctor: the memory plan needs" in capsys.readouterr().out


def test_placing_a_model_in_bf16_keeps_its_rotary_frequencies_in_float32(tiny_config, tokenizer):
    from r1kit.models.modeling import new_model

    model = new_model(tiny_config, tokenizer, seed=0)
    exact = model.model.rotary_emb.inv_freq.clone()
    placed = Engine(torch.device("cpu"), "bf16-pure").place(model)
    assert all(p.dtype == torch.bfloat16 for p in placed.parameters())
    assert placed.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(placed.model.rotary_emb.inv_freq, exact)  # Module.to(bf16) would have rounded it

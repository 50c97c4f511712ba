"""Tests that need a CUDA GPU (marker `cuda`): tests/conftest.py skips them where torch sees none, and
bench/gpu_check.sh runs them on the GPU machine (`pytest -m cuda tests/test_cuda.py`).

GRPO steps in bf16 on CUDA through `run_rl` (`cfg.parallel`) and through `r1kit rl --device cuda --dtype bf16`:
the run finishes, its losses are finite, the weights move, each step records its peak GPU memory and the ledger
names the GPU; the sampler's greedy tokens on CUDA equal the CPU's; the ledger's kind, count and peak.
"""

import copy
import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from r1kit.algo.rl_config import RLConfig
from r1kit.config import build
from r1kit.cost.devices import gpu_kind, ledger_for
from r1kit.cost.hardware import DEVICE_PEAKS
from r1kit.cost.ledger import read_ledger
from r1kit.loops.rl import run_rl
from r1kit.models.modeling import eos_ids, save_model
from r1kit.rollout.sampler import SamplingParams, sample
from r1kit.tasks import get_task
from r1kit.tasks.prompting import make_prompter

pytestmark = pytest.mark.cuda

REWARD = '''
def spread(problem, completion, score, ctx):
    """Varies with the text, so the groups of a random model have advantages to learn from."""
    return (sum(map(ord, completion)) % 7) / 7
'''


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, tiny_model, tokenizer):
    path = tmp_path_factory.mktemp("base") / "model"
    save_model(tiny_model, tokenizer, path)
    return path


@pytest.fixture(scope="module")
def reward_name(tmp_path_factory):
    """A user's reward module on sys.path (a random model earns no accuracy or format reward)."""
    name = "r1kit_cuda_test_rewards"
    folder = tmp_path_factory.mktemp("user")
    (folder / f"{name}.py").write_text(REWARD)
    sys.path.insert(0, str(folder))
    yield f"{name}:spread"
    sys.path.remove(str(folder))
    sys.modules.pop(name, None)


def _ledger(run_dir, stage, model_config):
    return ledger_for(run_dir, stage, model_config=model_config)


def _rl_data(model, out, reward_name) -> dict:
    return {
        "model": str(model), "out": str(out), "task": "arithmetic", "steps": 2, "train_problems": 64,
        "checkpoint_every": 2, "final_eval": False,
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 16},
        "algo": {"mini_batches": 2, "beta": 0.01},  # off-policy mini-batches and a reference model, as R1-Zero
        "optim": {"lr": 1e-3},
        "reward": {"weights": {"accuracy": 1.0, "format": 1.0, reward_name: 1.0}},
    }


def _toml(data: dict) -> str:
    """A recipe file of `data`: top-level values, then one [section] per table (a table inside it inline)."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)  # strings, numbers and booleans read the same in TOML

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in ((k, v) for k, v in data.items() if isinstance(v, dict)):
        lines += [f"[{section}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _check_run(out, base_model, steps: int = 2) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r.get("step", 0) >= 1]
    assert len(trained) == steps
    for r in trained:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["completions_trained"] > 0
        assert r["peak_memory_mib"] > 0  # torch.cuda.max_memory_allocated of the step, MiB
    before = load_file(str(base_model / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before.keys() & after.keys())
    records = read_ledger(out)
    kind = gpu_kind(torch.cuda.get_device_name(0))
    assert records and all(r["device_kind"] == kind for r in records)
    assert all(r["flops"] > 0 for r in records if r["phase"] in ("rollout", "training"))
    return trained


def test_grpo_on_cuda_in_bf16_moves_the_weights(tmp_path, base_model, reward_name):
    out = tmp_path / "rl"
    cfg = build(RLConfig, {**_rl_data(base_model, out, reward_name), "parallel": {"device": "cuda", "dtype": "bf16"}})
    summary = run_rl(cfg, progress=False, ledger_factory=_ledger)
    assert summary["finished"] and summary["steps"] == 2
    _check_run(out, base_model)


def test_r1kit_rl_takes_device_and_dtype_flags(tmp_path, base_model, reward_name):
    from r1kit.cli.main import main

    out = tmp_path / "rl-cli"
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(_rl_data(base_model, out, reward_name)))
    assert main(["rl", "--config", str(recipe), "--device", "cuda", "--dtype", "bf16"]) == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["parallel"]["device"] == "cuda" and config["parallel"]["dtype"] == "bf16"
    _check_run(out, base_model)


def test_greedy_tokens_on_cuda_match_the_cpu(tiny_model, tokenizer):
    task = get_task("arithmetic")
    prompts = make_prompter(task, tokenizer).encode(task.problems("test", 8, seed=0))
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    kw = {"eos_ids": eos_ids(tiny_model, tokenizer), "pad_id": tokenizer.pad_token_id}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides: TF32 rounding could flip a near tie
    try:
        cpu = sample(tiny_model, prompts, params, **kw)
        gpu = sample(copy.deepcopy(tiny_model).to("cuda"), prompts, params, **kw)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert gpu.tokens == cpu.tokens and gpu.finished == cpu.finished


def test_the_ledger_knows_the_gpu(tmp_path):
    ledger = ledger_for(tmp_path, "rl")
    assert ledger.device_kind == gpu_kind(torch.cuda.get_device_name(0))
    assert ledger.device_count == torch.cuda.device_count()
    if ledger.device_kind not in DEVICE_PEAKS:
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no row in DEVICE_PEAKS: MFU is unknown there")
    assert ledger.peak_flops == DEVICE_PEAKS[ledger.device_kind]["bf16"]  # MFU against the bf16 peak
    rec = ledger.record("training", 2.0, flops=ledger.peak_flops)  # half the peak over 2 s, on each device
    assert rec["mfu"] == pytest.approx(0.5 / ledger.device_count)
    assert rec["energy_j"] > 0 and rec["usd"] is not None

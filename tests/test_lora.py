"""LoRA through peft as an option of the training loops (r1kit/models/lora.py): the sampler sees the adapters, a run
trains only the adapters, checkpoints hold the adapter and resume exactly, the final model is the merged one."""

import json

import pytest
import torch
from safetensors.torch import load_file

from r1kit.algo.rl_config import RLConfig
from r1kit.config import build
from r1kit.errors import UserError
from r1kit.loops.rl import run_rl
from r1kit.loops.sft import SFTConfig, run_sft
from r1kit.models.lora import LoraConfig, apply_lora, effective_weight, merged_copy, trainable_parameters
from r1kit.models.modeling import load_model, new_model, save_model
from r1kit.rollout.sampler import SamplingParams, sample

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.slow


def _lora_model(tokenizer, tiny_config, seed=0):
    torch.manual_seed(seed)
    model = apply_lora(new_model(tiny_config, tokenizer, seed=0), LoraConfig(rank=4, alpha=8))
    with torch.no_grad():  # B starts at zero (a no-op adapter): move it so the adapter changes the function
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model


def test_config_is_checked():
    with pytest.raises(UserError):
        LoraConfig(rank=-1)
    assert not LoraConfig().enabled and LoraConfig(rank=8).enabled


def test_only_adapters_train(tokenizer, tiny_config):
    model = _lora_model(tokenizer, tiny_config)
    total = sum(p.numel() for p in model.parameters())
    assert 0 < trainable_parameters(model) < 0.2 * total
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_effective_weight_is_the_adapted_layer(tokenizer, tiny_config):
    model = _lora_model(tokenizer, tiny_config)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    x = torch.randn(3, layer.in_features)
    assert torch.allclose(layer(x), x @ effective_weight(layer).T, atol=1e-5)
    plain = torch.nn.Linear(4, 2)
    assert effective_weight(plain) is plain.weight


def test_sampler_samples_from_the_adapters(tokenizer, tiny_config, torch_threads):
    """Greedy tokens of the LoRA model (fast path, effective weights) equal those of its merged copy and differ
    from the base model's: a sampler that ignored the adapters would fail this."""
    model = _lora_model(tokenizer, tiny_config)
    merged = merged_copy(model)
    base = new_model(tiny_config, tokenizer, seed=0)
    prompts = [tokenizer("12+34").input_ids, tokenizer("7*8=").input_ids]
    args = dict(eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id, return_logprobs=True)
    params = SamplingParams(0.0, 1.0, 10)
    a = sample(model, prompts, params, **args)
    b = sample(merged, prompts, params, **args)
    c = sample(base, prompts, params, **args)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    for la, lb in zip(a.logprobs, b.logprobs):
        assert la == pytest.approx(lb, abs=1e-4)


@pytest.fixture(scope="module")
def spread_reward(tmp_path_factory):
    """A reward that varies with the text (a random model earns no accuracy), importable by name."""
    import sys

    folder = tmp_path_factory.mktemp("lora-user")
    (folder / "r1kit_lora_test_rewards.py").write_text(
        "def spread(problem, completion, score, ctx):\n    return (sum(map(ord, completion)) % 7) / 7\n")
    sys.path.insert(0, str(folder))
    yield
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer, tiny_config):
    path = tmp_path_factory.mktemp("lora-base") / "model"
    save_model(new_model(tiny_config, tokenizer, seed=0), tokenizer, path)
    return path


def _rl_cfg(base_dir, out, **extra):
    data = {"model": str(base_dir), "out": str(out), "task": "arithmetic", "steps": 3, "train_problems": 32,
            "checkpoint_every": 1, "final_eval": False,
            "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 10},
            "algo": {"beta": 0.01}, "optim": {"lr": 1e-2},
            "reward": {"weights": {"accuracy": 1.0, "r1kit_lora_test_rewards:spread": 1.0}},
            "lora": {"rank": 4, "alpha": 8}, **extra}
    return build(RLConfig, data)


def test_rl_with_lora_resumes_exactly_and_saves_the_merged_model(tmp_path, base_dir, spread_reward, torch_threads):
    a = tmp_path / "a"
    run_rl(_rl_cfg(base_dir, a), progress=False)
    ckpt = a / "checkpoints" / "step_000003"
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
    final = a / "model"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    model, _ = load_model(final)  # a plain Hugging Face directory
    assert not hasattr(model, "peft_config")
    init, after = load_file(str(base_dir / "model.safetensors")), load_file(str(final / "model.safetensors"))
    moved = [k for k in init if not torch.equal(init[k], after[k])]
    assert moved and all("proj" in k for k in moved)  # embeddings and norms are frozen under LoRA
    b = tmp_path / "b"
    run_rl(_rl_cfg(base_dir, b), progress=False, stop_after=2)
    run_rl(_rl_cfg(base_dir, b), resume=True, progress=False)
    again = load_file(str(b / "model" / "model.safetensors"))
    assert all(torch.equal(after[k], again[k]) for k in after)
    run = json.loads((a / "run.json").read_text())
    assert run["config"]["lora"]["rank"] == 4


def test_sft_with_lora(tmp_path, base_dir, torch_threads):
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": f"User: {i}+{i}. Assistant:", "completion": f" <think> add </think> <answer>{2 * i}</answer>"}
            for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = build(SFTConfig, {"data": str(data), "out": str(tmp_path / "sft"), "model": str(base_dir), "epochs": 1,
                            "batch_size": 4, "final_eval": False, "lora": {"rank": 2}})
    summary = run_sft(cfg, progress=False)
    assert summary["finished"]
    assert (tmp_path / "sft" / "model" / "model.safetensors").is_file()

"""Prompts computed once per distinct prompt (shared_prompts.py) give the model's own log-probs, entropies and
gradients, on the fast path's architectures (Llama with linear rope scaling, Qwen2 with q/k/v biases, Qwen3 with
q/k norms, Mistral), with LoRA adapters, and through a GRPO update."""

import copy
import random

import pytest
import torch

from r1kit.algo.grpo import UpdateSettings, build_rollout, train_on_rollout
from r1kit.algo.logprobs import completion_logprobs
from r1kit.algo.shared_prompts import can_share_prompts, shared_prompt_logprobs
from test_architectures import arch_config, busy_model

pytestmark = pytest.mark.slow


def _batch(vocab: int, groups: int = 3, group_size: int = 4, seed: int = 0):
    """[left-padded prompt | right-padded completion] rows: `groups` prompts of different lengths, each repeated
    `group_size` times with completions of different lengths."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randrange(3, 12))] for _ in range(groups)]
    rows = [p for p in prompts for _ in range(group_size)]
    completions = [[rng.randrange(3, vocab) for _ in range(rng.randrange(1, 9))] for _ in rows]
    return build_rollout(rows, completions, 0, torch.randn(len(rows), generator=torch.Generator().manual_seed(seed)))


def _both(model, rollout, temperature=0.7):
    width = rollout.completion_len
    ids, attn = rollout.input_ids, rollout.attention_mask
    return (completion_logprobs(model, ids, attn, width, temperature),
            shared_prompt_logprobs(model, ids, attn, width, temperature))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_logprobs_entropy_and_gradients_equal_the_models_own(arch, tokenizer):
    model = busy_model(arch_config(arch, tokenizer), std=0.1).train()
    rollout = _batch(model.config.vocab_size)
    assert can_share_prompts(model, rollout.input_ids.shape[1])
    weights = torch.randn(rollout.completion_mask.shape) * rollout.completion_mask
    grads = []
    (lp_a, ent_a), (lp_b, ent_b) = _both(model, rollout)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(lp_b[mask], lp_a[mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent_b[mask], ent_a[mask], atol=2e-5, rtol=1e-5)
    for fn in (completion_logprobs, shared_prompt_logprobs):
        model.zero_grad()
        lp = fn(model, rollout.input_ids, rollout.attention_mask, rollout.completion_len, 0.7)[0]
        (lp * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=2e-5, rtol=1e-4, msg=name)


def test_lora_adapters_are_included(tokenizer, tiny_config):
    from r1kit.config import LoraConfig
    from r1kit.models.lora import load_for_training
    from r1kit.models.modeling import new_model

    lora = LoraConfig(rank=4, alpha=8, dropout=0.0)
    model, _ = load_for_training(lambda: (new_model(tiny_config, tokenizer, seed=0), tokenizer), None, lora, 0)
    with torch.no_grad():  # adapters that change the output (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert can_share_prompts(model)
    rollout = _batch(model.config.vocab_size)
    (lp_a, _), (lp_b, _) = _both(model, rollout)
    mask = rollout.completion_mask.bool()  # padded positions predict pad tokens, differently: never used
    torch.testing.assert_close(lp_b[mask], lp_a[mask], atol=2e-5, rtol=1e-5)
    dropped = LoraConfig(rank=4, alpha=8, dropout=0.1)
    with_dropout, _ = load_for_training(lambda: (new_model(tiny_config, tokenizer, seed=0), tokenizer), None,
                                        dropped, 0)
    assert not can_share_prompts(with_dropout)  # dropout is drawn by the adapter's own forward


def test_models_it_does_not_cover_take_their_own_forward(tokenizer, tiny_model):
    gemma = busy_model(arch_config("gemma2", tokenizer))
    assert not can_share_prompts(gemma)
    checkpointed = copy.deepcopy(tiny_model)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not can_share_prompts(checkpointed)


def test_grpo_update_is_the_same(tokenizer, tiny_model, monkeypatch):
    """train_on_rollout with prompts shared and without (algo.share_prompts = false): the same loss and the same
    weights; the shared path really ran (it is not the model's own forward)."""
    from r1kit.algo import grpo

    calls = []
    monkeypatch.setattr(grpo, "shared_prompt_logprobs",
                        lambda *a, **k: (calls.append(1), shared_prompt_logprobs(*a, **k))[1])
    rollout = _batch(tiny_model.config.vocab_size, groups=2, group_size=4)
    results = []
    for share in (True, False):
        model = copy.deepcopy(tiny_model)
        settings = UpdateSettings(1.0, "seq_mean", 0.0, 0.2, 0.2, 1, 1, 8, 0.0, skip_zero_advantage=False,
                                  share_prompts=share)
        stats = train_on_rollout(model, torch.optim.SGD(model.parameters(), lr=1.0), copy.deepcopy(rollout),
                                 settings)
        assert bool(calls) == share
        calls.clear()
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (a, pa), (b, pb) = results
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_compiled_forward_gives_the_same_values_and_gradients(tokenizer):
    """The compiled forward/backward (torch.compile, dynamic rows and lengths) against the eager one, on two
    batches of different shapes (one graph serves both)."""
    model = busy_model(arch_config("qwen3", tokenizer), std=0.1).train()
    for seed, groups in ((0, 3), (1, 2), (2, 1)):  # one distinct prompt too (sizes of 1 are specialised)
        rollout = _batch(model.config.vocab_size, groups=groups, seed=seed)
        weights = torch.randn(rollout.completion_mask.shape) * rollout.completion_mask
        out = []
        for compiled in (False, True):
            model.zero_grad()
            lp, ent = shared_prompt_logprobs(model, rollout.input_ids, rollout.attention_mask,
                                             rollout.completion_len, 0.7, compiled=compiled)
            (lp * weights).sum().backward()
            out.append((lp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}))
        mask = rollout.completion_mask.bool()
        torch.testing.assert_close(out[1][0][mask], out[0][0][mask], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out[1][1][mask], out[0][1][mask], atol=2e-5, rtol=1e-5)
        for name, g in out[0][2].items():
            torch.testing.assert_close(out[1][2][name], g, atol=2e-5, rtol=1e-4, msg=name)


def test_training_compiles_on_a_cpu_only_for_narrow_models():
    """`parallel.compile = auto`: the compiled training step pays on GPUs and for narrow models on a CPU; SmolLM2's
    width (576) trained no faster compiled on this CPU after minutes of compilation, so it trains eagerly there."""
    from types import SimpleNamespace

    from r1kit.rollout.fast import CPU_TRAIN_COMPILE_MAX_HIDDEN, training_compile_pays

    narrow = SimpleNamespace(config=SimpleNamespace(hidden_size=192))
    wide = SimpleNamespace(config=SimpleNamespace(hidden_size=576))
    assert CPU_TRAIN_COMPILE_MAX_HIDDEN < 576
    assert training_compile_pays(narrow, torch.device("cpu"))
    assert not training_compile_pays(wide, torch.device("cpu"))
    assert training_compile_pays(wide, torch.device("cuda"))

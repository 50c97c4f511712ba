"""Every common architecture through r1kit: tiny random Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 (text),
Phi-3, GPT-2, GPT-NeoX and OLMo-2 models, built from transformers' config classes and saved to disk like a user's
checkpoint, then (a) greedy sampling equal to transformers' `generate` token for token, with log-probs equal to a
full forward's, and packed training logits equal to each example's own forward; (b) one short in-process run of
every loop: eval, rl, generate, sft (generate + sft is sequence distillation), logit and on-policy distillation.

The configs cover tied (Qwen2, Qwen3, Gemma, GPT-2) and untied (Llama, Mistral, Phi-3, GPT-NeoX, OLMo-2)
embeddings, GQA wherever the architecture has it, linear rope scaling (Llama), partial rotary (GPT-NeoX), absolute
positions (GPT-2), fused q/k/v (Phi-3), q/k norms (Qwen3, OLMo-2), soft-capping (Gemma 2) and a sliding window
shorter than the prompts (Gemma 2/3); more rope scalings, biases and a short Mistral window in the fast-path
variants. Checkpoints carry what users' checkpoints carry: several EOS ids in the generation config
(Llama, as Llama 3 does), a tokenizer without a pad token (GPT-2), bfloat16 weights (Gemma 3).

For the sampler checks the random weights are redrawn larger (std 0.3), as in test_sampler.py: a freshly
initialised model mostly repeats one token, which would make greedy comparisons vacuous. The loops run on freshly
initialised models (transformers' own init): their near-uniform samples differ within a group, so RL has
advantages to learn from (a std-0.3 Gemma, embeddings scaled by sqrt(hidden) and tied, repeats its last token).
"""

import json
import random
from pathlib import Path

import pytest
import torch
import transformers

from r1kit.algo.grpo import build_rollout, rollout_logprobs
from r1kit.algo.rl_config import AlgoConfig, OptimConfig, RewardConfig, RLConfig, RolloutConfig
from r1kit.config import EvalConfig
from r1kit.evaluation.evaluate import evaluate
from r1kit.loops.distill import DistillConfig, run_distill
from r1kit.loops.generate import GenerateConfig, run_generate
from r1kit.loops.rl import run_rl
from r1kit.loops.sft import SFTConfig, run_sft
from r1kit.models.modeling import eos_ids, load_model, save_model
from r1kit.models.packing import Example, collate, packed_logits
from r1kit.rollout.sampler import SamplingParams, left_pad, sample, supports_fast_path
from r1kit.tasks import get_task
from r1kit.tasks.arithmetic import ArithmeticTask

pytestmark = pytest.mark.slow

NEVER = [-1]  # an EOS id no model emits
TEXTS = ["User: 12+7. Reason", "User: 345*6. Reason in <think> </think>, answer", "User: 9+9", "<think> 4+4=8 </think>"]
_SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=256)
_GQA = dict(num_key_value_heads=2, head_dim=16)
_GEMMA = dict(_GQA, sliding_window=8, query_pre_attn_scalar=16)  # the window is shorter than the prompts

# name -> (config class, fields, tied embeddings?)
ARCHS: dict[str, tuple[str, dict, bool]] = {
    "llama": ("LlamaConfig", dict(_SHAPE, **_GQA, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                    "rope_theta": 10000.0}), False),
    "qwen2": ("Qwen2Config", dict(_SHAPE, num_key_value_heads=2), True),
    "qwen3": ("Qwen3Config", dict(_SHAPE, **_GQA), True),
    "mistral": ("MistralConfig", dict(_SHAPE, **_GQA, sliding_window=4096), False),  # Mistral 7B v0.1's window
    "gemma2": ("Gemma2Config", dict(_SHAPE, **_GEMMA), True),
    "gemma3": ("Gemma3TextConfig", dict(_SHAPE, **_GEMMA), True),
    "phi3": ("Phi3Config", dict(_SHAPE, num_key_value_heads=2), False),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=256), True),
    "gpt_neox": ("GPTNeoXConfig", dict(_SHAPE), False),
    "olmo2": ("Olmo2Config", dict(_SHAPE, num_key_value_heads=2), False),
}
FAST = {"llama", "qwen2", "qwen3", "mistral"}  # sampled through the sampler's fast path
EOS_LIST, NO_PAD, BF16 = "llama", "gpt2", "gemma3"


def arch_config(name: str, tokenizer):
    """A tiny config of architecture `name` on `tokenizer` (vocabulary rounded up to a multiple of 64)."""
    cls, fields, tied = ARCHS[name]
    vocab = -(-len(tokenizer) // 64) * 64
    return getattr(transformers, cls)(**fields, vocab_size=vocab, tie_word_embeddings=tied, bos_token_id=None,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def busy_model(config, seed: int = 0, std: float = 0.3):
    """A model of `config` whose matrices are redrawn with `std` (0: transformers' init), seeded, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            if w.ndim == 2 and std:
                w.copy_(torch.randn(w.shape, generator=gen) * std)
    return model.eval()


def _greedy(model, prompts, eos, pad_id, max_new_tokens=12, **kw):
    return sample(model, prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens), eos_ids=eos,
                  pad_id=pad_id, return_logprobs=True, **kw)


def _second_eos(model, tokenizer, prompts) -> int:
    """A token that one row emits first at step >= 2 and the other rows never: as an extra EOS it stops one row
    mid-way and no other."""
    free = _greedy(model, prompts, NEVER, tokenizer.pad_token_id).tokens
    for r, row in enumerate(free):
        others = {x for i, o in enumerate(free) if i != r for x in o}
        for t in range(2, len(row) - 2):
            if row[t] not in row[:t] and row[t] not in others:
                return row[t]
    raise AssertionError(f"no row has a token of its own in {free}")


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(t).input_ids for t in TEXTS]


@pytest.fixture(scope="module")
def arch_dir(tmp_path_factory, tokenizer, prompts, torch_threads):
    """(name, busy) -> a saved checkpoint of that architecture, std-0.3 weights or freshly initialised ones (built
    once per module, on first use)."""
    cache: dict[tuple[str, bool], Path] = {}

    def get(name: str, busy: bool = True) -> Path:
        if (name, busy) not in cache:
            tok = tokenizer
            if name == NO_PAD:
                tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                                           eos_token=tokenizer.eos_token)
                assert tok.pad_token is None
            model = busy_model(arch_config(name, tok), std=0.3 if busy else 0)
            model.generation_config.eos_token_id = tok.eos_token_id
            if name == EOS_LIST:  # Llama 3's generation config ends at <|end_of_text|> or <|eot_id|>
                model.generation_config.eos_token_id = [tok.eos_token_id, _second_eos(model, tokenizer, prompts)]
            if name == BF16:
                model = model.to(torch.bfloat16)
            cache[name, busy] = save_model(model, tok, tmp_path_factory.mktemp(name) / "model")
        return cache[name, busy]

    return get


# -- (a) the sampler equals transformers' generate --------------------------------------------------------------


def _generate(model, prompts, eos: list[int], pad_id: int, max_new_tokens=12) -> tuple[list[list[int]], list[bool]]:
    """transformers' greedy `generate` on the left-padded batch: each row's tokens up to its first EOS."""
    ids, mask = left_pad(prompts, pad_id)  # (B, P)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad_id)
    rows, finished = [], []
    for row in out[:, ids.shape[1]:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        rows.append(row if stop is None else row[: stop + 1])
        finished.append(stop is not None)
    return rows, finished


def _assert_forward_logprobs(model, prompts, out, atol: float) -> None:
    """The sampler's log-probs are a full forward's log-softmax on each unpadded row."""
    for prompt, toks, lps in zip(prompts, out.tokens, out.logprobs):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + toks])).logits[0].float()  # (L, V)
        at = torch.arange(len(prompt) - 1, len(prompt) + len(toks) - 1)
        expected = logits[at].log_softmax(-1).gather(-1, torch.tensor(toks)[:, None])[:, 0]  # (len(toks),)
        torch.testing.assert_close(torch.tensor(lps), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_greedy_sampling_equals_generate(name, arch_dir, prompts):
    model, tok = load_model(arch_dir(name))
    assert next(model.parameters()).dtype == torch.float32  # whatever the checkpoint's dtype
    assert supports_fast_path(model, max_len=64) == (name in FAST)
    eos = eos_ids(model, tok)
    assert eos == sorted(set(model.generation_config.eos_token_id) if name == EOS_LIST else [tok.eos_token_id])
    expected, expected_fin = _generate(model, prompts, eos, tok.pad_token_id)
    out = _greedy(model, prompts, eos, tok.pad_token_id)
    assert out.tokens == expected and out.finished == expected_fin
    assert len({tuple(t) for t in out.tokens}) == len(prompts)  # the rows really differ
    if name == EOS_LIST:  # the generation config's second EOS stopped one row early, and only one
        assert sum(out.finished) == 1 and min(map(len, out.tokens)) < 12
    if name in FAST:
        assert _greedy(model, prompts, eos, tok.pad_token_id, fast=False).tokens == out.tokens
    _assert_forward_logprobs(model, prompts, out, atol=1e-4)


@pytest.mark.parametrize("name", ARCHS)
def test_sampler_logprobs_are_the_training_logprobs(name, arch_dir, prompts):
    """GRPO's old log-probs come from the sampler: they equal what the update's forward pass computes on the
    rollout's [left-padded prompt | right-padded completion] layout, so the first ratio is exactly 1."""
    model, tok = load_model(arch_dir(name))
    gen = torch.Generator().manual_seed(0)
    out = sample(model, prompts, SamplingParams(temperature=1.0, max_new_tokens=8), eos_ids=eos_ids(model, tok),
                 pad_id=tok.pad_token_id, generator=gen, return_logprobs=True)
    rollout = build_rollout(prompts, out.tokens, tok.pad_token_id, torch.zeros(len(prompts)))
    old = torch.zeros(rollout.completion_mask.shape)  # (B, T)
    for i, lps in enumerate(out.logprobs):
        old[i, : len(lps)] = torch.tensor(lps)
    trained = rollout_logprobs(model, rollout, temperature=1.0)  # (B, T)
    torch.testing.assert_close(trained * rollout.completion_mask, old, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_packed_logits_equal_each_example_alone(name, arch_dir, prompts):
    """Training sees what inference sees: packed rows (sft, distill) give each example's own logits, sliding
    windows included."""
    model, tok = load_model(arch_dir(name))
    seqs = [p + t for p, t in zip(prompts, _greedy(model, prompts, NEVER, tok.pad_token_id).tokens)]
    bins = [[0, 1], [2, 3]]
    batch = collate([Example(s, 1) for s in seqs], bins, tok.pad_token_id)
    with torch.no_grad():
        packed = packed_logits(model, batch)  # (2, T, V)
        for r, b in enumerate(bins):
            at = 0
            for i in b:
                alone = model(input_ids=torch.tensor([seqs[i]])).logits[0]  # (L, V)
                torch.testing.assert_close(packed[r, at: at + len(seqs[i])], alone, atol=1e-4, rtol=0)
                at += len(seqs[i])


@pytest.mark.parametrize("name", ARCHS)
def test_checkpoint_round_trip_keeps_ties_and_pad(name, arch_dir, tokenizer):
    model, tok = load_model(arch_dir(name))
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == ARCHS[name][2]
    assert tok.pad_token_id is not None and tok.padding_side == "left"
    if name == NO_PAD:  # no pad token in the checkpoint: EOS pads (the attention mask hides it)
        assert tok.pad_token_id == tok.eos_token_id
    reference = busy_model(arch_config(name, tokenizer))
    if name == BF16:  # the checkpoint's weights, exactly, in float32
        with torch.no_grad():
            for w in reference.parameters():
                w.copy_(w.to(torch.bfloat16))
    ids = torch.tensor([tokenizer(TEXTS[1]).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_bfloat16_models_sample(name, arch_dir, prompts):
    """A model loaded in bfloat16 (load_model(dtype=...)) samples through either path. Its log-probs are the bf16
    forward's up to bf16 rounding: the fast path folds the attention scale into its weights, so not bit for bit
    (logits of these std-0.3 models reach ~30, where one bf16 step is ~0.1)."""
    model, tok = load_model(arch_dir(name), dtype="auto" if name == BF16 else torch.bfloat16)  # auto: as saved
    assert next(model.parameters()).dtype == torch.bfloat16
    out = _greedy(model, prompts, NEVER, tok.pad_token_id, max_new_tokens=6)
    assert [len(t) for t in out.tokens] == [6] * len(prompts)
    _assert_forward_logprobs(model, prompts, out, atol=0.25)
    if name not in FAST:  # the generic path is the model's own forward: greedy is generate's
        assert out.tokens == _generate(model, prompts, NEVER, tok.pad_token_id, max_new_tokens=6)[0]


_ROPE = {"rope_theta": 10000.0}
VARIANTS = {  # name -> (config, does the fast path take a batch of 24 prompt + 12 new tokens?)
    "llama3-rope": (dict(rope_parameters={**_ROPE, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}), True),
    "yarn-rope": (dict(rope_parameters={**_ROPE, "rope_type": "yarn", "factor": 4.0,
                                        "original_max_position_embeddings": 64}), True),
    "dynamic-rope": (dict(rope_parameters={**_ROPE, "rope_type": "dynamic", "factor": 2.0}), False),
    "mlp-bias": (dict(mlp_bias=True, attention_bias=True), False),  # the fast path has no MLP biases
    "window-6": (dict(sliding_window=6), False),  # Mistral: the fast path would attend past the window
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_variants_equal_generate(variant, tokenizer, prompts):
    """Rope scalings, biases and a sliding window shorter than the batch: the fast path where it is exact, the
    generic one elsewhere, and greedy equal to generate either way."""
    fields, fast = VARIANTS[variant]
    cls = transformers.MistralConfig if "window" in variant else transformers.LlamaConfig
    model = busy_model(cls(**{**ARCHS["llama"][1], **fields}, vocab_size=384, pad_token_id=tokenizer.pad_token_id))
    with torch.no_grad():
        for name, b in model.named_parameters():
            if name.endswith("bias"):
                b.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    width = max(map(len, prompts)) + 12
    assert supports_fast_path(model, max_len=width) == fast
    expected, _ = _generate(model, prompts, NEVER, tokenizer.pad_token_id)
    assert _greedy(model, prompts, NEVER, tokenizer.pad_token_id).tokens == expected
    if "window" in variant:  # a window that covers the whole batch allows the fast path
        assert supports_fast_path(model, max_len=6) and not supports_fast_path(model, max_len=7)


# -- (b) every loop on every architecture -----------------------------------------------------------------------


def spread(problem, completion, score, ctx):
    """An RL reward that varies with the text, so groups of a random model have advantages to learn from."""
    return (sum(map(ord, completion)) % 7) / 7


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer):
    """A different tiny model on the same tokenizer: the distillation teacher of every architecture."""
    model = busy_model(arch_config("llama", tokenizer), seed=1)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("teacher") / "model")


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """12 rows as r1kit generate writes them (a random teacher gets nothing right, so they are worked answers)."""
    task, rng = ArithmeticTask(), random.Random(0)
    path = tmp_path_factory.mktemp("data") / "traces.jsonl"
    rows = [{"id": p.id, "question": p.question, "prompt": task.prompt(p), "completion": " " + task.solution(p, rng),
             "provenance": {"task": "arithmetic"}} for p in task.problems("train", 12, seed=0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _moved(before: Path, after: Path) -> bool:
    a, _ = load_model(before)
    b, _ = load_model(after)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.isfinite(v).all() for v in sb.values())
    return any(not torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ARCHS)
def test_evaluate(name, arch_dir):
    model, tok = load_model(arch_dir(name, busy=False))
    result = evaluate(model, tok, get_task("arithmetic"), EvalConfig(n=4, k=2, max_new_tokens=8), progress=False)
    m = result["metrics"]
    assert m["problems"] == 4 and m["samples"] == 8 and 0 < m["mean_completion_tokens"] <= 8


@pytest.mark.parametrize("name", ARCHS)
def test_rl(name, arch_dir, tmp_path):
    cfg = RLConfig(model=str(arch_dir(name, busy=False)), out=str(tmp_path / "rl"), steps=2, train_problems=16,
                   checkpoint_every=2, final_eval=False,
                   rollout=RolloutConfig(prompts_per_step=2, group_size=2, max_new_tokens=8),
                   algo=AlgoConfig(beta=0.01, mini_batches=2),  # old log-probs from the sampler, a reference
                   optim=OptimConfig(lr=1e-3),
                   reward=RewardConfig(weights={"format": 1.0, f"{__name__}:spread": 1.0}))
    summary = run_rl(cfg, progress=False)
    assert summary["finished"] and summary["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["skipped_updates"] == 0 and r["completions_sampled"] == 4 for r in rows)
    assert _moved(arch_dir(name, busy=False), tmp_path / "rl" / "model")


@pytest.mark.parametrize("name", ARCHS)
def test_generate_then_sft(name, arch_dir, traces, tmp_path):
    """Sequence distillation: generate traces with the model as teacher, SFT the model as student."""
    out = tmp_path / "gen.jsonl"
    gen = run_generate(GenerateConfig(model=str(arch_dir(name, busy=False)), n=3, k=2, max_new_tokens=8, out=str(out)),
                       progress=False)
    assert gen["finished"] and gen["sampled"] == 6 and out.is_file()
    cfg = SFTConfig(data=str(traces), out=str(tmp_path / "sft"), model=str(arch_dir(name, busy=False)), epochs=1,
                    batch_size=6, max_len=96, lr=1e-3, final_eval=False)
    summary = run_sft(cfg, progress=False)
    assert summary["finished"] and summary["steps"] == 2
    assert _moved(arch_dir(name, busy=False), tmp_path / "sft" / "model")


@pytest.mark.parametrize("method", ["logit", "on-policy"])
@pytest.mark.parametrize("name", ARCHS)
def test_distill(name, method, arch_dir, teacher_dir, traces, tmp_path):
    cfg = DistillConfig(teacher=str(teacher_dir), student=str(arch_dir(name, busy=False)), method=method,
                        out=str(tmp_path / "d"), data=str(traces) if method == "logit" else "", epochs=1,
                        steps=2, batch_size=6 if method == "logit" else 4, samples_per_prompt=2,
                        max_new_tokens=8, train_problems=16, max_len=96, lr=1e-3, final_eval=False)
    summary = run_distill(cfg, progress=False)
    assert summary["finished"] and summary["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kl"] > 0 and not r["skipped_update"] for r in rows)
    assert _moved(arch_dir(name, busy=False), tmp_path / "d" / "model")

"""The sampler: token choice by hand-made distributions (milliseconds), then both decoding paths on a tiny Llama.

A freshly initialised tied-embedding model mostly repeats its last token, which makes greedy checks vacuous, so the
model tests use `busy_model`: a copy of the fixture model whose matrices are redrawn larger, so its greedy outputs
vary from step to step and from row to row.
"""

import copy

import pytest
import torch

from r1kit.rollout import sampler
from r1kit.rollout.sampler import Samples, SamplingParams, choose_tokens, left_pad, sample, supports_fast_path

NEVER = [-1]  # an EOS id no model emits: every row runs to max_new_tokens and none is dropped

# -- choose_tokens and left_pad (no model) --------------------------------------------------------------


def _logits(probs: list[float], rows: int) -> torch.Tensor:
    return torch.tensor(probs).log().expand(rows, -1).clone()  # (rows, V)


def test_temperature_zero_is_argmax():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=0.0)
    assert torch.equal(choose_tokens(logits, params, None), logits.argmax(-1))


def test_tiny_top_p_always_picks_the_argmax():
    logits = torch.randn(2000, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, top_p=1e-6)
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(choose_tokens(logits, params, gen), logits.argmax(-1))


@pytest.mark.parametrize(
    "probs, allowed",
    [
        ([0.5, 0.3, 0.15, 0.05], {0, 1}),  # 0.5 < 0.7, 0.5 + 0.3 reaches it
        ([0.15, 0.5, 0.05, 0.3], {1, 3}),  # the same distribution, shuffled: top-p sorts
        ([0.05, 0.15, 0.3, 0.5], {3, 2}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(probs, allowed):
    params = SamplingParams(temperature=1.0, top_p=0.7)
    draws = choose_tokens(_logits(probs, 4000), params, torch.Generator().manual_seed(0))  # (4000,)
    seen = set(draws.tolist())
    assert seen == allowed
    top = max(allowed, key=lambda i: probs[i])
    share = (draws == top).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.03  # renormalised over the kept set


def test_top_p_keeps_the_top_token_even_when_it_alone_exceeds_p():
    params = SamplingParams(temperature=1.0, top_p=0.3)
    draws = choose_tokens(_logits([0.1, 0.9], 500), params, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1}


def test_top_p_one_and_temperature_keep_every_token():
    params = SamplingParams(temperature=1.0, top_p=1.0)
    draws = choose_tokens(_logits([0.5, 0.3, 0.15, 0.05], 4000), params, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).float() / 4000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    hot = SamplingParams(temperature=2.0)  # flatter: p ** (1/2), renormalised
    draws = choose_tokens(_logits([0.64, 0.36], 4000), hot, torch.Generator().manual_seed(0))
    assert abs((draws == 0).float().mean().item() - 0.8 / 1.4) < 0.03


def test_choose_tokens_is_seeded():
    logits = torch.randn(256, 30, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, top_p=0.9)
    a = choose_tokens(logits, params, torch.Generator().manual_seed(5))
    assert torch.equal(a, choose_tokens(logits, params, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, choose_tokens(logits, params, torch.Generator().manual_seed(6)))


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4], [5, 6]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4], [0, 5, 6]]
    assert mask.tolist() == [[True, True, True], [False, False, True], [False, True, True]]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


@pytest.mark.parametrize("kw", [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": 0}])
def test_sampling_params_are_validated(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


# -- both decoding paths on a tiny model ----------------------------------------------------------------

PATHS = [pytest.param(True, id="fast"), pytest.param(False, id="generic")]
# the fast path with its decoding step compiled (a graph per batch bucket and cache length: a few seconds each)
WITH_COMPILED = [*PATHS, pytest.param("compiled", id="compiled")]
TEXTS = [
    "User: 12+7. Reason",
    "User: 345*6. Reason in <think> </think>, answer",
    "User: 9+9",
    "<think> 4+4=8 </think> <answer>",
    "User: 80*12.",
]


@pytest.fixture(scope="module")
def busy_model(tiny_model):
    model = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            if w.ndim == 2:
                w.copy_(torch.randn(w.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    out = [tokenizer(t).input_ids for t in TEXTS]
    assert len({len(p) for p in out}) >= 4  # rows are padded differently
    return out


def _run(model, tokenizer, prompts, fast, eos=NEVER, seed=None, **params):
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return sample(
        model,
        prompts,
        SamplingParams(**params),
        eos_ids=eos,
        pad_id=tokenizer.pad_token_id,
        generator=gen,
        fast=bool(fast),
        compile=fast == "compiled",
        return_logprobs=True,
    )


def _reference_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's own forward on a left-padded batch; logits of the last position (B, V)."""
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions)
    return out.logits[:, -1].float()


def test_fast_path_is_chosen_for_llama(tiny_model):
    assert supports_fast_path(tiny_model)


# A chat template's system prompt: every prompt starts with the same tokens, which the fast path prefills once.
SYSTEM = "System: you are a careful calculator who writes every step. "


@pytest.mark.parametrize("shared", [pytest.param(False, id="distinct"), pytest.param(True, id="prefix+groups")])
@pytest.mark.parametrize("fast", WITH_COMPILED)
def test_next_token_logits_match_the_models_forward(busy_model, tokenizer, prompts, fast, shared, monkeypatch):
    seen: list[torch.Tensor] = []
    pick = sampler._pick

    def spy(logits, *args):
        seen.append(logits.clone())
        return pick(logits, *args)

    if shared:  # a common prefix of >= MIN_SHARED_PREFIX tokens, and repeated prompts (GRPO groups)
        prompts = [tokenizer(SYSTEM + t).input_ids for t in TEXTS for _ in range(2)][:-1]
        assert sampler._common_prefix([tuple(p) for p in prompts]) >= sampler.MIN_SHARED_PREFIX
    monkeypatch.setattr(sampler, "_pick", spy)
    out = _run(busy_model, tokenizer, prompts, fast, temperature=0.0, max_new_tokens=5)
    assert len(seen) == 5
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)  # (B, P)
    generated = torch.tensor(out.tokens)  # (B, 5)
    for t, logits in enumerate(seen):  # prefill, then each decoding step
        full_ids = torch.cat([ids, generated[:, :t]], -1)  # (B, P + t)
        full_mask = torch.cat([mask, torch.ones_like(generated[:, :t], dtype=torch.bool)], -1)
        expected = _reference_logits(busy_model, full_ids, full_mask)  # (B, V)
        # rows past len(prompts) are fillers (a compiled step has at least two rows)
        torch.testing.assert_close(logits[: len(prompts)], expected, atol=1e-4, rtol=0, msg=f"step {t}")


def test_fast_and_generic_paths_agree_greedily(busy_model, tokenizer, prompts):
    fast = _run(
        busy_model, tokenizer, prompts, True, eos=[tokenizer.eos_token_id], temperature=0.0, max_new_tokens=16
    )
    generic = _run(
        busy_model,
        tokenizer,
        prompts,
        False,
        eos=[tokenizer.eos_token_id],
        temperature=0.0,
        max_new_tokens=16,
    )
    assert fast.tokens == generic.tokens
    assert fast.finished == generic.finished
    assert len({tuple(t) for t in fast.tokens}) == len(prompts)  # the rows really differ
    assert any(len(set(t)) > 3 for t in fast.tokens)  # and are not one token repeated


@pytest.mark.parametrize("fast", PATHS)
def test_greedy_is_deterministic(busy_model, tokenizer, prompts, fast):
    a = _run(busy_model, tokenizer, prompts, fast, temperature=0.0, max_new_tokens=8)
    b = _run(busy_model, tokenizer, prompts, fast, seed=123, temperature=0.0, max_new_tokens=8)
    assert a.tokens == b.tokens


@pytest.mark.parametrize("fast", WITH_COMPILED)
def test_same_seed_same_output(busy_model, tokenizer, prompts, fast):
    kw = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 10}
    a = _run(busy_model, tokenizer, prompts, fast, seed=0, **kw)
    b = _run(busy_model, tokenizer, prompts, fast, seed=0, **kw)
    c = _run(busy_model, tokenizer, prompts, fast, seed=1, **kw)
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    assert a.tokens != c.tokens


@pytest.mark.parametrize("fast", PATHS)
def test_max_new_tokens_is_respected(busy_model, tokenizer, prompts, fast):
    out = _run(busy_model, tokenizer, prompts, fast, seed=0, temperature=1.0, max_new_tokens=7)
    assert [len(t) for t in out.tokens] == [7] * len(prompts)
    assert out.finished == [False] * len(prompts)
    assert out.num_tokens == 7 * len(prompts)
    eos = tokenizer.eos_token_id
    out = _run(busy_model, tokenizer, prompts, fast, eos=[eos], seed=0, temperature=1.0, max_new_tokens=3)
    for toks, fin in zip(out.tokens, out.finished):
        assert 1 <= len(toks) <= 3
        assert fin == (toks[-1] == eos) and eos not in toks[:-1]


def _pick_stop(tokens: list[list[int]]) -> tuple[int, int, int]:
    """(row, step, token): a token that row emits first at `step` >= 2 and no other row emits at all."""
    for r, row in enumerate(tokens):
        others = {x for i, o in enumerate(tokens) if i != r for x in o}
        for t in range(2, len(row) - 2):
            if row[t] not in row[:t] and row[t] not in others:
                return r, t, row[t]
    raise AssertionError(f"no row has a token of its own in {tokens}")


@pytest.mark.parametrize("fast", WITH_COMPILED)
def test_eos_stops_its_row_only(busy_model, tokenizer, prompts, fast):
    free = _run(busy_model, tokenizer, prompts, fast, temperature=0.0, max_new_tokens=12)
    row, step, stop = _pick_stop(free.tokens)
    out = _run(busy_model, tokenizer, prompts, fast, eos=[stop], temperature=0.0, max_new_tokens=12)
    assert out.tokens[row] == free.tokens[row][: step + 1]  # the EOS is included
    assert out.finished[row]
    assert len(out.logprobs[row]) == step + 1
    for r in range(len(prompts)):
        if r != row:  # neighbours carry on as if nothing happened
            assert out.tokens[r] == free.tokens[r] and not out.finished[r]
            assert out.logprobs[r] == pytest.approx(free.logprobs[r], abs=1e-5)


@pytest.mark.parametrize("fast", PATHS)
def test_all_rows_stopping_ends_the_batch(busy_model, tokenizer, prompts, fast):
    free = _run(busy_model, tokenizer, prompts, fast, temperature=0.0, max_new_tokens=4)
    firsts = sorted({t[0] for t in free.tokens})
    out = _run(busy_model, tokenizer, prompts, fast, eos=firsts, temperature=0.0, max_new_tokens=4)
    assert out.tokens == [t[:1] for t in free.tokens]
    assert all(out.finished)


@pytest.mark.parametrize("fast", WITH_COMPILED)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_logprobs_match_the_models_forward(busy_model, tokenizer, prompts, fast, temperature):
    out = _run(
        busy_model,
        tokenizer,
        prompts,
        fast,
        eos=[tokenizer.eos_token_id],
        seed=0,
        temperature=temperature,
        top_p=0.9,
        max_new_tokens=8,
    )
    for prompt, toks, lps in zip(prompts, out.tokens, out.logprobs):
        assert len(lps) == len(toks)
        assert all(lp <= 0 for lp in lps)
        seq = torch.tensor([prompt + toks])  # (1, L): unpadded, so default positions are right
        with torch.no_grad():
            logits = busy_model(input_ids=seq).logits[0].float()  # (L, V)
        at = torch.arange(len(prompt) - 1, len(prompt) + len(toks) - 1)
        expected = (logits[at] / temperature).log_softmax(-1).gather(-1, torch.tensor(toks)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lps), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fast", WITH_COMPILED)
def test_identical_prompts_sample_like_single_ones(busy_model, tokenizer, prompts, fast):
    """A group of identical prompts is prefilled once: each row still samples its own completion, and greedy rows
    equal what the prompt alone gives."""
    group = [prompts[1]] * 6 + [prompts[3]] * 2
    greedy = _run(busy_model, tokenizer, group, fast, temperature=0.0, max_new_tokens=8)
    alone = _run(busy_model, tokenizer, [prompts[1], prompts[3]], fast, temperature=0.0, max_new_tokens=8)
    assert greedy.tokens == [alone.tokens[0]] * 6 + [alone.tokens[1]] * 2
    hot = _run(busy_model, tokenizer, group, fast, seed=0, temperature=1.0, max_new_tokens=8)
    assert len({tuple(t) for t in hot.tokens[:6]}) > 1  # the group's rows draw different completions


def test_logprobs_are_optional_and_mode_is_restored(busy_model, tokenizer, prompts):
    busy_model.train()
    try:
        out = sample(busy_model, prompts, SamplingParams(max_new_tokens=2), eos_ids=NEVER, pad_id=0)
        assert busy_model.training
    finally:
        busy_model.eval()
    assert out.logprobs is None and len(out.tokens) == len(prompts)


def test_empty_inputs(busy_model):
    params = SamplingParams(max_new_tokens=2)
    assert sample(busy_model, [], params, eos_ids=NEVER, pad_id=0) == Samples([], [], None)
    with pytest.raises(ValueError):
        sample(busy_model, [[5], []], params, eos_ids=NEVER, pad_id=0)


@pytest.mark.parametrize("probs, top_p", [([0.5, 0.3, 0.15, 0.05], 0.7), ([0.15, 0.5, 0.05, 0.3], 0.7),
                                           ([0.05, 0.15, 0.3, 0.5], 0.95), ([0.5, 0.3, 0.15, 0.05], 1.0)])
def test_compiled_token_choice_samples_the_nucleus(probs, top_p):
    """The compiled token choice (CDF inversion + nucleus test, no sorting) draws from the renormalised nucleus,
    like choose_tokens, and returns log-probs of the temperature-scaled distribution."""
    params = SamplingParams(temperature=1.0, top_p=top_p)
    logits = _logits(probs, 6000)
    tok, lp = sampler._pick(logits, params, torch.Generator().manual_seed(0), True, True)
    p = torch.tensor(probs)
    order = p.argsort(descending=True)
    keep = torch.zeros(4, dtype=torch.bool)
    keep[order] = p[order].cumsum(0) - p[order] <= top_p
    expected = torch.where(keep, p, 0) / p[keep].sum()
    counts = torch.bincount(tok, minlength=4).float() / len(tok)
    assert torch.allclose(counts, expected, atol=0.02), (counts, expected)
    torch.testing.assert_close(lp, p.log()[tok], atol=1e-5, rtol=1e-5)

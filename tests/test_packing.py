"""Supervised examples as tensors (packing.py, sft.py): completion-only loss checked against a hand-computed NLL
on the unpacked example, packed rows computing exactly what each example computes alone (sdpa and eager
attention, with a negative control that shows the comparison can fail), and first-fit packing's bookkeeping.
One micro model, forward passes of a few dozen tokens: a few seconds."""

import random

import pytest
import torch

from r1kit.algo.losses import masked_mean
from r1kit.algo.sft import optimizer_step, packed_batches, sft_token_loss
from r1kit.models.modeling import new_model
from r1kit.models.packing import IGNORE, Example, collate, encode_example, pack, packed_logits
from r1kit.tasks.arithmetic import ArithmeticTask


@pytest.fixture(scope="module")
def micro(tokenizer):
    """A fresh micro Llama in eval mode (sdpa attention); tests that switch attention switch it back."""
    model = new_model("micro", tokenizer, seed=0)
    model.eval()
    return model


@pytest.fixture(scope="module")
def examples(tokenizer) -> list[Example]:
    """Three arithmetic (prompt, worked solution) examples of different lengths."""
    task = ArithmeticTask()
    rng = random.Random(0)
    problems = task.problems("train", 3, seed=0)
    exs = [encode_example(tokenizer, task.prompt(p), " " + task.solution(p, rng), max_len=200) for p in problems]
    assert len({len(e.ids) for e in exs}) > 1  # different lengths, so offsets inside a row matter
    return exs


def _alone_logits(model, ex: Example) -> torch.Tensor:
    """Logits (T, V) of one example run by itself with the model's own (causal) forward."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ex.ids])).logits[0]


def _hand_completion_nll(model, ex: Example) -> tuple[float, int]:
    """Σ -log p(token) over the example's completion tokens (EOS included), from the unpacked forward; and their
    count. Position t predicts token t+1, so the first completion token is predicted at n_prompt - 1."""
    logp = _alone_logits(model, ex).log_softmax(-1)  # (T, V)
    total = 0.0
    for t in range(ex.n_prompt, len(ex.ids)):
        total -= float(logp[t - 1, ex.ids[t]])
    return total, len(ex.ids) - ex.n_prompt


def _row_spans(batch, row: int) -> list[tuple[int, int]]:
    """(start, end) of each example within a packed row, from its segment numbers."""
    seg = batch.segments[row].tolist()
    spans = []
    for s in sorted({v for v in seg if v >= 0}):
        where = [i for i, v in enumerate(seg) if v == s]
        spans.append((where[0], where[-1] + 1))
    return spans


# -- (a) completion-only loss ---------------------------------------------------------------------------------


def test_encode_example_labels_only_the_completion(tokenizer):
    ex = encode_example(tokenizer, "User: 2+3. Assistant:", " <think>2+3=5</think> <answer>5</answer>", 100)
    prompt_ids = tokenizer("User: 2+3. Assistant:").input_ids  # as the sampler sees it (special tokens too)
    completion_ids = tokenizer(" <think>2+3=5</think> <answer>5</answer>", add_special_tokens=False).input_ids
    assert ex.n_prompt == len(prompt_ids) and ex.ids[: ex.n_prompt] == prompt_ids
    assert ex.ids[ex.n_prompt: -1] == completion_ids
    assert ex.ids[-1] == tokenizer.eos_token_id  # EOS appended, and it carries loss
    labels = ex.labels()
    assert labels[: ex.n_prompt] == [IGNORE] * ex.n_prompt
    assert labels[ex.n_prompt:] == ex.ids[ex.n_prompt:]
    # cut to max_len: inside the prompt, nothing carries loss
    short = encode_example(tokenizer, "User: 2+3. Assistant:", " <answer>5</answer>", 3)
    assert len(short.ids) == 3 and short.n_prompt == 3 and short.labels() == [IGNORE] * 3


def test_sft_loss_is_mean_nll_over_completion_tokens_only(micro, examples, tokenizer):
    """The loss of one step equals Σ NLL over completion tokens / their count, each computed by hand from the
    unpacked example's plain forward: prompt tokens contribute nothing, and every example's tokens count once."""
    hand = [_hand_completion_nll(micro, ex) for ex in examples]
    expected = sum(s for s, _ in hand) / sum(n for _, n in hand)

    for packing in (False, True):
        batches = packed_batches(examples, [0, 1, 2], 512, packing, tokenizer.pad_token_id, max_tokens=10_000)
        assert len(batches[0].input_ids) == (1 if packing else 3)
        assert sum(b.loss_tokens for b in batches) == sum(n for _, n in hand)
        with torch.no_grad():
            per_token = [sft_token_loss(micro, b) for b in batches]
        got = sum(float((p * b.target_mask()).sum()) for p, b in zip(per_token, batches)) / sum(n for _, n in hand)
        assert got == pytest.approx(expected, rel=1e-5)

    # one example: masked_mean of the per-token losses is that example's completion NLL mean
    single = collate(examples, [[1]], tokenizer.pad_token_id)
    with torch.no_grad():
        value = masked_mean(sft_token_loss(micro, single), single.target_mask())
    assert float(value) == pytest.approx(hand[1][0] / hand[1][1], rel=1e-5)
    # and the mask is exactly the completion span: positions n_prompt-1 .. len-2 predict completion tokens
    ex = examples[1]
    mask = single.target_mask()[0].tolist()
    assert mask == [False] * (ex.n_prompt - 1) + [True] * (len(ex.ids) - ex.n_prompt)


def test_prompt_tokens_carry_no_gradient(micro, examples, tokenizer):
    """Scaling the per-token loss at prompt positions by 1000 changes neither the step's loss nor any gradient:
    optimizer_step only ever sees completion tokens. (Control: scaling completion positions does change them.)"""
    batches = packed_batches(examples, [0, 1, 2], 512, True, tokenizer.pad_token_id, max_tokens=10_000)
    batch = batches[0]
    prompt_pos = (batch.labels[:, 1:] == IGNORE) & (batch.segments[:, 1:] >= 0)  # (B, T-1) targets in a prompt
    completion_pos = batch.target_mask()
    assert prompt_pos.any() and completion_pos.any()

    def run(scale_where):
        def loss_fn(model, b):
            per_token = sft_token_loss(model, b)
            return per_token * (1 + 999 * scale_where.float())

        opt = torch.optim.SGD(micro.parameters(), lr=0.0)  # lr 0: the weights stay as they are
        stats = optimizer_step(micro, opt, batches, loss_fn, grad_clip=1e9)
        grads = {n: p.grad.clone() for n, p in micro.named_parameters() if p.grad is not None}
        micro.zero_grad(set_to_none=True)
        return stats, grads

    base, base_grads = run(torch.zeros_like(prompt_pos))
    scaled, scaled_grads = run(prompt_pos)
    assert scaled["loss"] == base["loss"] and scaled["loss_tokens"] == base["loss_tokens"]
    assert base_grads.keys() == scaled_grads.keys() and base_grads
    for name, g in base_grads.items():
        assert torch.equal(g, scaled_grads[name]), name
    control, control_grads = run(completion_pos)
    assert control["loss"] == pytest.approx(1000 * base["loss"], rel=1e-4)
    assert any(not torch.equal(g, control_grads[n]) for n, g in base_grads.items())


# -- (b) packing never lets attention cross two examples ------------------------------------------------------


def _assert_packed_equals_alone(model, examples, tokenizer):
    # row 0 holds examples 0, 1, 2 back to back; row 1 holds example 1 alone, then padding
    batch = collate(examples, [[0, 1, 2], [1]], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = packed_logits(model, batch)  # (2, T, V)
    assert torch.isfinite(logits).all()  # padding rows included: no empty attention row
    for row, members in ((0, [0, 1, 2]), (1, [1])):
        spans = _row_spans(batch, row)
        assert len(spans) == len(members)
        for (start, end), i in zip(spans, members):
            assert batch.input_ids[row, start:end].tolist() == examples[i].ids
            assert batch.position_ids[row, start:end].tolist() == list(range(end - start))
            torch.testing.assert_close(logits[row, start:end], _alone_logits(model, examples[i]),
                                       atol=1e-5, rtol=1e-5)


def test_packed_logits_equal_each_example_alone_sdpa(micro, examples, tokenizer):
    assert micro.config._attn_implementation == "sdpa"
    _assert_packed_equals_alone(micro, examples, tokenizer)


def test_packed_logits_equal_each_example_alone_eager(micro, examples, tokenizer):
    micro.set_attn_implementation("eager")
    try:
        assert micro.config._attn_implementation == "eager"
        assert micro.model.layers[0].self_attn.config._attn_implementation == "eager"
        _assert_packed_equals_alone(micro, examples, tokenizer)
    finally:
        micro.set_attn_implementation("sdpa")
    assert micro.config._attn_implementation == "sdpa"


def test_eager_mask_is_additive_and_sdpa_mask_boolean(examples, tokenizer):
    batch = collate(examples, [[0, 2]], tokenizer.pad_token_id)
    allowed = batch.attention_mask("sdpa")
    additive = batch.attention_mask("eager", dtype=torch.float32)
    assert allowed.dtype == torch.bool and allowed.shape == (1, 1, batch.input_ids.shape[1], batch.input_ids.shape[1])
    assert additive.dtype == torch.float32
    assert torch.equal(additive == 0, allowed)
    assert (additive[~allowed] == torch.finfo(torch.float32).min).all()
    # the second example's first token sees only itself; the first example's last token sees its whole prefix
    n0 = len(examples[0].ids)
    assert allowed[0, 0, n0].nonzero().flatten().tolist() == [n0]
    assert allowed[0, 0, n0 - 1].nonzero().flatten().tolist() == list(range(n0))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_negative_control_plain_causal_mask_leaks_across_examples(micro, examples, tokenizer, impl):
    """The same packed row with an ordinary causal mask (position ids still restarting): the first example is
    unchanged (it sees nothing else), but the second one attends to the first and its logits move. So the
    comparison above can fail. (The causal mask is given explicitly, as a 4-D mask, so the control does not
    depend on what transformers builds when attention_mask is None.)"""
    batch = collate(examples, [[0, 1]], tokenizer.pad_token_id)
    t = batch.input_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()[None, None]  # (1, 1, T, T)
    if impl == "eager":
        causal = torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
    micro.set_attn_implementation(impl)
    try:
        with torch.no_grad():
            leaky = micro(input_ids=batch.input_ids, position_ids=batch.position_ids,
                          attention_mask=causal).logits[0]
            blocked = packed_logits(micro, batch)[0]
    finally:
        micro.set_attn_implementation("sdpa")
    n0 = len(examples[0].ids)
    alone0, alone1 = _alone_logits(micro, examples[0]), _alone_logits(micro, examples[1])
    torch.testing.assert_close(leaky[:n0], alone0, atol=1e-5, rtol=1e-5)
    assert (leaky[n0:] - alone1).abs().max() > 1e-3  # cross-example attention changes the second example
    torch.testing.assert_close(blocked[n0:], alone1, atol=1e-5, rtol=1e-5)


# -- (c) pack() and the target mask ---------------------------------------------------------------------------


def test_pack_first_fit_decreasing_by_hand():
    # decreasing: 5 -> bin0 (room 1), 4 -> bin1 (room 2), 3 -> bin2 (room 3), 2 -> bin1 (room 0), 1 -> bin0
    assert pack([5, 4, 3, 2, 1], 6) == [[0, 4], [1, 3], [2]]
    assert pack([], 8) == []
    assert pack([8, 8], 8) == [[0], [1]]


@pytest.mark.parametrize("seed", range(5))
def test_pack_respects_max_len_and_places_every_index_once(seed):
    rng = random.Random(seed)
    max_len = rng.choice([16, 32, 64])
    lengths = [rng.randint(1, max_len) for _ in range(rng.randint(1, 60))]
    bins = pack(lengths, max_len)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= max_len for b in bins)
    assert all(b == sorted(b) and b for b in bins)
    # first fit: no two bins could have been merged into one
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert len(loads) < 2 or loads[0] + loads[1] > max_len


def test_pack_gives_an_overlong_example_a_bin_of_its_own():
    bins = pack([3, 20, 2, 4], 8)
    assert [1] in bins
    assert sorted(i for b in bins for i in b) == [0, 1, 2, 3]


def test_target_mask_excludes_the_boundary_even_without_a_prompt():
    a = Example([11, 12, 13], n_prompt=1)  # the loss starts at 12
    b = Example([21, 22], n_prompt=0)  # every token labelled, the first one included
    c = Example([31, 32, 33], n_prompt=2)
    batch = collate([a, b, c], [[0, 1], [2]], pad_id=0)
    assert batch.input_ids.tolist() == [[11, 12, 13, 21, 22], [31, 32, 33, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE, 12, 13, 21, 22], [IGNORE, IGNORE, 33, IGNORE, IGNORE]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 0]]
    assert batch.segments.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, -1, -1]]
    # position 2 (13) would "predict" 21, b's first token: labelled, but it belongs to another example
    assert batch.target_mask().tolist() == [[True, True, False, True], [False, True, False, False]]
    assert batch.loss_tokens == 4 and batch.tokens == 8
    # padding attends only to itself; b's tokens never see a's
    allowed = batch.attention_mask()[:, 0]
    assert allowed[1, 3].nonzero().flatten().tolist() == [3]
    assert allowed[0, 4].nonzero().flatten().tolist() == [3, 4]


def test_packed_batches_split_by_max_tokens_and_keep_every_example(examples, tokenizer):
    many = examples * 4  # 12 examples
    widths = [len(e.ids) for e in many]
    max_len = max(widths) * 2
    batches = packed_batches(many, list(range(12)), max_len, True, tokenizer.pad_token_id, max_tokens=max_len)
    assert len(batches) > 1
    assert all(b.input_ids.numel() <= max_len for b in batches)  # max_tokens bounds every forward pass
    assert sum(b.tokens for b in batches) == sum(widths)
    assert sum(len(_row_spans(b, r)) for b in batches for r in range(len(b.input_ids))) == 12
    unpacked = packed_batches(many, list(range(12)), max_len, False, tokenizer.pad_token_id, 10_000)
    assert sum(b.input_ids.shape[0] for b in unpacked) == 12
    assert sum(b.loss_tokens for b in unpacked) == sum(b.loss_tokens for b in batches)

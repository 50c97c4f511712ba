"""One GRPO update (grpo.py) on a fixed rollout built from token lists, on the tiny fixture model: the loss values
by hand at ratio 1, parameters move, zero advantages move nothing, mini-batches × μ optimiser steps, masked
truncations carry no gradient, gradient clipping, NaN updates skipped, the k3 KL and the sampling temperature."""

import copy
import math

import pytest
import torch

from r1kit.algo.grpo import (
    UpdateSettings,
    build_rollout,
    completion_logits,
    rollout_logprobs,
    train_on_rollout,
)
from r1kit.algo.losses import token_logprobs

# Two groups of two: prompts of different lengths (left-padded), completions of 3, 5, 2 and 4 tokens.
PROMPTS = [[10, 11, 12], [10, 11, 12], [20, 21], [20, 21]]
COMPLETIONS = [[30, 31, 32], [33, 34, 35, 36, 37], [40, 41], [42, 43, 44, 45]]
LENGTHS = [3, 5, 2, 4]


@pytest.fixture
def model(tiny_model):
    """A trainable copy of the session's tiny model (the fixture itself must not change)."""
    return copy.deepcopy(tiny_model)


@pytest.fixture
def pad(tokenizer) -> int:
    return tokenizer.pad_token_id


def _rollout(pad, advantages, loss_rows=None):
    return build_rollout(PROMPTS, COMPLETIONS, pad, torch.tensor(advantages, dtype=torch.float32), loss_rows)


def _settings(**kw) -> UpdateSettings:
    base = dict(
        temperature=1.0,
        loss_aggregation="seq_mean",
        beta=0.0,
        eps_low=0.2,
        eps_high=0.2,
        mu=1,
        mini_batches=1,
        max_len=8,
        grad_clip=0.0,
    )
    return UpdateSettings(**{**base, **kw})


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _adamw(model, lr=1e-2):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)


def _delta_norm(before, model) -> float:
    return float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before))))


# -- the rollout layout -------------------------------------------------------------------------------------------


def test_build_rollout_layout(pad):
    r = _rollout(pad, [1.0, -1.0, 0.5, -0.5], loss_rows=[True, False, True, True])
    assert r.input_ids.shape == (4, 3 + 5) and r.completion_len == 5
    # left-padded prompt, right-padded completion
    assert r.input_ids[2].tolist() == [pad, 20, 21, 40, 41, pad, pad, pad]
    assert r.attention_mask[2].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    assert r.completion_mask.tolist() == [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]
    assert r.attention_mask[1].sum() == 8  # a masked row is still attended to, it only carries no loss
    assert r.advantages.dtype == torch.float32


def test_completion_logprobs_do_not_depend_on_padding(model, pad):
    # position ids follow the attention mask, so a row's log-probs are the same alone or in a padded batch
    r = _rollout(pad, [0.0] * 4)
    together = rollout_logprobs(model, r, 1.0)  # (4, 5)
    alone = rollout_logprobs(model, build_rollout([PROMPTS[2]], [COMPLETIONS[2]], pad, torch.zeros(1)), 1.0)
    torch.testing.assert_close(together[2, :2], alone[0, :2], atol=1e-5, rtol=1e-5)
    # and they are the log-probs of the completion tokens
    logits = completion_logits(model, r.input_ids, r.attention_mask, 5)
    assert logits.shape[:2] == (4, 5)
    real = r.completion_mask.bool()  # past a row's end the values predict padding: never used
    torch.testing.assert_close(together[real], token_logprobs(logits, r.input_ids[:, -5:])[real])


# -- the loss and the update ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        # on-policy ρ = 1, β = 0: every token's loss is -A_i.  A = [1, 0, 0.5, 0.5], lengths [3, 5, 2, 4]
        ("seq_mean", -(1 + 0 + 0.5 + 0.5) / 4),  # mean of per-sequence means: -0.5
        ("token_mean", -(1 * 3 + 0 * 5 + 0.5 * 2 + 0.5 * 4) / 14),  # -6/14
        ("constant", -(1 * 3 + 0 * 5 + 0.5 * 2 + 0.5 * 4) / (4 * 8)),  # -6/32 (4 sequences × max_len 8)
    ],
)
def test_loss_by_hand_at_ratio_one(model, pad, aggregation, expected):
    stats = train_on_rollout(
        model, _adamw(model), _rollout(pad, [1.0, 0.0, 0.5, 0.5]), _settings(loss_aggregation=aggregation)
    )
    assert stats["loss"] == pytest.approx(expected, abs=1e-6)
    assert stats["clip_fraction"] == 0.0 and stats["kl"] == 0.0
    assert stats["updates"] == 1 and stats["skipped_updates"] == 0
    # β = 0: row 1's advantage is 0, so it gets no forward/backward (its tokens still count in the denominator)
    assert stats["tokens_trained"] == sum(map(len, PROMPTS)) + sum(LENGTHS) - len(PROMPTS[1]) - LENGTHS[1]


def test_skipping_zero_advantage_rows_gives_the_same_update(tiny_model, pad):
    """β = 0: leaving rows with A = 0 out of the forward/backward changes nothing but the work done."""
    results = []
    for skip in (True, False):
        model = copy.deepcopy(tiny_model)
        # SGD: the step is the gradient itself. (AdamW divides by sqrt(v): a weight whose gradient is rounding
        # noise, ~1e-10 either way, gets a full lr-sized step whose sign is that noise, so equal updates cannot be
        # checked through it.)
        stats = train_on_rollout(model, torch.optim.SGD(model.parameters(), lr=1.0),
                                 _rollout(pad, [1.0, 0.0, -0.5, 0.0]), _settings(skip_zero_advantage=skip))
        results.append((stats, _params(model)))
    (fast, p_fast), (full, p_full) = results
    assert fast["tokens_trained"] < full["tokens_trained"]
    assert (fast["rows_trained"], full["rows_trained"]) == (2, 4)  # metrics.jsonl's completions_trained
    assert fast["loss"] == pytest.approx(full["loss"], abs=1e-7)
    for a, b in zip(p_fast, p_full):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_parameters_change(model, pad):
    before = _params(model)
    stats = train_on_rollout(model, _adamw(model), _rollout(pad, [1.0, -1.0, 0.5, -0.5]), _settings())
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert sum(changed) >= len(changed) - 1  # essentially every tensor moved
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert stats["grad_norm"] > 0
    assert 0 < stats["entropy"] <= math.log(model.config.vocab_size) + 1e-4


def test_zero_advantages_and_no_kl_give_zero_gradient_and_no_move(model, pad):
    before = _params(model)
    stats = train_on_rollout(model, _adamw(model, lr=0.1), _rollout(pad, [0.0] * 4), _settings())
    assert stats["grad_norm"] == 0.0 and stats["loss"] == 0.0
    for p in model.parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p)  # Adam with exactly-zero gradients (and no weight decay) does not move


@pytest.mark.parametrize("mu, mini_batches, updates", [(1, 1, 1), (1, 2, 2), (2, 1, 2), (2, 2, 4)])
def test_mu_times_mini_batches_optimiser_steps(model, pad, mu, mini_batches, updates):
    opt = _adamw(model, lr=1e-3)
    stats = train_on_rollout(
        model, opt, _rollout(pad, [1.0, -1.0, 0.5, -0.5]), _settings(mu=mu, mini_batches=mini_batches)
    )
    assert stats["updates"] == updates and stats["skipped_updates"] == 0
    steps = {int(s["step"]) for s in opt.state.values()}
    assert steps == {updates}  # every parameter took exactly that many Adam steps


def test_explicit_mini_batch_assignment(model, pad):
    # rows assigned to mini-batch 1 only: mini-batch 0 is empty and takes no optimiser step
    r = _rollout(pad, [1.0, -1.0, 0.5, -0.5])
    r.mini_batch = torch.tensor([1, 1, 1, 1])
    stats = train_on_rollout(model, _adamw(model), r, _settings(mini_batches=2))
    assert stats["updates"] == 1


def test_masked_truncation_carries_no_gradient(model, pad):
    # the only row with a non-zero advantage is masked (loss_rows False): nothing to learn from
    masked = _rollout(pad, [1.0, 0.0, 0.0, 0.0], loss_rows=[False, True, True, True])
    stats = train_on_rollout(model, _adamw(model), masked, _settings(loss_aggregation="token_mean"))
    assert stats["grad_norm"] == 0.0
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    # the same rollout unmasked does have a gradient
    other = copy.deepcopy(model)
    stats = train_on_rollout(
        other, _adamw(other), _rollout(pad, [1.0, 0.0, 0.0, 0.0]), _settings(loss_aggregation="token_mean")
    )
    assert stats["grad_norm"] > 0


def test_gradient_clipping_bounds_the_update(model, pad):
    # With SGD at lr 1 the update is the (clipped) gradient itself.
    rollout = _rollout(pad, [1.0, -1.0, 0.5, -0.5])
    free = copy.deepcopy(model)
    before = _params(model)
    stats_free = train_on_rollout(free, torch.optim.SGD(free.parameters(), lr=1.0), rollout, _settings())
    norm = stats_free["grad_norm"]
    assert _delta_norm(before, free) == pytest.approx(norm, rel=1e-4)

    clip = norm / 10
    stats = train_on_rollout(
        model, torch.optim.SGD(model.parameters(), lr=1.0), rollout, _settings(grad_clip=clip)
    )
    assert stats["grad_norm"] == pytest.approx(norm, rel=1e-5)  # the logged norm is the one before clipping
    assert _delta_norm(before, model) == pytest.approx(clip, rel=1e-3)


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_nan_advantage_skips_the_update(model, pad, grad_clip):
    before = _params(model)
    opt = _adamw(model)
    stats = train_on_rollout(
        model, opt, _rollout(pad, [math.nan, 1.0, 0.5, -0.5]), _settings(grad_clip=grad_clip)
    )
    assert stats["skipped_updates"] == 1 and stats["updates"] == 0
    assert not math.isfinite(stats["loss"])
    assert opt.state == {} or all(len(s) == 0 for s in opt.state.values())  # Adam never stepped
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p) and torch.isfinite(p).all()


def test_nan_in_one_mini_batch_skips_only_that_one(model, pad):
    before = _params(model)
    stats = train_on_rollout(
        model, _adamw(model), _rollout(pad, [1.0, -1.0, math.nan, 0.5]), _settings(mini_batches=2)
    )
    assert stats["updates"] == 1 and stats["skipped_updates"] == 1
    assert math.isfinite(stats["grad_norm"]) and stats["grad_norm"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


# -- off-policy ratios and the KL ----------------------------------------------------------------------------------


def test_fully_clipped_tokens_have_no_gradient(model, pad):
    # old log-probs 1 below the current ones: ρ = e > 1 + ε for every token; with A > 0 all are clipped
    r = _rollout(pad, [1.0, 1.0, 1.0, 1.0])
    r.old_logprobs = rollout_logprobs(model, r, 1.0) - 1.0
    stats = train_on_rollout(model, _adamw(model), r, _settings())
    assert stats["clip_fraction"] == pytest.approx(1.0)
    assert stats["grad_norm"] == 0.0
    assert stats["loss"] == pytest.approx(-1.2, abs=1e-5)  # -clip(ρ)·A = -1.2 on every token


def test_kl_is_zero_at_step_zero_when_reference_is_the_policy(model, pad):
    r = _rollout(pad, [1.0, -1.0, 0.5, -0.5])
    r.ref_logprobs = rollout_logprobs(model, r, 1.0)
    stats = train_on_rollout(model, _adamw(model), r, _settings(beta=0.1))
    assert abs(stats["kl"]) < 1e-6


def test_kl_hand_value(model, pad):
    # ref = lp - 1 on every token: k3 = e^(-1) - (-1) - 1 = e^-1 = 0.367879
    r = _rollout(pad, [0.0] * 4)
    r.ref_logprobs = rollout_logprobs(model, r, 1.0) - 1.0
    stats = train_on_rollout(model, _adamw(model), r, _settings(beta=0.5, loss_aggregation="token_mean"))
    assert stats["kl"] == pytest.approx(math.exp(-1), abs=1e-4)
    # with zero advantages the whole loss is β·KL (token mean): 0.5 · e^-1
    assert stats["loss"] == pytest.approx(0.5 * math.exp(-1), abs=1e-4)
    assert stats["grad_norm"] > 0  # the KL term pulls towards the reference


def test_beta_zero_ignores_reference_logprobs(model, pad):
    r = _rollout(pad, [0.0] * 4)
    r.ref_logprobs = torch.full_like(r.completion_mask, -50.0)
    stats = train_on_rollout(model, _adamw(model), r, _settings(beta=0.0))
    assert stats["kl"] == 0.0 and stats["grad_norm"] == 0.0


# -- temperature -------------------------------------------------------------------------------------------------


def test_token_logprobs_depend_on_temperature(model, pad):
    r = _rollout(pad, [0.0] * 4)
    logits = completion_logits(model, r.input_ids, r.attention_mask, r.completion_len)
    t1 = token_logprobs(logits, r.input_ids[:, -r.completion_len :], 1.0)
    t2 = token_logprobs(logits, r.input_ids[:, -r.completion_len :], temperature=2.0)
    assert not torch.allclose(t1, t2)
    real = r.completion_mask.bool()
    torch.testing.assert_close(rollout_logprobs(model, r, 2.0)[real], t2[real])


def test_train_on_rollout_uses_the_given_temperature(model, pad):
    # reference log-probs at T=2 equal the policy's at T=2 (KL 0) but not at T=1 (KL > 0)
    r = _rollout(pad, [0.0] * 4)
    r.ref_logprobs = rollout_logprobs(model, r, 2.0)
    hot = copy.deepcopy(model)
    stats_t2 = train_on_rollout(hot, _adamw(hot), r, _settings(beta=0.1, temperature=2.0))
    stats_t1 = train_on_rollout(model, _adamw(model), r, _settings(beta=0.1, temperature=1.0))
    assert abs(stats_t2["kl"]) < 1e-6
    assert stats_t1["kl"] > 1e-4
    assert stats_t2["entropy"] > stats_t1["entropy"]  # a hotter distribution is flatter


def test_a_mini_batch_without_loss_tokens_takes_no_step(model, pad):
    opt = _adamw(model, lr=1e-2)
    train_on_rollout(model, opt, _rollout(pad, [1.0, -1.0, 0.5, -0.5]), _settings())  # Adam now has momentum
    before = _params(model)
    # e.g. every completion truncated with mask_truncated, or dynamic sampling that kept no group
    nothing = _rollout(pad, [1.0, -1.0, 0.5, -0.5], loss_rows=[False] * 4)
    stats = train_on_rollout(model, opt, nothing, _settings())
    assert stats["grad_norm"] == 0.0
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p)


@pytest.mark.parametrize("tokens", [1, 9, 16])
def test_micro_batches_give_the_same_update_as_one_pass(model, pad, tokens):
    """algo.micro_batch_tokens only trades memory for passes: the accumulated gradient, the step and the logged
    statistics are those of one forward/backward over the whole rollout (1 token: one row per pass)."""
    rollout = _rollout(pad, [1.0, -1.0, 0.5, -0.5])
    whole = copy.deepcopy(model)
    stats_whole = train_on_rollout(whole, torch.optim.SGD(whole.parameters(), lr=1.0), rollout, _settings())
    stats = train_on_rollout(model, torch.optim.SGD(model.parameters(), lr=1.0), rollout,
                             _settings(micro_batch_tokens=tokens))
    for a, b in zip(whole.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in ("loss", "grad_norm", "entropy", "clip_fraction"):
        assert stats[key] == pytest.approx(stats_whole[key], rel=1e-5, abs=1e-7)


# -- truncated importance sampling against the rollout engine's log-probs ---------------------------------------


def _behaviour(model, rollout, shift: float = 0.0) -> torch.Tensor:
    """The trainer's own log-probs of the rollout (what an exact engine returns), minus `shift` nats per token."""
    from r1kit.algo.grpo import rollout_logprobs

    return rollout_logprobs(model, rollout, 1.0) - shift


@pytest.mark.parametrize("shift, factor", [(0.0, 1.0), (math.log(1.5), 1.5), (math.log(4.0), 2.0)])
def test_tis_scales_each_token_by_the_capped_ratio(tiny_model, pad, shift, factor):
    """Behaviour log-probs lower than the trainer's by log r weight every token by min(r, cap=2): with SGD the
    update is `factor` times the plain one; the mismatch KL and the capped share are reported."""
    updates = []
    for behaviour in (False, True):
        model = copy.deepcopy(tiny_model)
        before = _params(model)
        rollout = _rollout(pad, [1.0, -1.0, 0.5, -0.5])
        if behaviour:
            rollout.behaviour_logprobs = _behaviour(model, rollout, shift)
        stats = train_on_rollout(model, torch.optim.SGD(model.parameters(), lr=1.0), rollout,
                                 _settings(tis_cap=2.0))
        updates.append([p.detach() - b for p, b in zip(model.parameters(), before)])
    plain, weighted = updates
    for a, b in zip(plain, weighted):
        torch.testing.assert_close(b, a * factor, atol=1e-6, rtol=1e-4)
    r = math.exp(shift)
    assert stats["mismatch_kl"] == pytest.approx(r - 1 - math.log(r), abs=1e-5)  # k3 of a constant ratio
    assert stats["tis_weight"] == pytest.approx(factor, abs=1e-5)
    assert stats["tis_clip_fraction"] == (1.0 if r > 2.0 else 0.0)


def test_tis_cap_zero_reports_but_does_not_weight(tiny_model, pad):
    model = copy.deepcopy(tiny_model)
    rollout = _rollout(pad, [1.0, -1.0, 0.5, -0.5])
    rollout.behaviour_logprobs = _behaviour(model, rollout, math.log(4.0))
    plain = copy.deepcopy(tiny_model)
    s_plain = train_on_rollout(plain, torch.optim.SGD(plain.parameters(), lr=1.0), _rollout(pad, [1.0, -1.0, 0.5, -0.5]),
                               _settings())
    stats = train_on_rollout(model, torch.optim.SGD(model.parameters(), lr=1.0), rollout, _settings(tis_cap=0.0))
    assert stats["loss"] == pytest.approx(s_plain["loss"], abs=1e-7)
    assert stats["mismatch_kl"] > 1.0 and stats["tis_weight"] == 1.0


def test_split_sorted_finds_the_cheapest_cuts():
    from r1kit.algo.grpo import split_sorted

    # one long row among short ones: it gets a pass of its own (8 x 100 padded tokens would waste 7 x 90)
    assert split_sorted([0] * 8, [10] * 7 + [100], 10_000, pass_cost=50) == [7, 8]
    # equal rows: one pass (each extra pass only adds its cost)
    assert split_sorted([5] * 6, [10] * 6, 10_000, pass_cost=50) == [6]
    # the token budget forces cuts: 2 rows of 15 fit in 32, 3 do not
    assert split_sorted([5] * 4, [10] * 4, 32, pass_cost=1) == [2, 4]
    # a single row wider than the budget still gets its pass
    assert split_sorted([5], [100], 32) == [1]
    # padded tokens + pass costs of the chosen split are no worse than one pass or one pass per row
    prompts, comps = [4] * 10, [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]
    ends = split_sorted(prompts, comps, 10_000, pass_cost=20)
    cost, start = 0, 0
    for end in ends:
        cost += (end - start) * (max(prompts[start:end]) + max(comps[start:end])) + 20
        start = end
    assert cost <= min(10 * 93 + 20, sum(p + c + 20 for p, c in zip(prompts, comps)))

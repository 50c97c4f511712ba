"""GRPO's loss pieces (losses.py) against values worked out by hand, and the vectorised aggregations against a
naive loop (as verl tests its core algorithms). Pure tensor arithmetic: milliseconds."""

import math

import pytest
import torch

from r1kit.algo.losses import (
    ADVANTAGES,
    AGGREGATIONS,
    advantages_centered,
    advantages_std,
    clipped_surrogate,
    denominator_counts,
    entropy,
    kl_k3,
    masked_mean,
    numerator_seq_mean,
    numerator_token_sum,
    token_logprobs,
    truncated_is_weights,
)

# -- advantages -------------------------------------------------------------------------------------------------


def test_advantages_std_by_hand():
    # group 1: r = [0, 1, 2], mean 1, sample std sqrt(((-1)^2 + 0 + 1^2) / (3-1)) = 1  ->  [-1, 0, 1]
    # group 2: r = [3, 3, 3], all equal: (r - 3) / (0 + eps) = 0
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    adv = advantages_std(rewards, group_size=3, eps=1e-12)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def test_advantages_std_two_member_group_and_eps():
    # r = [1, 0]: mean 0.5, std sqrt((0.25 + 0.25) / 1) = 0.70710678; A = ±0.5 / (0.70710678 + 1e-4)
    adv = advantages_std(torch.tensor([1.0, 0.0]), group_size=2)
    expected = 0.5 / (math.sqrt(0.5) + 1e-4)  # 0.70700679
    torch.testing.assert_close(adv, torch.tensor([expected, -expected]))


def test_advantages_of_all_equal_group_are_exactly_zero():
    rewards = torch.tensor([2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    for fn in (advantages_std, advantages_centered):
        adv = fn(rewards, 4)
        assert torch.equal(adv, torch.zeros(8)), fn.__name__
        assert torch.isfinite(adv).all()


def test_advantages_centered_by_hand():
    # Dr. GRPO: r - mean, no std.  [1, 0, 0, 1] mean 0.5 -> [0.5, -0.5, -0.5, 0.5];  [0, 2] mean 1 -> [-1, 1]
    adv = advantages_centered(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    adv = advantages_centered(torch.tensor([0.0, 2.0, 5.0, 1.0]), 2)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 2.0, -2.0]))


def test_advantages_are_computed_within_each_group():
    # a constant added to one group must not change any advantage (groups never see each other)
    rewards = torch.tensor([0.0, 1.0, 0.5, 0.25])
    shifted = rewards + torch.tensor([0.0, 0.0, 10.0, 10.0])
    for fn in ADVANTAGES.values():
        torch.testing.assert_close(fn(rewards, 2), fn(shifted, 2))


def test_advantage_table_names():
    assert ADVANTAGES == {"std": advantages_std, "none": advantages_centered}


# -- k3 KL --------------------------------------------------------------------------------------------------------


def test_kl_k3_hand_values():
    # lp = log 0.5, ref = log 0.25: δ = ref - lp = log 0.5; k3 = e^δ - δ - 1 = 0.5 + 0.693147 - 1 = 0.193147
    # lp = log 0.25, ref = log 0.5:  δ = log 2;             k3 = 2 - 0.693147 - 1 = 0.306853
    lp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    torch.testing.assert_close(kl_k3(lp, ref), torch.tensor([[0.5 + math.log(2) - 1, 2 - math.log(2) - 1]]))


def test_kl_k3_is_zero_when_equal_and_never_negative():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 7, generator=g) * 5
    assert torch.equal(kl_k3(lp, lp), torch.zeros(4, 7))
    ref = -torch.rand(4, 7, generator=g) * 5
    kl = kl_k3(lp, ref)
    assert kl.shape == (4, 7)
    assert (kl >= 0).all() and (kl > 0).all()


def test_kl_k3_resolves_small_float32_differences():
    # fp32 rollouts against an fp32 trainer differ by ~1e-6 per token: e^δ - δ - 1 computed naively rounds to 0
    # there, and the mismatch metric would read exactly 0 whatever the engine did; expm1 keeps δ²/2
    lp = torch.full((1, 3), -1.0)
    delta = torch.tensor([[1e-3, 1e-5, -3e-6]])
    ref = lp + delta
    exact = (ref.double() - lp.double()).pow(2) / 2  # the δ that fp32 actually holds
    torch.testing.assert_close(kl_k3(lp, ref).double(), exact, rtol=1e-3, atol=0)
    kl = kl_k3(lp, ref)
    assert (kl > 0).all()


def test_kl_k3_gradient_vanishes_at_equality():
    # d/dlp [e^(ref-lp) - (ref-lp) - 1] = -e^(ref-lp) + 1 = 0 when ref == lp: the KL term does not push at step 0
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    kl_k3(lp, lp.detach().clone()).sum().backward()
    assert torch.equal(lp.grad, torch.zeros(1, 2))


# -- clipped surrogate --------------------------------------------------------------------------------------------


def _ratios(*rows):
    """logprobs and old_logprobs whose ratio exp(lp - old) is the given values."""
    lp = torch.log(torch.tensor(rows, dtype=torch.float32))
    return lp, torch.zeros_like(lp)


def test_clipped_surrogate_positive_advantage():
    # A = +1, ε_low 0.2, ε_high 0.28:
    #   ρ = 1.1  inside:                 -min(1.1, 1.1)       = -1.1,  not clipped
    #   ρ = 1.5  above 1.28:             -min(1.5, 1.28)      = -1.28, clipped
    #   ρ = 0.5  below 0.8: min(0.5, 0.8) = 0.5 (unclipped)   = -0.5,  clip not active
    lp, old = _ratios([1.1, 1.5, 0.5])
    loss, clipped = clipped_surrogate(lp, old, torch.tensor([1.0]), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.1, -1.28, -0.5]]))
    assert clipped.tolist() == [[False, True, False]]


def test_clipped_surrogate_negative_advantage():
    # A = -2:
    #   ρ = 0.9  inside:                 -min(-1.8, -1.8)     = 1.8,   not clipped
    #   ρ = 0.5  below 0.8: min(-1.0, -1.6) = -1.6 (clipped)   = 1.6,   clipped
    #   ρ = 1.5  above 1.28: min(-3.0, -2.56) = -3.0           = 3.0,   clip not active
    lp, old = _ratios([0.9, 0.5, 1.5])
    loss, clipped = clipped_surrogate(lp, old, torch.tensor([-2.0]), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([[1.8, 1.6, 3.0]]))
    assert clipped.tolist() == [[False, True, False]]


def test_clip_higher_is_asymmetric():
    # ρ = 1.25 with A = +1: clip-higher (ε_high 0.28) leaves it alone; symmetric ε 0.2 clips it to 1.2
    # ρ = 0.75 with A = -1: ε_low 0.2 clips it to 0.8 in both settings: loss = -min(-0.75, -0.8) = 0.8
    lp, old = _ratios([1.25, 0.75], [1.25, 0.75])
    adv = torch.tensor([1.0, -1.0])
    loss_hi, clip_hi = clipped_surrogate(lp, old, adv, 0.2, 0.28)
    loss_sym, clip_sym = clipped_surrogate(lp, old, adv, 0.2, 0.2)
    torch.testing.assert_close(loss_hi[0, 0], torch.tensor(-1.25))
    torch.testing.assert_close(loss_sym[0, 0], torch.tensor(-1.2))
    torch.testing.assert_close(loss_hi[1, 1], torch.tensor(0.8))
    torch.testing.assert_close(loss_sym[1, 1], torch.tensor(0.8))
    assert clip_hi.tolist() == [[False, False], [False, True]]
    assert clip_sym.tolist() == [[True, False], [False, True]]


def test_clipped_surrogate_gradient():
    # ρ = 1 (on-policy): d(-ρA)/d lp = -A·ρ = -A. Clipped tokens have no gradient.
    lp = torch.zeros(2, 2, requires_grad=True)
    old = torch.tensor([[0.0, -1.0], [0.0, 1.0]])  # ρ = [[1, e], [1, 1/e]]
    loss, clipped = clipped_surrogate(lp, old, torch.tensor([3.0, -0.5]), 0.2, 0.2)
    loss.sum().backward()
    # row 0, A=3: token 0 -> -3; token 1 (ρ=e clipped at 1.2) -> 0.  row 1, A=-0.5: token 0 -> 0.5; token 1 clipped
    torch.testing.assert_close(lp.grad, torch.tensor([[-3.0, 0.0], [0.5, 0.0]]))
    assert clipped.tolist() == [[False, True], [False, True]]


# -- aggregation ------------------------------------------------------------------------------------------------

# A ragged batch: a long completion of 4 tokens each with loss 1, a short one of 1 token with loss 3.
# Values under the mask's zeros (100) must never count.
PER_TOKEN = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 100.0, 100.0, 100.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
MAX_LEN = 8


def _aggregate(name, per_token, mask, max_len=MAX_LEN):
    numerator, key = AGGREGATIONS[name]
    return numerator(per_token, mask) / denominator_counts(mask, max_len)[key]


def test_denominator_counts():
    assert denominator_counts(MASK, MAX_LEN) == {"sequences": 2.0, "tokens": 5.0, "sequences_x_max_len": 16.0}


def test_aggregations_by_hand():
    # seq_mean:   (4/4 + 3/1) / 2 sequences = (1 + 3) / 2 = 2.0
    # token_mean: (1+1+1+1 + 3) / 5 tokens  = 7 / 5       = 1.4
    # constant:   7 / (2 sequences × max_len 8) = 7 / 16  = 0.4375
    assert _aggregate("seq_mean", PER_TOKEN, MASK).item() == pytest.approx(2.0)
    assert _aggregate("token_mean", PER_TOKEN, MASK).item() == pytest.approx(1.4)
    assert _aggregate("constant", PER_TOKEN, MASK).item() == pytest.approx(0.4375)
    assert numerator_seq_mean(PER_TOKEN, MASK).item() == pytest.approx(4.0)
    assert numerator_token_sum(PER_TOKEN, MASK).item() == pytest.approx(7.0)


def test_seq_mean_weights_sequences_equally_token_mean_does_not():
    # d loss / d l_it summed over a row = the weight that row gets.
    # seq_mean: each row 1/2 (long: 4 tokens × 1/(4·2); short: 1/(1·2)).  token_mean: long 4/5, short 1/5.
    # constant: every token 1/16: long 4/16, short 1/16.
    expected = {"seq_mean": [0.5, 0.5], "token_mean": [0.8, 0.2], "constant": [0.25, 0.0625]}
    for name, weights in expected.items():
        per_token = PER_TOKEN.clone().requires_grad_(True)
        _aggregate(name, per_token, MASK).backward()
        torch.testing.assert_close(per_token.grad.sum(-1), torch.tensor(weights), msg=name)
        assert (per_token.grad * (1 - MASK) == 0).all(), name  # masked positions get no gradient


def test_aggregation_table_names():
    assert set(AGGREGATIONS) == {"seq_mean", "token_mean", "constant"}


def _naive(name, per_token, mask, max_len):
    """The aggregations written as plain Python loops over rows and tokens."""
    rows = per_token.tolist()
    m = mask.tolist()
    if name == "seq_mean":
        total = 0.0
        for r, mr in zip(rows, m):
            n = sum(mr)
            total += sum(v * w for v, w in zip(r, mr)) / n if n else 0.0
        return total / len(rows)
    total = sum(v * w for r, mr in zip(rows, m) for v, w in zip(r, mr))
    if name == "token_mean":
        return total / sum(sum(mr) for mr in m)
    return total / (len(rows) * max_len)


@pytest.mark.parametrize("name", ["seq_mean", "token_mean", "constant"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_aggregation_matches_naive_loop(name, seed):
    g = torch.Generator().manual_seed(seed)
    b, t = 6, 9
    per_token = torch.randn(b, t, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t  # one full-length row
    mask = (torch.arange(t)[None] < lengths[:, None]).float()  # (B, T) right-padded
    got = _aggregate(name, per_token, mask, max_len=t).item()
    assert got == pytest.approx(_naive(name, per_token, mask, t), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", ["seq_mean", "token_mean", "constant"])
def test_split_numerators_over_global_denominator_equal_whole_batch(name):
    # What data parallelism relies on: Σ_rank numerator(part) / global count == aggregation of the whole batch.
    g = torch.Generator().manual_seed(3)
    per_token = torch.randn(8, 5, generator=g)
    mask = (torch.arange(5)[None] < torch.randint(1, 6, (8,), generator=g)[:, None]).float()
    numerator, key = AGGREGATIONS[name]
    parts = [slice(0, 3), slice(3, 8)]
    denom = sum(denominator_counts(mask[p], 5)[key] for p in parts)
    split = sum(numerator(per_token[p], mask[p]) for p in parts) / denom
    torch.testing.assert_close(split, _aggregate(name, per_token, mask, max_len=5))


def test_masked_mean():
    # (1·1 + 2·0 + 3·1) / 2 = 2;  an all-zero mask gives 0, not NaN
    assert masked_mean(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 1.0])).item() == 2.0
    assert masked_mean(torch.tensor([1.0, 2.0]), torch.zeros(2)).item() == 0.0


# -- log-probabilities and entropy --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_token_logprobs_equal_log_softmax(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g) * 3  # (B, T, V)
    targets = torch.randint(11, (2, 3), generator=g)  # (B, T)
    expected = torch.log_softmax(logits / temperature, -1).gather(-1, targets[..., None]).squeeze(-1)
    got = token_logprobs(logits, targets, temperature)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, expected)


def test_token_logprobs_hand_value_and_temperature():
    # logits [0, ln 3]: softmax = [1/4, 3/4]; at T=2 logits [0, ln 3 / 2]: [1/(1+√3), √3/(1+√3)]
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    targets = torch.tensor([[1]])
    assert token_logprobs(logits, targets).item() == pytest.approx(math.log(0.75))
    t2 = token_logprobs(logits, targets, temperature=2.0).item()
    assert t2 == pytest.approx(math.log(math.sqrt(3) / (1 + math.sqrt(3))))
    assert t2 != pytest.approx(math.log(0.75))


def test_token_logprobs_computes_in_float32():
    logits = torch.randn(1, 2, 5).to(torch.bfloat16)
    assert token_logprobs(logits, torch.tensor([[0, 1]])).dtype == torch.float32


def test_entropy_of_uniform_is_log_v():
    for v in (2, 7, 512):
        ent = entropy(torch.zeros(2, 3, v))
        assert ent.shape == (2, 3)
        torch.testing.assert_close(ent, torch.full((2, 3), math.log(v)))
    # a constant shift of the logits changes nothing; any temperature keeps uniform uniform
    torch.testing.assert_close(
        entropy(torch.full((1, 1, 7), 5.0), temperature=0.5), torch.tensor([[math.log(7)]])
    )


def test_entropy_hand_value_and_temperature():
    # p = [1/4, 3/4]: H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert entropy(logits).item() == pytest.approx(0.5623351446)
    # a higher temperature flattens the distribution: more entropy, below the uniform ln 2
    assert entropy(logits).item() < entropy(logits, temperature=2.0).item() < math.log(2)


def test_truncated_is_weights_by_hand():
    log_ratio = torch.log(torch.tensor([[0.5, 1.0, 2.0, 3.0]]))  # π_old / π_rollout
    weights, capped = truncated_is_weights(log_ratio, cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 1.0, 2.0, 2.0]]))
    assert capped.tolist() == [[False, False, False, True]]
    off, none = truncated_is_weights(log_ratio, cap=0.0)
    assert torch.equal(off, torch.ones(1, 4)) and not none.any()
    grad = log_ratio.clone().requires_grad_(True)
    assert not truncated_is_weights(grad, 2.0)[0].requires_grad  # a weight, never a path for the gradient

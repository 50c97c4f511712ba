"""The supervised and distillation losses (losses.py: nll_per_token, forward_kl_per_token, reverse_kl_per_token)
against values worked out by hand on a three-token vocabulary. Logits are written as logs of explicit
probabilities, so each KL below is a short sum of p·log(p/q). Pure tensor arithmetic: milliseconds."""

import math

import pytest
import torch

from r1kit.algo.losses import (
    DISTILL_LOSSES,
    forward_kl_per_token,
    masked_mean,
    nll_per_token,
    reverse_kl_per_token,
)

P = [0.5, 0.25, 0.25]  # "teacher"
Q = [0.8, 0.1, 0.1]  # "student"

# KL(P || Q) = 0.5 ln(0.5/0.8) + 0.25 ln(0.25/0.1) + 0.25 ln(0.25/0.1) = 0.5 ln 0.625 + 0.5 ln 2.5 = 0.5 ln 1.5625
KL_PQ = 0.5 * math.log(0.5 / 0.8) + 2 * 0.25 * math.log(0.25 / 0.1)  # 0.223144
# KL(Q || P) = 0.8 ln(0.8/0.5) + 0.1 ln(0.1/0.25) + 0.1 ln(0.1/0.25) = 0.8 ln 1.6 + 0.2 ln 0.4
KL_QP = 0.8 * math.log(0.8 / 0.5) + 2 * 0.1 * math.log(0.1 / 0.25)  # 0.192745


def logits_of(*rows, scale: float = 1.0) -> torch.Tensor:
    """(1, T, V) logits = scale * log(probabilities), one position per row."""
    return scale * torch.tensor([rows]).log()


def test_hand_values_are_what_the_comments_say():
    assert KL_PQ == pytest.approx(0.5 * math.log(1.5625)) and KL_PQ == pytest.approx(0.2231436, abs=1e-7)
    assert KL_QP == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4))
    assert KL_QP == pytest.approx(0.1927448, abs=1e-7)


# -- negative log-likelihood ----------------------------------------------------------------------------------


def test_nll_by_hand_and_ignored_targets():
    # three positions, each with distribution P; targets 0, 1 and -100 (ignored)
    logits = logits_of(P, P, P).requires_grad_(True)
    targets = torch.tensor([[0, 1, -100]])
    nll = nll_per_token(logits, targets)
    assert nll.shape == (1, 3)
    torch.testing.assert_close(nll, torch.tensor([[-math.log(0.5), -math.log(0.25), 0.0]]))
    # an ignored position gets no gradient either
    nll.sum().backward()
    assert torch.equal(logits.grad[0, 2], torch.zeros(3))
    assert logits.grad[0, :2].abs().sum() > 0


def test_nll_is_shift_invariant_and_any_negative_target_is_ignored():
    logits = logits_of(Q, P)
    targets = torch.tensor([[2, -1]])
    expected = torch.tensor([[-math.log(0.1), 0.0]])
    torch.testing.assert_close(nll_per_token(logits, targets), expected)
    torch.testing.assert_close(nll_per_token(logits + 7.0, targets), expected)


def test_nll_with_masked_mean():
    # positions: -ln 0.5, -ln 0.25, -ln 0.25; the mask drops the middle one: (ln 2 + ln 4) / 2 = 1.5 ln 2
    nll = nll_per_token(logits_of(P, P, P), torch.tensor([[0, 1, 2]]))
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    assert float(masked_mean(nll, mask)) == pytest.approx(1.5 * math.log(2), rel=1e-6)
    # an all-zero mask is 0, not NaN (the count is clamped to 1)
    assert float(masked_mean(nll, torch.zeros(1, 3))) == 0.0


# -- KL divergences -------------------------------------------------------------------------------------------


def test_forward_and_reverse_kl_by_hand():
    student, teacher = logits_of(Q), logits_of(P)
    # forward: KL(p_T || p_S) = KL(P || Q); reverse: KL(p_S || p_T) = KL(Q || P)
    fwd = forward_kl_per_token(student, teacher)
    rev = reverse_kl_per_token(student, teacher)
    assert fwd.shape == rev.shape == (1, 1)
    assert float(fwd) == pytest.approx(KL_PQ, rel=1e-6)
    assert float(rev) == pytest.approx(KL_QP, rel=1e-6)
    assert abs(float(fwd) - float(rev)) > 0.03  # asymmetric pair: the two directions really differ


def test_kl_of_identical_distributions_is_zero():
    for fn in (forward_kl_per_token, reverse_kl_per_token):
        same = fn(logits_of(P, Q), logits_of(P, Q))
        torch.testing.assert_close(same, torch.zeros(1, 2), atol=1e-7, rtol=0)
        # the same distributions written with shifted logits: still zero
        shifted = fn(logits_of(P, Q) + 3.0, logits_of(P, Q) - 2.0)
        torch.testing.assert_close(shifted, torch.zeros(1, 2), atol=1e-6, rtol=0)


def test_reverse_kl_is_forward_kl_with_the_roles_swapped():
    a, b = logits_of(P, Q, [0.2, 0.3, 0.5]), logits_of(Q, P, [0.6, 0.3, 0.1])
    torch.testing.assert_close(reverse_kl_per_token(a, b), forward_kl_per_token(b, a))


def test_kl_temperature_by_hand():
    # logits 2·ln P at temperature 2 are exactly P again (softmax(ln P) = P); same for Q
    student, teacher = logits_of(Q, scale=2.0), logits_of(P, scale=2.0)
    assert float(forward_kl_per_token(student, teacher, temperature=2.0)) == pytest.approx(KL_PQ, rel=1e-6)
    assert float(reverse_kl_per_token(student, teacher, temperature=2.0)) == pytest.approx(KL_QP, rel=1e-6)
    # at temperature 1 the same logits are P² and Q², renormalised:
    #   P' = [0.25, 0.0625, 0.0625] / 0.375 = [2/3, 1/6, 1/6];  Q' = [0.64, 0.01, 0.01] / 0.66 = [32/33, 1/66, 1/66]
    #   KL(P'||Q') = 2/3 ln((2/3)/(32/33)) + 2·1/6 ln((1/6)/(1/66)) = 2/3 ln(11/16) + 1/3 ln 11
    #   KL(Q'||P') = 32/33 ln((32/33)/(2/3)) + 2·1/66 ln((1/66)/(1/6)) = 32/33 ln(16/11) - 1/33 ln 11
    fwd_t1 = 2 / 3 * math.log(11 / 16) + 1 / 3 * math.log(11)  # 0.549503
    rev_t1 = 32 / 33 * math.log(16 / 11) - 1 / 33 * math.log(11)  # 0.290676
    assert float(forward_kl_per_token(student, teacher)) == pytest.approx(fwd_t1, rel=1e-6)
    assert float(reverse_kl_per_token(student, teacher, temperature=1.0)) == pytest.approx(rev_t1, rel=1e-6)


def test_kl_per_position_with_mask():
    # position 0: (Q, P) -> KL_PQ;  position 1: identical -> 0;  position 2: (P, Q) -> KL(Q || P) = KL_QP
    student, teacher = logits_of(Q, P, P), logits_of(P, P, Q)
    fwd = forward_kl_per_token(student, teacher)
    torch.testing.assert_close(fwd, torch.tensor([[KL_PQ, 0.0, KL_QP]]), atol=1e-6, rtol=1e-6)
    # mean over positions 0 and 2 only; the masked middle position does not dilute it
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    assert float(masked_mean(fwd, mask)) == pytest.approx((KL_PQ + KL_QP) / 2, rel=1e-6)
    # a masked position with an enormous KL changes nothing
    far = logits_of(Q, [0.999998, 0.000001, 0.000001], P)
    big = forward_kl_per_token(far, teacher)
    assert float(big[0, 1]) > 5
    assert float(masked_mean(big, mask)) == pytest.approx((KL_PQ + KL_QP) / 2, rel=1e-6)


def test_kl_is_non_negative_on_random_logits_and_gradients_vanish_at_equality():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    for fn in (forward_kl_per_token, reverse_kl_per_token):
        assert (fn(s, t) >= -1e-6).all()
        student = t.clone().requires_grad_(True)
        fn(student, t).sum().backward()
        assert student.grad.abs().max() < 1e-6  # KL is minimal (0) where the student equals the teacher


def test_forward_kl_gradient_is_student_minus_teacher_probabilities():
    # d KL(P || softmax(z)) / dz = softmax(z) - P  ->  Q - P at z = ln Q
    student = logits_of(Q).requires_grad_(True)
    forward_kl_per_token(student, logits_of(P)).sum().backward()
    torch.testing.assert_close(student.grad, torch.tensor([[[0.8 - 0.5, 0.1 - 0.25, 0.1 - 0.25]]]))


def test_distill_loss_table():
    assert DISTILL_LOSSES == {"logit": forward_kl_per_token, "on-policy": reverse_kl_per_token}

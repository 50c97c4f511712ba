"""Evaluation statistics against brute force and values worked out by hand (pure Python, milliseconds)."""

import itertools
import math
from fractions import Fraction

import pytest

from r1kit.evaluation.metrics import majority, mean_ci95, pass_at_k, summarize


def brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (the first c correct) that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_1_is_the_fraction_correct():
    for n, c in [(1, 0), (1, 1), (4, 1), (10, 7), (16, 3)]:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula_for_large_n():
    n, c, k = 200, 13, 20
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 0, 1, 0.0),  # nothing correct
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),  # everything correct
        (5, 5, 5, 1.0),
        (5, 3, 3, 1.0),  # n - c < k: every k-subset holds a correct sample
        (5, 4, 2, 1.0),
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_edges(n, c, k, expected):
    assert pass_at_k(n, c, k) == expected


@pytest.mark.parametrize(
    "n, c, k",
    [
        (5, -1, 1),  # c < 0
        (5, 6, 1),  # c > n
        (5, 2, 0),  # k < 1
        (5, 2, -1),
        (5, 2, 6),  # k > n
        (0, 0, 1),  # no samples
    ],
)
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["7", "7", "3"], "7"),
        (["3", "7", "7"], "7"),
        (["b", "a", "a", "b"], "b"),  # tie: the first seen wins
        (["a", "b", "b", "a"], "a"),
        (["x", "y", "z"], "x"),
        ([None, None, "5"], "5"),  # Nones never win, however many
        ([None, "a", None, None, "b"], "a"),
        ([None, "b", "a", "a"], "a"),
        ([None, None], None),
        ([], None),
        (["", "", "1"], ""),  # an empty answer is still an answer
    ],
)
def test_majority(answers, expected):
    assert majority(answers) == expected


def test_mean_ci95_by_hand():
    mean, half = mean_ci95([0.0, 1.0, 0.0, 1.0])
    assert mean == pytest.approx(0.5)
    # sample variance (n - 1): 4 * 0.25 / 3 = 1/3; standard error sqrt(1/3 / 4)
    assert half == pytest.approx(1.96 * math.sqrt(1 / 12))


def test_mean_ci95_constant_values_have_zero_width():
    assert mean_ci95([0.25, 0.25, 0.25]) == (pytest.approx(0.25), 0.0)


def test_mean_ci95_degenerate():
    mean, half = mean_ci95([0.7])
    assert mean == pytest.approx(0.7) and math.isnan(half)
    mean, half = mean_ci95([])
    assert math.isnan(mean) and math.isnan(half)


def test_summarize_by_hand():
    correct = [[True, False], [True, True], [False, False]]
    m = summarize(correct, [True, True, False], k=2)
    assert set(m) == {"pass@1", "pass@1_ci95", "pass@2", "cons@2"}
    assert m["pass@1"] == pytest.approx(0.5)  # (1/2 + 1 + 0) / 3
    assert m["pass@1_ci95"] == pytest.approx(mean_ci95([0.5, 1.0, 0.0])[1])
    assert m["pass@2"] == pytest.approx(2 / 3)  # the first two problems have a correct sample
    assert m["cons@2"] == pytest.approx(2 / 3)


def test_summarize_pass_at_k_below_the_sample_count():
    # 4 samples per problem, pass@2 uses the unbiased estimator, not "any of the 4"
    correct = [[True, False, False, False], [False] * 4]
    m = summarize(correct, [False, False], k=2)
    assert m["pass@2"] == pytest.approx((1 - 3 / 6) / 2)  # 1 - C(3,2)/C(4,2) = 1/2 on problem 1
    assert m["pass@1"] == pytest.approx(0.125)

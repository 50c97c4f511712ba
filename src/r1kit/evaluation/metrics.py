"""Evaluation statistics, as the R1 paper reports them (section 6 of ../shared/r1-reference.md).

- pass@1: mean correctness over the k samples of each problem, averaged over problems; its 95% confidence interval
  uses the standard error across problems (the problems are the independent units).
- pass@k: the unbiased estimator 1 - C(n-c, k) / C(n, k) of Chen et al. (2021), per problem, averaged.
- cons@k: majority vote over the extracted answers of the k samples; ties go to the answer seen first.
Pure Python.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from r1kit.config import EvalConfig


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i), numerically stable form of 1 - C(n-c,k)/C(n,k)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority(answers: Sequence[str | None]) -> str | None:
    """The most common non-None answer (first seen wins ties); None when there is none."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def summarize(correct: Sequence[Sequence[bool]], cons_correct: Sequence[bool], k: int) -> dict:
    """pass@1 (with CI), pass@k and cons@k from per-problem lists of k correctness flags."""
    per_problem = [sum(c) / len(c) for c in correct]
    p1, ci = mean_ci95(per_problem)
    pk = sum(pass_at_k(len(c), sum(c), k) for c in correct) / max(len(correct), 1)
    return {
        "pass@1": p1,
        "pass@1_ci95": ci,
        f"pass@{k}": pk,
        f"cons@{k}": sum(cons_correct) / max(len(cons_correct), 1),
    }


GENERATED_EVAL_N = 500  # problems drawn from a generated task when no sample size is asked for


def eval_config_for(task, **given) -> EvalConfig:
    """How to evaluate `task` when the user set only `given` (None: not set): the task's `eval_defaults` (a
    preset's paper settings) fill the rest, then EvalConfig's. The split defaults to the task's `eval_split` (a
    dataset's test split, or `all` of an unsplit file) and the number of problems to all of a finite task (a
    dataset: a file or split given for evaluation is evaluated whole) or GENERATED_EVAL_N of a generated one."""
    settings = {**getattr(task, "eval_defaults", {}), **{k: v for k, v in given.items() if v is not None}}
    settings.setdefault("split", getattr(task, "eval_split", "test"))
    settings.setdefault("n", None if getattr(task, "finite", False) else GENERATED_EVAL_N)
    return EvalConfig(**settings)

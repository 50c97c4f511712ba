"""Rule-based rewards, as R1 uses them: plain functions chosen by name, never a neural reward model.

A reward function takes `(problem, completion, score, ctx)` and returns a float; `score` is the task verifier's
verdict (`Task.score`), so the RL reward and the evaluation metric come from the same code. `ctx` carries the
run's settings (e.g. `max_new_tokens`, `truncated`, `length`, `language`).

- `accuracy`: 1 if the answer is correct.      - `format`: 1 if `<think>..</think> <answer>..</answer>`.
- `language`: share of the reasoning's words written in the target script (R1's language-consistency reward).
- `overlong`: DAPO's soft overlong penalty, 0 down to -1 over the last `overlong_buffer` tokens of the budget.

The paper's rule reward is accuracy + format at equal weight: `{"accuracy": 1.0, "format": 1.0}`.
A user adds a reward without editing r1kit by naming it `package.module:function` in the config.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from r1kit.errors import UserError
from r1kit.tasks.base import think_text

RewardFn = Callable[..., float]

# Unicode ranges of the scripts the language reward knows (a word counts for a script when most of its letters
# are in it). "latin" includes ASCII letters; digits and punctuation are not words.
SCRIPTS = {
    "latin": r"A-Za-z\u00C0-\u024F",
    "cjk": r"\u4E00-\u9FFF\u3400-\u4DBF",
    "cyrillic": r"\u0400-\u04FF",
    "arabic": r"\u0600-\u06FF",
    "devanagari": r"\u0900-\u097F",
}
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


def accuracy(problem, completion: str, score, ctx: dict) -> float:
    return 1.0 if score.correct else 0.0


def format_reward(problem, completion: str, score, ctx: dict) -> float:
    return 1.0 if score.formatted else 0.0


def language(problem, completion: str, score, ctx: dict) -> float:
    """Share of the words in the reasoning written in `ctx["language"]` (default latin); 1 when there are none."""
    script = ctx.get("language", "latin")
    if script not in SCRIPTS:
        raise UserError(f"unknown language script {script!r}: use one of {', '.join(SCRIPTS)}")
    words = _WORD_RE.findall(think_text(completion))
    if not words:
        return 1.0
    in_script = re.compile(f"[{SCRIPTS[script]}]")
    hits = sum(1 for w in words if len(in_script.findall(w)) * 2 > len(w))
    return hits / len(words)


def overlong(problem, completion: str, score, ctx: dict) -> float:
    """0 while `length <= max_new_tokens - buffer`, then linearly down to -1 at the budget (DAPO, eq. 13)."""
    budget, buffer, length = ctx["max_new_tokens"], ctx.get("overlong_buffer", 0), ctx["length"]
    if buffer <= 0:
        return -1.0 if ctx.get("truncated") else 0.0
    start = budget - buffer
    return 0.0 if length <= start else -min(1.0, (length - start) / buffer)


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy,
    "format": format_reward,
    "language": language,
    "overlong": overlong,
}


def resolve_reward(name: str) -> RewardFn:
    """A reward by name, or a user's function given as `package.module:function`."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot load reward {name!r}: {e}") from None
        if not callable(fn):
            raise UserError(f"reward {name!r} is not a function")
        return fn
    raise UserError(f"unknown reward {name!r}: use one of {', '.join(REWARDS)} or package.module:function")


def combine(weights: dict[str, float]) -> Callable[..., tuple[float, dict[str, float]]]:
    """A function returning the weighted sum of the named rewards and each component."""
    fns = {name: resolve_reward(name) for name in weights}

    def total(problem, completion: str, score, ctx: dict) -> tuple[float, dict[str, float]]:
        parts = {name: float(fn(problem, completion, score, ctx)) for name, fn in fns.items()}
        return sum(weights[n] * v for n, v in parts.items()), parts

    return total

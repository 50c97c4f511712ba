"""What a task is: seeded problems in disjoint train/test splits, an R1-Zero prompt, and one verifier.

The verifier (`Task.score`) is the single place a completion is judged: the RL accuracy/format rewards and the
evaluation metrics both call it, so they can never drift apart (as nanochat's tasks do).

Format, as R1-Zero asks: the completion holds its reasoning inside `<think>...</think>` and then the answer inside
`<answer>...</answer>`, with nothing but white space around them.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Protocol

SPLITS = ("train", "test")

# The R1-Zero template (DeepSeek-R1 paper, table 1), and a compact form for tiny models whose context is short.
# `{question}` is replaced by the problem's text. The assistant's turn begins at the end of the prompt.
TEMPLATES = {
    "r1-zero": (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
        "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
        "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
        "User: {question}. Assistant:"
    ),
    # Same contract, fewer tokens: the tiny built-in models see every prompt thousands of times.
    "r1-zero-compact": "User: {question}. Reason in <think> </think>, answer in <answer> </answer>. Assistant:",
}

# One think block then one answer block; neither may contain another tag.
_FORMAT_RE = re.compile(
    r"^\s*<think>((?:(?!</?think>|</?answer>).)*)</think>\s*<answer>((?:(?!</?think>|</?answer>).)*)</answer>\s*$",
    re.DOTALL,
)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class Problem:
    """One problem: a stable id, the question shown to the model, and the reference answer."""

    id: str
    question: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Score:
    """The verdict on one completion. `answer` is the extracted, normalised answer (used for majority vote)."""

    correct: bool
    formatted: bool
    answer: str | None


class Task(Protocol):
    """The interface every task implements (see arithmetic.py for the reference implementation)."""

    name: str
    template: str

    def problems(self, split: str, n: int | None, seed: int = 0) -> list[Problem]:
        """`n` problems of the split (all of them when n is None, for finite tasks)."""
        ...

    def prompt(self, problem: Problem) -> str: ...

    def score(self, problem: Problem, completion: str) -> Score: ...

    def solution(self, problem: Problem, rng: random.Random) -> str:
        """A worked completion (think + answer) for the synthetic pre-training corpus; may be imperfect."""
        ...


def check_template(template: str) -> str:
    """A template is a key of TEMPLATES or a literal string containing `{question}`; else a UserError."""
    from r1kit.errors import UserError

    if template not in TEMPLATES and "{question}" not in template:
        raise UserError(
            f"unknown template {template!r}: use one of {', '.join(TEMPLATES)} "
            "or a string containing {question}"
        )
    return template


def render_prompt(template: str, question: str) -> str:
    """Fill a template (a key of TEMPLATES, or a literal string containing `{question}`)."""
    text = TEMPLATES.get(template, template)
    return text.replace("{question}", question)


def is_formatted(completion: str) -> bool:
    """True when the completion is exactly `<think>...</think> <answer>...</answer>` (white space aside)."""
    return _FORMAT_RE.match(completion) is not None


def extract_answer(completion: str) -> str | None:
    """The text of the last `<answer>...</answer>`, stripped; None when there is none."""
    found = _ANSWER_RE.findall(completion)
    return found[-1].strip() if found else None


def think_text(completion: str) -> str:
    """The reasoning inside `<think>...</think>` (or the whole completion when the tags are missing)."""
    m = re.search(r"<think>(.*?)</think>", completion, re.DOTALL)
    return m.group(1) if m else completion


def split_of(key: str, test_percent: int = 10) -> str:
    """Deterministic split of a problem key: the same key is always in the same split, so splits never share one."""
    bucket = int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") % 100
    return "test" if bucket < test_percent else "train"


def check_split(split: str) -> None:
    from r1kit.errors import UserError

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def sample_problems(
    make, split: str, n: int, seed: int, test_percent: int = 10, max_tries: int = 200
) -> list:
    """Draw `n` distinct problems of `split` from a seeded generator `make(rng) -> Problem` by rejection.

    The split of a problem is a hash of its id, so a problem drawn for one split can never appear in the other.
    Raises UserError when the problem space is too small to give `n` distinct problems.
    """
    from r1kit.errors import UserError

    check_split(split)
    rng = random.Random(f"{seed}:{split}")
    seen: dict[str, Problem] = {}
    tries = 0
    while len(seen) < n:
        tries += 1
        if tries > max_tries * max(n, 1):
            raise UserError(
                f"only {len(seen)} distinct {split} problems could be drawn (asked for {n}): "
                "ask for fewer, or raise the task's difficulty so there are more problems"
            )
        p = make(rng)
        if p.id not in seen and split_of(p.id, test_percent) == split:
            seen[p.id] = p
    return list(seen.values())

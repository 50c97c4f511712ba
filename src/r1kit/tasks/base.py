"""What a task is: seeded problems in disjoint train/test splits, a prompt format, and one verifier.

The verifier (`Task.score`) is the single place a completion is judged: the RL accuracy/format rewards and the
evaluation metrics both call it, so they can never drift apart (as nanochat's tasks do).

Every task carries the same four format options (`FORMAT_OPTIONS`, see tasks/formats.py): `prompt_format`
(auto | chat | r1-zero | r1-zero-compact | a literal template), `answer_format` (auto | think-answer |
think-boxed | boxed | gsm8k), `system` (a system prompt for chat) and `instruction` (appended to the question).
`auto` is resolved against the tokenizer by r1kit/tasks/prompting.py; until then a task answers in its raw template's
format, R1-Zero's `<think>...</think> <answer>...</answer>`.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Protocol

from r1kit.tasks.formats import (  # noqa: F401  (re-exported: the names tasks have always imported from here)
    ANSWER_FORMATS,
    AUTO,
    CHAT,
    TEMPLATES,
    check_answer_format,
    check_prompt_format,
    read_answer,
)

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Problem:
    """One problem: a stable id, the question shown to the model, and the reference answer."""

    id: str
    question: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Score:
    """The verdict on one completion. `answer` is the extracted, normalised answer (used for majority vote).
    `execution`: for tasks that run the completion's program, the sandbox's Result (status, cpu_s, wall_s), which
    the RL loop's ledger and run doctor read; None otherwise."""

    correct: bool
    formatted: bool
    answer: str | None
    execution: object = field(default=None, compare=False, repr=False)


class Task(Protocol):
    """The interface every task implements (see arithmetic.py for the reference implementation)."""

    name: str
    template: str  # the raw template, used when prompt_format is auto and the tokenizer has no chat template
    prompt_format: str
    answer_format: str
    system: str
    instruction: str

    def problems(self, split: str, n: int | None, seed: int = 0) -> list[Problem]:
        """`n` problems of the split (all of them when n is None, for finite tasks)."""
        ...

    def prompt(self, problem: Problem) -> str:
        """The question in the raw template (chat prompts are rendered by r1kit/tasks/prompting.py)."""
        ...

    def score(self, problem: Problem, completion: str) -> Score: ...

    # Optional: `score_many(problems, completions) -> list[Score]`, the same verdicts for many completions at once
    # (the code tasks run them in parallel in the sandbox); callers use it when a task has it (score_all below).

    def solution(self, problem: Problem, rng: random.Random) -> str:
        """A worked completion (think + answer) for the synthetic pre-training corpus; may be imperfect."""
        ...


FORMAT_OPTIONS = ("prompt_format", "answer_format", "system", "instruction")


def check_template(template: str) -> str:
    """A raw template is a key of TEMPLATES or a literal string containing `{question}`; else a UserError."""
    from r1kit.errors import UserError

    if template not in TEMPLATES and "{question}" not in template:
        raise UserError(
            f"unknown template {template!r}: use one of {', '.join(TEMPLATES)} "
            "or a string containing {question}"
        )
    return template


def check_formats(task) -> None:
    """Check a task's four format options (UserError on a bad one)."""
    from r1kit.errors import UserError

    check_prompt_format(task.prompt_format)
    check_answer_format(task.answer_format)
    if not isinstance(task.system, str) or not isinstance(task.instruction, str):
        raise UserError("system and instruction must be strings")


def answer_format_of(task) -> str:
    """The task's answer format; `auto` before r1kit/tasks/prompting.py resolved it means the raw template's."""
    fmt = getattr(task, "answer_format", AUTO)
    return "think-answer" if fmt == AUTO else fmt


def read(task, completion: str) -> tuple[str | None, bool]:
    """(answer text or None, well formed) of a completion in the task's answer format."""
    return read_answer(answer_format_of(task), completion)


def raw_template(task) -> str:
    """The raw template a task's prompt uses without a tokenizer: its prompt_format when that is a template name
    or a literal template, else its `template`."""
    fmt = getattr(task, "prompt_format", AUTO)
    return task.template if fmt in (AUTO, CHAT) else fmt


def raw_prompt(task, problem) -> str:
    """A problem in the task's raw template, with its instruction (the text prompt of tokenizer-free code)."""
    from r1kit.tasks.formats import instruction_text, with_instruction

    text = instruction_text(getattr(task, "instruction", AUTO) or "none", answer_format_of(task))
    return render_prompt(raw_template(task), with_instruction(problem.question, text))


def render_prompt(template: str, question: str) -> str:
    """Fill a template (a key of TEMPLATES, or a literal string containing `{question}`)."""
    text = TEMPLATES.get(template, template)
    return text.replace("{question}", question)


def is_formatted(completion: str) -> bool:
    """True when the completion is exactly `<think>...</think> <answer>...</answer>` (white space aside)."""
    return read_answer("think-answer", completion)[1]


def extract_answer(completion: str) -> str | None:
    """The text of the last `<answer>...</answer>`, stripped; None when there is none."""
    return read_answer("think-answer", completion)[0]


def think_text(completion: str) -> str:
    """The reasoning inside `<think>...</think>` (or the whole completion when the tags are missing)."""
    m = re.search(r"<think>(.*?)</think>", completion, re.DOTALL)
    return m.group(1) if m else completion


def split_of(key: str, test_percent: int = 10) -> str:
    """Deterministic split of a problem key: the same key is always in the same split, so splits never share one."""
    bucket = int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") % 100
    return "test" if bucket < test_percent else "train"


def score_all(task, problems: list[Problem], completions: list[str]) -> list[Score]:
    """`task.score` of each (problem, completion) pair, through the task's `score_many` when it has one."""
    if hasattr(task, "score_many"):
        return task.score_many(problems, completions)
    return [task.score(p, c) for p, c in zip(problems, completions)]


def sandbox_usage(scores: list[Score]) -> dict:
    """What the sandbox spent on these scores, as ledger fields ({} when none ran a program)."""
    runs = [s.execution for s in scores if s.execution is not None]
    if not runs:
        return {}
    statuses = [r.status for r in runs]
    return {"sandbox_cpu_s": sum(r.cpu_s for r in runs), "executions": len(runs),
            "timeouts": statuses.count("timeout"), "crashes": statuses.count("error")}


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

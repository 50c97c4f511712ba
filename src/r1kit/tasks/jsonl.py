"""Your own data: a JSONL file of questions with reference answers, judged by math-verify.

Each line is a JSON object with a prompt and an answer (keys configurable), optionally an "id", a "split"
("train" or "test", overriding the hash split) and a worked "solution" (or "reasoning") for the pre-training corpus:

    {"id": "q1", "prompt": "What is 1/2 + 1/4?", "answer": "\\frac{3}{4}", "split": "test"}

`r1kit eval` reads the whole file (its `eval_split` is `all`), or its test lines when lines name their splits.

A bad line (not JSON, not an object, a missing or empty prompt or answer, a duplicated prompt or id, a bad split)
is rejected as `FILE:LINE: reason`: all of them are kept in `task.rejected` and the first ten are logged as warnings
(logger `r1kit.tasks.jsonl`); every good line is kept. An unreadable file, or one without a single good line,
raises UserError.

Answers are compared with math-verify (`\\frac{1}{2}`, `0.5` and `1/2` agree; so do `\\boxed{2}` and `2`). Both
sides are read as LaTeX math first (`$...$`) and as plain text only when that finds nothing: read as text first,
`10^{6}` and `2\\pi` would parse as 10 and 2. math-verify's timeouts use SIGALRM, which only the main thread may
set, so elsewhere it runs without them; answers that are towers of powers (9^{9^{9^9}}, which sympy would try to
evaluate for ever) are screened out first, so no thread hangs on them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import threading
from decimal import Decimal
from functools import lru_cache

from r1kit.errors import UserError
from r1kit.tasks.base import (
    SPLITS,
    Problem,
    Score,
    check_formats,
    check_split,
    check_template,
    raw_prompt,
    read,
    split_of,
)

logger = logging.getLogger(__name__)

_LOGGED_REJECTS = 10  # rejected lines logged one by one; the rest are counted (all are in `task.rejected`)
_TIMEOUT_S = 5  # math-verify's per-call timeout, in the main thread
_MAX_MAGNITUDE = 10_000  # an answer whose |log10| may exceed this (10,000+ digits) is not compared
_GENERIC_THINKS = (
    "Let me work through the question step by step and check the result.",
    "I read the question carefully, solve it, and verify the answer.",
    "Let me think about what is asked, compute it, and double-check.",
)
# A number then one plain word ("18 dollars", "#### 5 cookies"): math-verify drops \text{...} and the units it
# knows ("5 cm", "3 apples") but reads other words as products of symbols (18*a*do*l*l*r*s), so the same answer
# would be right or wrong by its unit. The word is read as \text{} would be; one-letter words may be variables.
_NUMBER_THEN_WORD = re.compile(r"^\s*(\S*\d)\s+([A-Za-z]{2,})\s*\.?\s*$")


class JsonlTask:
    """Problems read from a JSONL file; see the module docstring for the format."""

    name = "jsonl"
    finite = True  # a fixed set of problems: evaluation reads all of them unless asked for a sample

    def __init__(
        self,
        path: str | os.PathLike,
        template: str = "r1-zero",
        test_percent: int = 10,
        prompt_key: str = "prompt",
        answer_key: str = "answer",
        prompt_format: str = "auto",
        answer_format: str = "auto",
        system: str = "",
        instruction: str = "auto",
    ):
        self.path = os.fspath(path)
        self.template = check_template(template)
        self.test_percent = test_percent
        self.prompt_key = prompt_key
        self.answer_key = answer_key
        self.prompt_format, self.answer_format = prompt_format, answer_format  # tasks/formats.py
        self.system, self.instruction = system, instruction
        check_formats(self)
        self.rejected: list[str] = []  # "FILE:LINE: reason", one per rejected line
        self._splits: dict[str, list[Problem]] = {split: [] for split in SPLITS}
        self._named_splits = False  # True when a line names its split
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8-sig") as f:
                lines = list(f)
        except OSError as e:
            raise UserError(
                f"cannot read {self.path} ({e.strerror or e}): give the path of a JSONL file"
            ) from e
        except UnicodeDecodeError as e:
            raise UserError(f"{self.path} is not UTF-8 text: save it as UTF-8 JSONL") from e
        line_of_prompt: dict[str, int] = {}
        line_of_id: dict[str, int] = {}
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = self._parse_line(line)
            if isinstance(row, dict) and row["prompt"] in line_of_prompt:
                row = f"duplicate of line {line_of_prompt[row['prompt']]}"
            elif isinstance(row, dict) and row["id"] in line_of_id:
                row = f"duplicate id {row['id']!r} (first on line {line_of_id[row['id']]})"
            if isinstance(row, str):
                self.rejected.append(f"{self.path}:{lineno}: {row}")
                continue
            line_of_prompt[row["prompt"]] = lineno
            if row["id"] is not None:
                line_of_id[row["id"]] = lineno
            self._named_splits = self._named_splits or row["split"] is not None
            split = row["split"] or split_of(row["id"] or row["prompt"], self.test_percent)
            problem_id = "jsonl/" + (row["id"] or hashlib.sha1(row["prompt"].encode()).hexdigest()[:12])
            meta = {"line": lineno, "solution": row["solution"]}
            self._splits[split].append(Problem(problem_id, row["prompt"], row["answer"], meta))
        self._report(kept=sum(map(len, self._splits.values())))

    def _report(self, kept: int) -> None:
        if kept == 0:
            why = f"first rejected line: {self.rejected[0]}" if self.rejected else "the file is empty"
            raise UserError(
                f"no usable line in {self.path} ({why}): each line must be a JSON object with a "
                f'"{self.prompt_key}" and an "{self.answer_key}" (or set prompt_key/answer_key to its names)'
            )
        for message in self.rejected[:_LOGGED_REJECTS]:
            logger.warning("rejected %s", message)
        if self.rejected:
            more = len(self.rejected) - _LOGGED_REJECTS
            unshown = f" ({more} not shown; JsonlTask.rejected lists them all)" if more > 0 else ""
            logger.warning("%s: kept %d lines, rejected %d%s", self.path, kept, len(self.rejected), unshown)

    def _parse_line(self, line: str) -> dict | str:
        """The fields of one line, or the reason it is rejected."""
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            return f"not valid JSON ({e.msg} at column {e.colno})"
        if not isinstance(row, dict):
            return "not a JSON object"
        prompt, answer = row.get(self.prompt_key), row.get(self.answer_key)
        if prompt is None:
            return f'missing "{self.prompt_key}"'
        if not isinstance(prompt, str):
            return f'"{self.prompt_key}" is not a string'
        if not prompt.strip():
            return f'empty "{self.prompt_key}"'
        if answer is None:
            return f'missing "{self.answer_key}"'
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            if not math.isfinite(answer):
                return f'"{self.answer_key}" is not a finite number'
            answer = format(Decimal(repr(answer)), "f")  # 0.5 -> "0.5", 1e20 -> "100000000000000000000"
        if not isinstance(answer, str):
            return f'"{self.answer_key}" is not a string or a number'
        if not answer.strip():
            return f'empty "{self.answer_key}"'
        split = row.get("split")
        if split is not None and split not in SPLITS:
            return f'"split" must be "train" or "test", not {split!r}'
        row_id = row.get("id")
        if row_id is not None and (type(row_id) not in (str, int) or row_id == ""):  # type(): bools are ints
            return '"id" must be a non-empty string or an integer'
        solution = row.get("solution") or row.get("reasoning")
        return {
            "prompt": prompt.strip(),
            "answer": answer.strip(),
            "id": None if row_id is None else str(row_id),
            "split": split,
            "solution": solution.strip() if isinstance(solution, str) and solution.strip() else None,
        }

    @property
    def eval_split(self) -> str:
        """What evaluation reads: the test split when lines name their splits, else every line (`all`)."""
        return "test" if self._named_splits else "all"

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """The problems of `split` (train, test, or all of them), shuffled by `seed`; the first `n` (all of them
        when n is None, <= 0 or more)."""
        if split != "all":
            check_split(split)
        problems = self._splits["train"] + self._splits["test"] if split == "all" else list(self._splits[split])
        random.Random(seed).shuffle(problems)
        return problems if n is None or n <= 0 else problems[:n]

    def prompt(self, problem: Problem) -> str:
        return raw_prompt(self, problem)

    def score(self, problem: Problem, completion: str) -> Score:
        """Correct iff math-verify finds the `<answer>` equal to the reference (format is scored apart)."""
        return math_score(self, problem, completion)

    def solution(self, problem: Problem, rng: random.Random) -> str:
        """The row's own solution when it has one, else a generic sentence, then the reference answer."""
        return math_solution(problem, rng)


def math_score(task, problem: Problem, completion: str) -> Score:
    """The verdict of math-verify on the answer read in the task's answer format (shared by the data tasks)."""
    text, formatted = read(task, completion)
    if not text:
        return Score(correct=False, formatted=formatted, answer=None)
    pred, gold = parse_answer(text), parse_answer(problem.answer)
    correct = bool(pred and gold) and _verify(gold, pred)
    return Score(correct=correct, formatted=formatted, answer=normalise(text, pred))


def math_solution(problem: Problem, rng: random.Random) -> str:
    """The problem's own worked solution (meta) when it has one, else a generic sentence, then the answer."""
    think = problem.meta.get("solution") or rng.choice(_GENERIC_THINKS)
    return f"<think> {think} </think> <answer>{problem.answer}</answer>"


# ---- math-verify, guarded ----------------------------------------------------------------------------------


def _timeout_s() -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere it runs without them."""
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _magnitude(expr) -> float:
    """An upper bound on |log10 |expr|| for a sympy expression, found without evaluating it (sympy would)."""
    if getattr(expr, "is_Rational", False):
        return max(math.log10(abs(expr.p) or 1), math.log10(expr.q))
    if getattr(expr, "is_Float", False):
        try:
            value = abs(float(expr))
        except (OverflowError, TypeError, ValueError):
            return math.inf
        return abs(math.log10(value)) if 0 < value < math.inf else (0.0 if value == 0 else math.inf)
    args = [_magnitude(arg) for arg in getattr(expr, "args", ())]
    if getattr(expr, "is_Pow", False):
        base, exponent = args  # |log10 |b^e|| = |e| * |log10 |b|| and |e| <= 10**(magnitude of e)
        return max(exponent, math.inf if exponent > 300 else base * 10**exponent)
    if getattr(expr, "is_Add", False):
        return max(args) + math.log10(len(args))
    if getattr(expr, "is_Mul", False):
        return sum(args)
    return max(args, default=0.0)


@lru_cache(maxsize=16384)
def parse_answer(text: str) -> tuple:
    """math-verify's reading of an answer (sympy objects, then strings); () when it finds nothing or too much."""
    from math_verify import parse
    from math_verify.errors import TimeoutException

    text = _NUMBER_THEN_WORD.sub(r"\1\\text{ \2}", text)
    for candidate in (f"${text}$", text):
        try:
            parsed = parse(candidate, parsing_timeout=_timeout_s())
        except (Exception, TimeoutException):  # TimeoutException is a BaseException
            parsed = []
        if parsed:
            if any(_magnitude(item) > _MAX_MAGNITUDE for item in parsed if not isinstance(item, str)):
                return ()
            return tuple(parsed)
    return ()


def _verify(gold: tuple, pred: tuple) -> bool:
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        return bool(verify(list(gold), list(pred), timeout_seconds=_timeout_s()))
    except (Exception, TimeoutException):
        return False


def normalise(text: str, parsed: tuple) -> str:
    """A key for majority voting: the parsed value when it is free of symbols (floats made exact, so 0.5 and 1/2
    agree), else the text with its white space collapsed (math-verify would read `banana` as a*a*a*b*n*n)."""
    import sympy

    value = parsed[0] if parsed else None
    if isinstance(value, sympy.Symbol):  # `\\text{5}` is read as a symbol named 5: vote with the number 5
        try:
            value = sympy.Rational(value.name)
        except (TypeError, ValueError):
            pass
    if value is None or isinstance(value, str) or getattr(value, "free_symbols", True):
        text = " ".join(text.split())
        wrapped = re.fullmatch(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}", text)  # \text{banana} votes with banana
        return wrapped.group(1).strip() if wrapped else text
    if isinstance(value, sympy.Float):
        value = sympy.nsimplify(value, rational=True)
    return str(value)

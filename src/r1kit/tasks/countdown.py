"""Countdown, as in TinyZero: reach a target from a few numbers with + - * / and parentheses.

After TinyZero (github.com/Jiayi-Pan/TinyZero), the task on which small models first showed R1-Zero's "aha"
behaviour. A problem is a multiset of numbers and a target that some combination of all of them reaches; the
model answers with an expression, e.g. `(25-5)*3` for [25, 5, 3] -> 60.

Departures from TinyZero:
- each number may be used *at most* once (TinyZero: exactly once), as in the TV game;
- numbers are drawn from 1..max_value and targets kept in 1..max_target (knobs), never equal to one of the numbers;
- the numbers are shown sorted, largest first, so that a problem is its id and permutations are one problem;
- the answer is parsed with `ast` (never eval) and evaluated exactly with `Fraction`: only integer literals,
  binary + - * / and parentheses; `-3`, `2**10`, `7//2` and names are wrong answers, not errors.
"""

from __future__ import annotations

import ast
import operator
import random
import re
from collections import Counter
from fractions import Fraction
from itertools import combinations

from r1kit.errors import UserError
from r1kit.tasks.base import (
    Problem,
    Score,
    check_formats,
    check_template,
    raw_prompt,
    read,
    sample_problems,
)

_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3  # precedence of a bare number
_ALLOWED_CHARS = re.compile(r"[0-9+\-*/() ]+")
_MAX_ANSWER_CHARS = 200  # far beyond any honest answer; bounds the parser's work on junk
_ID_RE = re.compile(r"countdown/([0-9,]+)->([0-9]+)")


# ---- exact evaluation of an answer --------------------------------------------------------------------------


def _evaluate_node(node: ast.AST, leaves: list[int]) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        return _AST_OPS[type(node.op)](_evaluate_node(node.left, leaves), _evaluate_node(node.right, leaves))
    if isinstance(node, ast.Constant) and type(node.value) is int:
        leaves.append(node.value)
        return Fraction(node.value)
    raise ValueError(f"not allowed in an answer: {type(node).__name__}")


def evaluate(expression: str, numbers: list[int]) -> Fraction | None:
    """The exact value of `expression`, or None unless it is + - * / ( ) over `numbers`, each used at most once.

    Division by zero, unary minus, powers, names, calls and any other syntax give None; nothing is executed.
    """
    if len(expression) > _MAX_ANSWER_CHARS or not _ALLOWED_CHARS.fullmatch(expression):
        return None
    leaves: list[int] = []
    try:
        value = _evaluate_node(ast.parse(expression, mode="eval").body, leaves)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None
    if Counter(leaves) - Counter(numbers):  # a number not given, or used more often than given
        return None
    return value


# ---- exhaustive solver --------------------------------------------------------------------------------------


# A node is (value, how): how is the number itself for a leaf, or (op, left node, right node). Plain tuples, and
# ints in the integer pass, keep the search cheap; expressions and steps are rendered only for the solution found.
_Value = int | Fraction
_SearchNode = tuple  # (value, int | tuple[str, _SearchNode, _SearchNode])


def _apply(a: _Value, op: str, b: _Value, integers_only: bool) -> _Value | None:
    """`a op b`, or None for division by zero (or, when `integers_only`, a fraction or a negative)."""
    if integers_only:
        if op == "-":
            return a - b if a >= b else None
        if op == "/":
            return a // b if b and a % b == 0 else None
    elif op == "/" and b == 0:
        return None
    return _ARITHMETIC[op](a, b)


def _render(node: _SearchNode) -> tuple[str, int]:
    """The expression of a node with only the parentheses it needs, and its precedence."""
    value, how = node
    if not isinstance(how, tuple):
        return str(how), _ATOM
    op, a, b = how
    (left, left_prec), (right, right_prec), prec = _render(a), _render(b), _PRECEDENCE[op]
    left = left if left_prec >= prec else f"({left})"
    # a-(b+c) and a/(b*c) keep their parentheses; a+(b-c) and a*(b/c) do not need them
    right = right if right_prec > prec or (right_prec == prec and op in "+*") else f"({right})"
    return f"{left}{op}{right}", prec


def _steps(node: _SearchNode) -> list[str]:
    """The steps that build a node, e.g. ['25-5=20', '20*3=60']."""
    value, how = node
    if not isinstance(how, tuple):
        return []
    op, a, b = how
    return _steps(a) + _steps(b) + [f"{a[0]}{op}{b[0]}={value}"]


def _search(nodes: tuple, target: int, ops_left: int, integers_only: bool, seen: set) -> _SearchNode | None:
    for node in nodes:
        if node[0] == target:
            return node
    key = (tuple(sorted(node[0] for node in nodes)), ops_left)
    if ops_left == 0 or key in seen:
        return None
    seen.add(key)  # the values left decide what is reachable, whatever expressions produced them
    for i, j in combinations(range(len(nodes)), 2):
        a, b = nodes[i], nodes[j]
        rest = nodes[:i] + nodes[i + 1 : j] + nodes[j + 1 :]
        for x, op, y in ((a, "+", b), (a, "*", b), (a, "-", b), (b, "-", a), (a, "/", b), (b, "/", a)):
            value = _apply(x[0], op, y[0], integers_only)
            if value is not None:
                found = _search(((value, (op, x, y)),) + rest, target, ops_left - 1, integers_only, seen)
                if found is not None:
                    return found
    return None


def _solve_node(numbers: list[int], target: int) -> _SearchNode | None:
    """The shortest solution, preferring one whose every step is a non-negative integer (Countdown's own rule)."""
    for integers_only in (True, False):
        leaves = tuple((x if integers_only else Fraction(x), x) for x in numbers)
        seen: set = set()
        for ops in range(len(numbers)):  # iterative deepening: fewest operations first
            found = _search(leaves, target, ops, integers_only, seen)
            if found is not None:
                return found
    return None


def solve(numbers: list[int], target: int) -> str | None:
    """An expression reaching `target` with + - * / and each of `numbers` at most once; None if none exists.

    Exhaustive (memoised on the multiset of values left), so fine for up to 5 numbers.
    """
    node = _solve_node(numbers, target)
    return None if node is None else _render(node)[0]


# ---- the task -----------------------------------------------------------------------------------------------


def _parse_id(problem_id: str) -> tuple[list[int], int]:
    m = _ID_RE.fullmatch(problem_id)
    if m is None:
        raise ValueError(f"not a countdown problem id: {problem_id!r}")
    return [int(x) for x in m.group(1).split(",")], int(m.group(2))


class CountdownTask:
    """Countdown problems: numbers in 1..max_value, a reachable integer target in 1..max_target."""

    name = "countdown"

    def __init__(
        self,
        numbers: int = 3,
        max_value: int = 50,
        max_target: int = 999,
        template: str = "r1-zero-compact",
        test_percent: int = 10,
        prompt_format: str = "auto",
        answer_format: str = "auto",
        system: str = "",
        instruction: str = "auto",
    ):
        if not 2 <= numbers <= 5:
            raise UserError(f"countdown numbers={numbers}: use 2 to 5 numbers per problem")
        if max_value < 2 or max_target < 2:
            raise UserError(f"countdown max_value={max_value}, max_target={max_target}: both must be >= 2")
        if not 0 <= test_percent <= 100:
            raise UserError(f"countdown test_percent={test_percent}: use a percentage from 0 to 100")
        self.numbers = numbers  # how many numbers a problem gives
        self.max_value = max_value  # numbers are drawn from 1..max_value (repeats allowed)
        self.max_target = max_target  # targets are integers in 1..max_target
        self.template = check_template(template)
        self.test_percent = test_percent
        self.prompt_format, self.answer_format = prompt_format, answer_format  # tasks/formats.py
        self.system, self.instruction = system, instruction
        check_formats(self)

    def _make(self, rng: random.Random) -> Problem:
        """Draw numbers, combine all of them at random until one value is left, keep it if it is a fit target."""
        while True:
            numbers = sorted((rng.randint(1, self.max_value) for _ in range(self.numbers)), reverse=True)
            values = [Fraction(x) for x in numbers]
            while len(values) > 1:
                a = values.pop(rng.randrange(len(values)))
                b = values.pop(rng.randrange(len(values)))
                op = rng.choice("+-*/")
                values.append(_ARITHMETIC["*" if op == "/" and b == 0 else op](a, b))
            target = values[0]
            if target.denominator == 1 and 1 <= target <= self.max_target and target not in numbers:
                target = int(target)
                break
        listed = ", ".join(map(str, numbers))
        return Problem(
            id=f"countdown/{','.join(map(str, numbers))}->{target}",
            question=f"Using the numbers [{listed}], create an equation that equals {target}. "
            "Use + - * / and each number at most once",
            answer=solve(numbers, target),
        )

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        return sample_problems(self._make, split, n, seed, self.test_percent)

    def prompt(self, problem: Problem) -> str:
        return raw_prompt(self, problem)

    def score(self, problem: Problem, completion: str) -> Score:
        """Correct iff the `<answer>` expression reaches the target from the given numbers (format scored apart)."""
        text, formatted = read(self, completion)
        if not text:
            return Score(correct=False, formatted=formatted, answer=None)
        numbers, target = _parse_id(problem.id)
        correct = evaluate(text, numbers) == target
        return Score(correct=correct, formatted=formatted, answer="".join(text.split()))

    def solution(self, problem: Problem, rng: random.Random) -> str:
        """A short search: 0-2 failed tries of random steps, then the solver's steps, then the expression."""
        numbers, target = _parse_id(problem.id)
        found = _solve_node(numbers, target)
        if found is None:
            raise ValueError(f"{problem.id} has no solution")
        tries = [_failed_try(numbers, target, rng) for _ in range(rng.randint(0, 2))]
        failed = [", ".join(steps) + ", no." for steps in tries if steps]
        think = " ".join([*failed, ", ".join(_steps(found)) + ", yes."])
        return f"<think> {think} </think> <answer>{_render(found)[0]}</answer>"


def _failed_try(numbers: list[int], target: int, rng: random.Random) -> list[str]:
    """Steps combining all the numbers at random (larger first, integers only); [] if they happen to hit the target."""
    nodes = [(x, x) for x in numbers]
    while len(nodes) > 1:
        a = nodes.pop(rng.randrange(len(nodes)))
        b = nodes.pop(rng.randrange(len(nodes)))
        if a[0] < b[0]:
            a, b = b, a
        op = rng.choice("+-*/")
        value = _apply(a[0], op, b[0], integers_only=True)
        if value is None:
            op, value = "+", a[0] + b[0]
        if value == target:
            return []
        nodes.append((value, (op, a, b)))
    return _steps(nodes[0])

"""Multi-digit addition and multiplication, with worked column-by-column solutions.

Problems: `a+b[+c]` (operands up to `digits` digits, `operands` terms) and `a*b` (a up to `digits` digits, b up to
`mul_digits` digits). The reference answer is the exact integer; the verifier accepts it with thousands separators
or spaces and a leading `+`.

`solution()` writes the pre-training corpus of the tiny base models. To give RL something real to improve (as the
R1-Zero base had), the corpus mixes three ways of answering, chosen at the first word of the reasoning:

- `careful` (share `p_careful`): every column written out, with carries; always right.
- `sloppy`: the same columns, but each carry is dropped with probability 1/2; wrong whenever a dropped carry mattered.
- `guess`: no working, just a claimed answer, right only half the time.

and a share `p_bad_format` of completions that break the format (no `<answer>` tags, or text after them). A model
trained on it is competent but unreliable; RL with the rule reward can learn to prefer careful, formatted working.
This is our departure from the paper, whose base model learnt from web text: here the base is built in minutes.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

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

# How a question is asked. Pretrained chat models answer "What is 47+5?" far better than a bare "47+5"
# (SmolLM2-135M-Instruct: the sum right in ~20% of 96 probe samples against 13.5%).
_ASK = {"bare": "{expr}", "what-is": "What is {expr}?"}

_INT_RE = re.compile(r"^[+]?\s*(-?\d[\d, ]*)$")


def parse_int(text: str | None) -> int | None:
    """An integer from an answer string: `1,234`, `1 234`, `+42`, `-7`; None when it is not one."""
    if text is None:
        return None
    m = _INT_RE.match(text.strip())
    if not m:
        return None
    digits = m.group(1).replace(",", "").replace(" ", "")
    try:
        return int(digits)
    except ValueError:
        return None


def _digits(n: int) -> list[int]:
    """Digits of n, least significant first."""
    return [int(c) for c in reversed(str(n))]


def add_steps(terms: list[int], drop_carry: float, rng: random.Random) -> tuple[list[str], int]:
    """Column addition of `terms`; each non-zero carry is dropped with probability `drop_carry`.

    Each step restates what is left of the terms, adds their last digits and the carry, and extends the result
    so far, e.g. `76+9: 6+9=15 c1 r59`: every number a step needs stands in the step before it, so a small
    model copies locally instead of searching the question. Returns the steps and the value they reach.
    """
    steps, partial, carry, i = [], "", 0, 0
    while any(t // 10**i for t in terms) or i == 0:
        rest = [t // 10**i for t in terms]
        digits = [str(r % 10) for r in rest] + ([str(carry)] if carry else [])
        total = sum(r % 10 for r in rest) + carry
        partial = str(total % 10) + partial
        carry = total // 10
        if carry and rng.random() < drop_carry:
            carry = 0
        steps.append(f"{'+'.join(str(r) for r in rest)}: {'+'.join(digits)}={total} c{carry} r{partial}")
        i += 1
    value = int((str(carry) if carry else "") + partial)
    return steps, value


def mul1_steps(a: int, b: int, drop_carry: float, rng: random.Random) -> tuple[list[str], int]:
    """`a` times the single digit `b`, one digit of `a` a step (e.g. `76*7: 6*7+5=47 c4 r76`)."""
    steps, partial, carry, rest = [], "", 0, a
    while True:
        d = rest % 10
        total = d * b + carry
        expr = f"{d}*{b}" + (f"+{carry}" if carry else "")
        partial = str(total % 10) + partial
        carry = total // 10
        if carry and rng.random() < drop_carry:
            carry = 0
        steps.append(f"{rest}*{b}: {expr}={total} c{carry} r{partial}")
        rest //= 10
        if rest == 0:
            break
    return steps, int((str(carry) if carry else "") + partial)


@dataclass
class ArithmeticTask:
    """Addition and multiplication; knobs set the difficulty and the base-model corpus mixture."""

    digits: int = 3  # most digits of each addend / of the multiplicand
    operands: int = 2  # terms in an addition
    mul_digits: int = 1  # most digits of the multiplier
    min_digits: int = 1  # fewest digits of every operand (capped by its most): 4 with digits=6, mul_digits=4 asks
    # products of 4-6-digit by 4-digit numbers (recipes/tiny-tools.toml: beyond a tiny model's head, not Python's)
    ops: str = "+*"  # which operations appear
    template: str = "r1-zero-compact"  # the raw template (prompt_format auto without a chat template)
    prompt_format: str = "auto"  # auto | chat | r1-zero | r1-zero-compact | a literal template (tasks/formats.py)
    answer_format: str = "auto"  # auto | think-answer | think-boxed | boxed | gsm8k
    system: str = ""  # system prompt of a chat prompt
    instruction: str = "auto"  # appended to the question: auto | r1-math | none | literal text
    ask: str = "bare"  # how the question reads: bare ("47+5", the tiny models' corpus) | what-is ("What is 47+5?")
    test_percent: int = 10
    p_careful: float = 0.3  # corpus share of careful working
    p_sloppy: float = 0.35  # corpus share of working that may drop carries (the rest guesses)
    p_bad_format: float = 0.2  # corpus share of completions that break the format
    name: str = "arithmetic"

    def __post_init__(self) -> None:
        check_template(self.template)
        check_formats(self)
        for name in ("digits", "mul_digits", "min_digits", "operands", "test_percent"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise UserError(f"arithmetic: {name} must be a whole number, got {value!r}")
        if not 0 < self.test_percent < 100 or not 0 <= self.p_bad_format <= 1:
            raise UserError("arithmetic: test_percent must be in 1..99 and p_bad_format in [0, 1]")
        if not 1 <= self.digits <= 12 or not 1 <= self.mul_digits <= 6 or not 2 <= self.operands <= 5 \
                or not 1 <= self.min_digits <= self.digits:
            raise UserError("arithmetic: digits must be 1..12, mul_digits 1..6, operands 2..5, min_digits 1..digits")
        if self.ask not in _ASK:
            raise UserError(f"arithmetic: ask={self.ask!r}; use one of {', '.join(_ASK)}")
        if not self.ops or set(self.ops) - {"+", "*"}:
            raise UserError(f"arithmetic: ops={self.ops!r}; use '+', '*' or '+*'")
        if self.p_careful + self.p_sloppy > 1 or min(self.p_careful, self.p_sloppy, self.p_bad_format) < 0:
            raise UserError("arithmetic: p_careful + p_sloppy must be at most 1, and shares non-negative")

    # -- problems -------------------------------------------------------------------------------------
    def _make(self, rng: random.Random) -> Problem:
        op = rng.choice(self.ops)
        if op == "+":
            terms = [self._operand(rng, self.digits, 1) for _ in range(self.operands)]
            answer = sum(terms)
        else:
            terms = [self._operand(rng, self.digits, 2), self._operand(rng, self.mul_digits, 2)]
            answer = terms[0] * terms[1]
        expr = op.join(str(t) for t in terms)
        return Problem(
            id=f"arithmetic/{expr}",  # the same problem, so the same split, however it is asked
            question=_ASK[self.ask].format(expr=expr),
            answer=str(answer),
            meta={"op": op, "terms": terms},
        )

    def _operand(self, rng: random.Random, most: int, least: int) -> int:
        """A number of min_digits..most digits (uniform in its digit count), at least `least`; with min_digits = 1
        the same draw as before the knob existed (same problems, same splits)."""
        if self.min_digits <= 1:
            return rng.randint(least, 10 ** rng.randint(1, most) - 1)
        d = rng.randint(min(self.min_digits, most), most)
        return rng.randint(max(least, 10 ** (d - 1)), 10**d - 1)

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        return sample_problems(self._make, split, n, seed, self.test_percent)

    def prompt(self, problem: Problem) -> str:
        return raw_prompt(self, problem)

    # -- verifier -------------------------------------------------------------------------------------
    def score(self, problem: Problem, completion: str) -> Score:
        answer, formatted = read(self, completion)
        value = parse_int(answer)
        return Score(
            correct=value is not None and value == int(problem.answer),
            formatted=formatted,
            answer=None if value is None else str(value),
        )

    # -- worked solutions for the base corpus ---------------------------------------------------------
    def working(self, problem: Problem, drop_carry: float, rng: random.Random) -> tuple[list[str], int]:
        """Written steps solving the problem, and the value they reach (wrong if a carry was dropped)."""
        op, terms = problem.meta.get("op"), problem.meta.get("terms")
        if op is None:  # a Problem rebuilt from its id
            before, _, after = _ASK[self.ask].partition("{expr}")
            expr = (problem.id.removeprefix("arithmetic/") if problem.id.startswith("arithmetic/")
                    else problem.question.removeprefix(before).removesuffix(after))
            op = "*" if "*" in expr else "+"
            terms = [int(t) for t in expr.split(op)]
        if op == "+":
            return add_steps(terms, drop_carry, rng)
        a, b = terms
        if b < 10:
            return mul1_steps(a, b, drop_carry, rng)
        steps, partials = [], []
        for shift, d in enumerate(_digits(b)):
            s, v = mul1_steps(a, d, drop_carry, rng)
            shifted = f", shift {v}{'0' * shift}" if shift else ""
            steps += s + [f"{a}*{d}={v}{shifted}"]
            partials.append(v * 10**shift)
        s, v = add_steps(partials, drop_carry, rng)
        return steps + s, v

    def solution(self, problem: Problem, rng: random.Random) -> str:
        u = rng.random()
        if u < self.p_careful:
            steps, value = self.working(problem, 0.0, rng)
            think = "careful: " + ". ".join(steps) + f". so {value}"
        elif u < self.p_careful + self.p_sloppy:
            steps, value = self.working(problem, 0.5, rng)
            think = "quick: " + ". ".join(steps) + f". so {value}"
        else:
            value = int(problem.answer)
            if rng.random() < 0.5:  # a guess that is off in one digit
                value += rng.choice([-1, 1]) * 10 ** rng.randrange(len(str(value)))
                value = abs(value)
            think = f"guess: about {value}"
        if rng.random() < self.p_bad_format:
            if rng.random() < 0.5:
                return f"<think> {think} </think> answer: {value}"
            return f"<think> {think} </think> <answer>{value}</answer> done"
        return f"<think> {think} </think> <answer>{value}</answer>"

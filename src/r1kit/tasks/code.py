"""What the code tasks share: reading a program out of a completion, and judging many programs in the sandbox.

A program is read in the task's answer format (tasks/formats.py): with r1kit's think-answer template, from
`<answer>` (a ``` fence inside it is unwrapped); with the `code` format (chat models' default for these tasks),
from the last ```python block. A completion is correct iff its program passes in r1kit.sandbox; the sandbox's
Result rides along on the Score (`execution`), for the ledger and the run doctor. `judge` runs a batch through
the sandbox's pool, so the G completions of an RL step are judged in parallel. Pure Python (layer 0).
"""

from __future__ import annotations

from collections.abc import Callable

from r1kit.sandbox import Job, Result, run_many
from r1kit.tasks.base import Problem, Score, read
from r1kit.tasks.formats import last_fenced

MAX_PROGRAM_CHARS = 20_000  # beyond any honest answer here; junk is not worth a sandbox


def program_of(task, completion: str) -> tuple[str | None, bool]:
    """(the program, or None when there is none, well formed) of a completion in the task's answer format."""
    text, formatted = read(task, completion)
    if text is None:
        return None, formatted
    fenced = last_fenced(text)
    program = (fenced if fenced is not None else text).strip("\n")
    return (program if program.strip() else None), formatted


def judge(task, problems: list[Problem], completions: list[str],
          job_of: Callable[[Problem, str], Job]) -> list[Score]:
    """Scores of many completions: their programs run in the sandbox together; no program, no execution."""
    read_out = [program_of(task, c) for c in completions]
    todo = [i for i, (prog, _) in enumerate(read_out) if prog is not None and len(prog) <= MAX_PROGRAM_CHARS]
    results: dict[int, Result] = dict(zip(todo, run_many([job_of(problems[i], read_out[i][0]) for i in todo])))
    scores = []
    for i, (program, formatted) in enumerate(read_out):
        result = results.get(i)
        scores.append(Score(correct=result is not None and result.passed, formatted=formatted,
                            answer=" ".join(program.split()) if program else None, execution=result))
    return scores

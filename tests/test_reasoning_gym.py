"""rg:DATASET tasks: reasoning-gym's generators behind r1kit's splits, answer formats and verifier.

Skipped without reasoning-gym. A few seconds in all: the scorer's child process starts once (about 2 s), and
countdown, the slow generator (about 40 problems/s), is asked for few problems.
"""

import random
import time

import pytest

pytest.importorskip("reasoning_gym")

from r1kit.errors import UserError  # noqa: E402
from r1kit.tasks import get_task, parse_task_spec, task_options  # noqa: E402
from r1kit.tasks import reasoning_gym as rg  # noqa: E402
from r1kit.tasks.base import Problem, split_of  # noqa: E402

SPECS = ["rg:basic_arithmetic", "rg:gsm_symbolic", "rg:countdown", "rg:propositional_logic", "rg:chain_sum"]
TRAIN = {"rg:countdown": 40}  # train problems drawn per dataset (default 300); test gets a tenth
WRAPPERS = {  # answer format -> a completion holding the answer in it
    "think-answer": "<think>x</think> <answer>{}</answer>",
    "think-boxed": "<think>x</think> So the answer is \\boxed{{{}}}.",
    "boxed": "The answer is \\boxed{{{}}}.",
    "gsm8k": "some working\n#### {}",
}


@pytest.fixture(scope="module", params=SPECS)
def drawn(request):
    task = get_task(request.param)
    n = TRAIN.get(request.param, 300)
    return task, task.problems("train", n), task.problems("test", n // 10)


def test_splits_are_disjoint_and_distinct(drawn):
    task, train, test = drawn
    assert len(train) == TRAIN.get(task.name, 300) and len(test) == len(train) // 10
    for split, problems in (("train", train), ("test", test)):
        assert len({p.id for p in problems}) == len({p.question for p in problems}) == len(problems)
        assert all(split_of(p.question, task.test_percent) == split for p in problems)
    assert not {p.id for p in train} & {p.id for p in test}
    assert not {p.question for p in train} & {p.question for p in test}
    assert not {p.question for p in task.problems("test", 2, seed=1)} & {p.question for p in train}


def test_reference_answer_is_correct_in_every_answer_format(drawn):
    task, train, test = drawn
    for fmt, wrapper in WRAPPERS.items():
        task.answer_format = fmt
        for p in train[:5] + test[:2]:
            score = task.score(p, wrapper.format(p.answer))
            assert score.correct and score.formatted, (fmt, p.answer)
    task.answer_format = "auto"


def test_wrong_or_missing_answers_score_zero(drawn):
    task, train, _ = drawn
    p = train[0]
    wrong = str(int(p.answer) + 1) if p.answer.lstrip("-").isdigit() else "Z + not an answer"
    assert not task.score(p, f"<think>x</think> <answer>{wrong}</answer>").correct
    missing = task.score(p, f"<think>x</think> {p.answer}")
    assert (missing.correct, missing.formatted, missing.answer) == (False, False, None)


def test_worked_solution_is_correct(drawn):
    task, train, _ = drawn
    rng = random.Random(0)
    assert all(task.score(p, task.solution(p, rng)).correct for p in train[:5])


def test_problems_are_deterministic_and_extend():
    task = get_task("rg:chain_sum")
    first = task.problems("train", 50, seed=3)
    rg._STREAMS.clear()  # generated afresh, not read from the cache
    assert get_task("rg:chain_sum").problems("train", 50, seed=3) == first
    assert task.problems("train", 80, seed=3)[:50] == first
    assert task.problems("train", 50, seed=4) != first


def test_knobs_pass_through():
    task = get_task("rg:basic_arithmetic:min_terms=2,max_terms=2,operators=+|-,allow_parentheses=false")
    assert task._config == {"min_terms": 2, "max_terms": 2, "operators": ("+", "-"), "allow_parentheses": False}
    problems = task.problems("train", 50)
    assert all(p.meta["entry"]["metadata"]["num_terms"] == 2 for p in problems)
    assert not any(c in p.question for p in problems for c in "*/()")
    assert task_options(task)["knobs"] == {"min_terms": 2, "max_terms": 2, "operators": "+|-",
                                           "allow_parentheses": "false"}
    assert get_task("rg:chain_sum:test_percent=50").test_percent == 50


def test_parse_task_spec():
    assert parse_task_spec("rg:chain_sum") == ("rg", {"dataset": "chain_sum"})
    assert parse_task_spec("rg:chain_sum:max_terms=3,template=r1-zero-compact") == (
        "rg", {"dataset": "chain_sum", "max_terms": 3, "template": "r1-zero-compact"})
    assert parse_task_spec("arithmetic:digits=2") == ("arithmetic", {"digits": 2})


@pytest.mark.parametrize(
    "spec, match",
    [
        ("rg", "rg:DATASET"),
        ("rg:", "rg:DATASET"),
        ("rg:max_terms=3", "rg:DATASET"),
        ("rg:chain_sum,max_terms=3", "rg:DATASET"),
        ("rg:basic_arithmetc", "did you mean basic_arithmetic"),
        ("rg:composite", "no such reasoning-gym dataset"),
        ("rg:chain_sum:bogus=1", "unknown knob 'bogus'.*min_terms, max_terms"),
        ("rg:chain_sum:seed=3", "set by r1kit"),
        ("rg:basic_arithmetic:allow_parentheses=maybe", "true or false"),
        ("rg:chain_sum:min_terms=5,max_terms=2", "reasoning-gym rejects the knobs"),
        ("rg:chain_sum:test_percent=0", "1..99"),
        ("rg:chain_sum:answer_format=nope", "answer format"),
    ],
)
def test_bad_specs_are_one_line_user_errors(spec, match):
    with pytest.raises(UserError, match=match) as e:
        get_task(spec)
    assert "\n" not in str(e.value)


def test_too_few_or_no_problems_is_a_user_error():
    task = get_task("rg:chain_sum:min_terms=2,max_terms=2,min_digits=1,max_digits=1,allow_negation=false")
    with pytest.raises(UserError, match="distinct train problems"):
        task.problems("train", 1000)
    impossible = get_task("rg:countdown:min_numbers=2,max_numbers=2,max_value=2,min_target=900,max_target=999")
    with pytest.raises(UserError, match="could not generate a question with these knobs"):
        impossible.problems("train", 1)


def test_without_reasoning_gym_it_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "reasoning_gym", None)  # `import reasoning_gym` fails
    with pytest.raises(UserError, match=r"^rg:chain_sum: reasoning-gym is not installed: pip install 'r1kit\[rg\]'$"):
        get_task("rg:chain_sum")


def test_no_reference_answer_means_no_worked_solution():
    task = get_task("rg:chain_sum")
    problem = task.problems("train", 1)[0]
    bare = Problem(problem.id, problem.question, "", problem.meta)
    with pytest.raises(UserError, match="no reference answer"):
        task.solution(bare, random.Random(0))
    assert rg.reference_answer({"answer": None, "metadata": {"possible_answer": {"0": 1}}}) == '{"0": 1}'


def test_an_answer_that_computes_for_ever_is_cut_off(monkeypatch):
    task = get_task("rg:countdown")
    problem = task.problems("train", 1)[0]
    monkeypatch.setattr(rg, "_TIMEOUT_S", 0.5)
    t0 = time.perf_counter()
    assert not task.score(problem, "<think>x</think> <answer>9**9**9</answer>").correct  # sympy would run minutes
    assert time.perf_counter() - t0 < 5
    assert task.score(problem, f"<think>x</think> <answer>{problem.answer}</answer>").correct  # a fresh child


@pytest.mark.slow
def test_evaluate_end_to_end(tiny_model, tokenizer):
    from r1kit.config import EvalConfig
    from r1kit.evaluation.evaluate import evaluate

    task = get_task("rg:basic_arithmetic:template=r1-zero-compact")
    result = evaluate(tiny_model, tokenizer, task, EvalConfig(n=8, k=2, max_new_tokens=8), progress=False)
    m = result["metrics"]
    assert m["problems"] == 8 and m["samples"] == 16
    assert 0.0 <= m["pass@1"] <= m["pass@2"] <= 1.0 and 0.0 <= m["format_rate"] <= 1.0
    assert result["task"] == "rg:basic_arithmetic" and result["formats"]["answer_format"] == "think-answer"

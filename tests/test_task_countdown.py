"""Countdown: the safe exact evaluator, the solver, problem generation and the verifier (no torch, milliseconds)."""

import random
from fractions import Fraction

import pytest

from r1kit.errors import UserError
from r1kit.tasks.base import Problem, is_formatted
from r1kit.tasks.countdown import CountdownTask, evaluate, solve

NUMBERS = [25, 5, 3]
PROBLEM = Problem(id="countdown/25,5,3->60", question="", answer="(25-5)*3")


def done(answer: str) -> str:
    return f"<think> trying </think> <answer>{answer}</answer>"


@pytest.mark.parametrize(
    "expression, numbers, value",
    [
        ("(25-5)*3", NUMBERS, Fraction(60)),
        ("25 - 5 * 3", NUMBERS, Fraction(10)),
        ("25+5", NUMBERS, Fraction(30)),  # a number may go unused
        ("25/3*3", [25, 3, 3], Fraction(25)),  # exact: 25/3 is a fraction, times 3 is 25 again
        ("8/(3-8/3)", [8, 8, 3, 3], Fraction(24)),
        ("5*5", [5, 5], Fraction(25)),  # a repeated number may be used as often as it is given
        ("5*5", NUMBERS, None),  # ... but no more
        ("25+4", NUMBERS, None),  # 4 is not given
        ("25/(5-5)", [25, 5, 5], None),  # division by zero
        ("-5+25", NUMBERS, None),  # unary minus
        ("+5", NUMBERS, None),
        ("5**3", NUMBERS, None),  # power
        ("2**10", [2, 10], None),
        ("25//3", NUMBERS, None),  # floor division
        ("25%3", NUMBERS, None),
        ("__import__('os')", NUMBERS, None),  # names and calls never run
        ("abs(5)", NUMBERS, None),
        ("x", NUMBERS, None),
        ("25.0+5", NUMBERS, None),
        ("05+25", NUMBERS, None),  # leading zero: not Python syntax
        ("25 5", NUMBERS, None),
        ("(25-5)*3=60", NUMBERS, None),
        ("", NUMBERS, None),
        ("()", NUMBERS, None),
        ("(" * 150 + "5" + ")" * 150, NUMBERS, None),  # too long / too deep: refused, not a crash
        ("25\t+5", NUMBERS, None),
    ],
)
def test_evaluate(expression, numbers, value):
    assert evaluate(expression, numbers) == value


@pytest.mark.parametrize(
    "completion, correct, formatted, answer",
    [
        (done("(25-5)*3"), True, True, "(25-5)*3"),
        (done(" (25 - 5) * 3 "), True, True, "(25-5)*3"),
        (done("3*(25-5)"), True, True, "3*(25-5)"),
        ("<answer>(25-5)*3</answer>", True, False, "(25-5)*3"),  # correctness does not need the format
        ("I think (25-5)*3", False, False, None),  # an answer outside the tags does not count
        ("<think> (25-5)*3 </think>", False, False, None),
        (done(""), False, True, None),
        (done("25*3-5*3"), False, True, "25*3-5*3"),  # 60, but 3 is used twice
        (done("(25-5)*3*1"), False, True, "(25-5)*3*1"),  # 1 is not given
        (done("25+5"), False, True, "25+5"),  # valid expression, wrong value
        (done("60"), False, True, "60"),
        (done("__import__('os').system('true')"), False, True, "__import__('os').system('true')"),
        ("<answer>5</answer> <answer>(25-5)*3</answer>", True, False, "(25-5)*3"),  # the last answer counts
    ],
)
def test_score(completion, correct, formatted, answer):
    score = CountdownTask().score(PROBLEM, completion)
    assert (score.correct, score.formatted, score.answer) == (correct, formatted, answer)


@pytest.mark.parametrize(
    "numbers, target",
    [
        ([25, 5, 3], 60),
        ([25, 5, 3], 30),
        ([8, 8, 3, 3], 24),
        ([4, 4, 10, 10], 24),
        ([50, 7, 1], 349),
        ([3, 1], 3),
    ],
)
def test_solve_finds_a_valid_expression(numbers, target):
    expression = solve(numbers, target)
    assert expression is not None and evaluate(expression, numbers) == target


def test_solve_prefers_short_integer_solutions_and_says_none_when_there_is_none():
    assert solve([25, 5, 3], 30) == "25+5"
    assert solve([3, 3], 3) == "3"
    assert solve([1, 1, 1], 997) is None
    assert solve([2, 3], 7) is None


def test_problems_are_seeded_distinct_and_well_formed():
    task = CountdownTask()
    train = task.problems("train", 200, seed=3)
    assert train == task.problems("train", 200, seed=3)
    assert train != task.problems("train", 200, seed=4)
    assert len({p.id for p in train}) == 200
    p = train[0]
    numbers = sorted((int(x) for x in p.id.split("/")[1].split("->")[0].split(",")), reverse=True)
    target = int(p.id.split("->")[1])
    assert p.question == (
        f"Using the numbers {numbers}, create an equation that equals {target}. "
        "Use + - * / and each number at most once"
    )
    assert task.prompt(p).startswith(f"User: {p.question}. Reason in <think> </think>")


def test_train_and_test_never_share_a_problem():
    task = CountdownTask()
    train = {p.id for p in task.problems("train", 2000)}
    test = {p.id for p in task.problems("test", 200)}
    assert len(train) == 2000 and len(test) == 200 and not train & test


@pytest.mark.parametrize(
    "knobs",
    [{}, {"numbers": 4}, {"numbers": 2, "max_value": 20, "max_target": 50}, {"numbers": 5, "max_value": 9}],
)
def test_every_reference_answer_and_every_solution_is_correct(knobs):
    task = CountdownTask(**knobs)
    rng = random.Random(0)
    for p in task.problems("train", 30 if knobs.get("numbers") == 5 else 100):
        numbers = [int(x) for x in p.id.split("/")[1].split("->")[0].split(",")]
        target = int(p.id.split("->")[1])
        assert len(numbers) == task.numbers and all(1 <= x <= task.max_value for x in numbers)
        assert 1 <= target <= task.max_target and target not in numbers
        assert task.score(p, done(p.answer)).correct
        completion = task.solution(p, rng)
        score = task.score(p, completion)
        assert is_formatted(completion) and score.formatted and score.correct, completion
        assert len(completion.split()) < 60


def test_solution_is_deterministic_given_rng_and_shows_a_search():
    task = CountdownTask()
    problems = task.problems("train", 50)
    first = [task.solution(p, random.Random(7)) for p in problems]
    assert first == [task.solution(p, random.Random(7)) for p in problems]
    assert task.solution(PROBLEM, random.Random(0)).endswith(", yes. </think> <answer>(25-5)*3</answer>")
    assert any(", no. " in s for s in first)  # some solutions show a failed try first


@pytest.mark.parametrize(
    "knobs",
    [{"numbers": 1}, {"numbers": 6}, {"max_value": 1}, {"max_target": 0}, {"test_percent": 101}],
)
def test_bad_knobs_are_user_errors(knobs):
    with pytest.raises(UserError):
        CountdownTask(**knobs)

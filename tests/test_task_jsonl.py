"""JsonlTask: loading (bad lines rejected as FILE:LINE, good ones kept), splits, and math-verify scoring."""

import json
import logging
import random
import threading

import pytest

from r1kit.errors import UserError
from r1kit.tasks.base import Problem, is_formatted, split_of
from r1kit.tasks.jsonl import JsonlTask


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def done(answer: str) -> str:
    return f"<think> working </think> <answer>{answer}</answer>"


def problem(answer: str) -> Problem:
    return Problem(id="jsonl/x", question="q", answer=answer)


@pytest.fixture
def task(tmp_path):
    return JsonlTask(write(tmp_path, [{"prompt": "p", "answer": "1"}]))


GOOD = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(5)]
BAD = [  # (line, reason the message must contain)
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ({"answer": "1"}, 'missing "prompt"'),
    ({"prompt": "  ", "answer": "1"}, 'empty "prompt"'),
    ({"prompt": 7, "answer": "1"}, '"prompt" is not a string'),
    ({"prompt": "What is 9?"}, 'missing "answer"'),
    ({"prompt": "What is 8?", "answer": ""}, 'empty "answer"'),
    ({"prompt": "What is 6?", "answer": True}, '"answer" is not a string or a number'),
    ({"prompt": "What is 5?", "answer": "5", "split": "dev"}, '"split" must be "train" or "test"'),
    ({"prompt": "What is 0 + 1?", "answer": "1"}, "duplicate of line 1"),
]


def test_bad_lines_are_rejected_with_file_and_line_and_good_lines_survive(tmp_path, caplog):
    lines = GOOD[:2] + ["", "   "] + [line for line, _ in BAD] + GOOD[2:]
    path = write(tmp_path, lines)
    with caplog.at_level(logging.WARNING, logger="r1kit.tasks.jsonl"):
        task = JsonlTask(path)
    assert len(task.rejected) == len(BAD)
    for i, (message, (_, reason)) in enumerate(zip(task.rejected, BAD)):
        assert message.startswith(f"{path}:{i + 5}: ") and reason in message, (
            message
        )  # blank lines 3, 4 skipped
    assert all(message in caplog.text for message in task.rejected)
    assert f"kept 5 lines, rejected {len(BAD)}" in caplog.text
    kept = task.problems("train", None) + task.problems("test", None)
    assert sorted(p.question for p in kept) == sorted(row["prompt"] for row in GOOD)


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "the file is empty"),
        (["", "  "], "the file is empty"),
        ([{"question": "q", "answer": "1"}, "{"], 'data.jsonl:1: missing "prompt"'),
    ],
)
def test_a_file_without_a_good_line_is_a_user_error(tmp_path, lines, message):
    with pytest.raises(UserError, match="no usable line") as e:
        JsonlTask(write(tmp_path, lines))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read .*nope.jsonl"):
        JsonlTask(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="cannot read"):
        JsonlTask(tmp_path)  # a directory


def test_keys_ids_numbers_and_solutions(tmp_path):
    path = write(
        tmp_path,
        [
            {"question": "Half of one?", "target": 0.5, "id": 17, "solution": "One split in two."},
            {"question": "Big?", "target": 1e20},
            {"question": "Seven?", "target": 7, "reasoning": "Count to seven."},
        ],
    )
    task = JsonlTask(path, prompt_key="question", answer_key="target", test_percent=0)
    by_question = {p.question: p for p in task.problems("train", 0)}
    half, big, seven = by_question["Half of one?"], by_question["Big?"], by_question["Seven?"]
    assert (half.id, half.answer, big.answer, seven.answer) == (
        "jsonl/17",
        "0.5",
        "100000000000000000000",
        "7",
    )
    assert big.id.startswith("jsonl/") and len(big.id) == len("jsonl/") + 12
    rng = random.Random(0)
    assert task.solution(half, rng) == "<think> One split in two. </think> <answer>0.5</answer>"
    assert task.solution(seven, rng) == "<think> Count to seven. </think> <answer>7</answer>"
    generic = task.solution(big, rng)
    assert is_formatted(generic) and task.score(big, generic).correct
    assert task.prompt(half).startswith("A conversation between User and Assistant.")
    assert task.prompt(half).endswith("User: Half of one?. Assistant:")


def test_duplicate_ids_are_rejected(tmp_path):
    task = JsonlTask(
        write(
            tmp_path, [{"id": "a", "prompt": "p1", "answer": "1"}, {"id": "a", "prompt": "p2", "answer": "2"}]
        )
    )
    assert len(task.rejected) == 1 and task.rejected[0].endswith(":2: duplicate id 'a' (first on line 1)")


def test_splits_are_disjoint_seeded_and_overridable(tmp_path):
    rows = [{"prompt": f"Question {i}?", "answer": str(i)} for i in range(300)]
    rows += [
        {"prompt": "Forced test?", "answer": "1", "split": "test"},
        {"id": "t", "prompt": "Forced train?", "answer": "2", "split": "train"},
    ]
    task = JsonlTask(write(tmp_path, rows), test_percent=20)
    train, test = task.problems("train", None), task.problems("test", -1)
    assert len(train) + len(test) == 302 and not {p.id for p in train} & {p.id for p in test}
    assert "Forced test?" in {p.question for p in test} and "Forced train?" in {p.question for p in train}
    for p in train + test:
        if p.question.startswith("Question"):
            assert split_of(p.question, 20) == ("train" if p in train else "test")
    assert 30 < len(test) < 90  # about 20%
    assert task.problems("train", 10, seed=1) == task.problems("train", 10, seed=1)
    assert task.problems("train", 10, seed=1) != task.problems("train", 10, seed=2)
    assert task.problems("test", 10_000) == task.problems("test", None)  # more than there are: all of them
    with pytest.raises(UserError):
        task.problems("dev", 1)


@pytest.mark.parametrize(
    "reference, answer, correct",
    [
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "1/2", True),
        ("1/2", "\\frac{1}{2}", True),
        ("0.5", "\\dfrac12", True),
        ("\\boxed{3}", "3", True),
        ("3", "\\boxed{3}", True),
        ("1000", "1,000", True),
        ("3", "x = 3", True),
        ("2\\pi", "2\\pi", True),
        ("$\\frac{1}{2}$", "0.5", True),
        ("72", "\\$72", True),
        ("3", "4", False),
        ("3", "3.5", False),
        ("10^{6}", "10", False),  # read as LaTeX first: not 10
        ("2\\pi", "2", False),
        ("\\frac{1}{3}", "0.333", False),
        ("3", "three-ish", False),
        ("2", "9^{9^{9^{9}}}", False),  # screened out: sympy would evaluate it for ever
        ("2", "10^{10^{5}}", False),
    ],
)
def test_score_uses_math_verify(task, reference, answer, correct):
    assert task.score(problem(reference), done(answer)).correct is correct


def test_score_format_answer_and_majority_key(task):
    assert task.score(problem("2"), "2").answer is None  # no tags: no answer
    assert not task.score(problem("2"), "The answer is 2").correct
    unformatted = task.score(problem("2"), "<answer>2</answer>")
    assert unformatted.correct and not unformatted.formatted
    keys = {task.score(problem("0.5"), done(a)).answer for a in ("0.5", "1/2", "\\frac{1}{2}", "0.50")}
    assert keys == {"1/2"}
    assert task.score(problem("2"), done("  banana ")).answer == "banana"
    assert task.score(problem("2"), done("")).answer is None


def test_score_works_outside_the_main_thread(task):
    results = []  # answers not seen by other tests, so math-verify really runs (parses are cached)
    thread = threading.Thread(
        target=lambda: results.append(task.score(problem("\\frac{3}{12}"), done("0.250")))
    )
    thread.start()
    thread.join(timeout=60)
    assert results and results[0].correct

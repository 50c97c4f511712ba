"""Task machinery and the arithmetic task: format check, answer extraction, splits, verifier, worked solutions.

Pure Python, milliseconds.
"""

import random

import pytest

from r1kit.errors import UserError
from r1kit.tasks import TASKS, get_task, parse_task_spec, task_options
from r1kit.tasks.arithmetic import ArithmeticTask, parse_int
from r1kit.tasks.base import (
    Problem,
    extract_answer,
    is_formatted,
    render_prompt,
    sample_problems,
    split_of,
    think_text,
)

# -- format ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>a</think><answer>5</answer>", True),
        ("<think> a </think> <answer> 5 </answer>", True),
        ("  \n<think>a</think>\n\n<answer>5</answer>\n\t ", True),  # white space around the blocks
        ("<think>line one\nline two</think>\n<answer>\n5\n</answer>", True),  # newlines inside
        ("<think>3 < 4 and 5 > 2</think><answer>5</answer>", True),  # angle brackets that are not tags
        ("<think>a</think><answer>5</answer>\n", True),
        ("", False),
        ("5", False),
        ("<answer>5</answer>", False),  # no think block
        ("<think>a</think>", False),  # no answer block
        ("<think>a</think> 5", False),
        ("<think>a</think> answer: 5", False),
        ("<think>a</think><answer>5", False),  # unclosed answer
        ("<think>a<answer>5</answer>", False),  # unclosed think
        ("<think>a</think><answer>5</answer> done", False),  # text after </answer>
        ("sure. <think>a</think><answer>5</answer>", False),  # text before <think>
        ("<think>a</think> so <answer>5</answer>", False),  # text between the blocks
        ("<answer>5</answer><think>a</think>", False),  # wrong order
        ("<think>a</think><answer>5</answer><answer>6</answer>", False),  # repeated answer
        ("<think>a</think><think>b</think><answer>5</answer>", False),  # repeated think
        ("<think>a <think>b</think></think><answer>5</answer>", False),  # nested think
        ("<think>a</think><answer>5 <answer>6</answer></answer>", False),  # nested answer
        ("<think>a <answer>4</answer></think><answer>5</answer>", False),  # answer inside think
        ("<think>a</think><answer>5 </think></answer>", False),  # a stray tag inside the answer
        ("<THINK>a</THINK><ANSWER>5</ANSWER>", False),  # tags are case-sensitive
    ],
)
def test_is_formatted(completion, expected):
    assert is_formatted(completion) is expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>a</think><answer>5</answer>", "5"),
        ("<answer>  42 \n</answer>", "42"),  # stripped
        ("<answer>1</answer> then <answer> 2 </answer>", "2"),  # the last answer wins
        ("<answer>\n1\n2\n</answer>", "1\n2"),
        ("<think>a</think><answer>5</answer> done", "5"),  # text after does not matter here
        ("<answer></answer>", ""),
        ("<think>a</think> answer: 5", None),
        ("<answer>5", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_think_text():
    assert think_text("<think> step </think><answer>1</answer>") == " step "
    assert think_text("no tags at all") == "no tags at all"


def test_render_prompt():
    assert "2+3" in render_prompt("r1-zero", "2+3")
    assert render_prompt("r1-zero-compact", "2+3").startswith("User: 2+3.")
    assert render_prompt("Q: {question} A:", "2+3") == "Q: 2+3 A:"


# -- splits ----------------------------------------------------------------------------------------------


def test_split_of_is_deterministic_and_about_ten_percent():
    keys = [f"arithmetic/{i}+{j}" for i in range(100) for j in range(50)]
    first = [split_of(k) for k in keys]
    assert first == [split_of(k) for k in keys]
    assert set(first) == {"train", "test"}
    assert 0.08 < first.count("test") / len(first) < 0.12


def test_split_of_extremes():
    keys = [f"k{i}" for i in range(500)]
    assert {split_of(k, test_percent=0) for k in keys} == {"train"}
    assert {split_of(k, test_percent=100) for k in keys} == {"test"}


def test_arithmetic_splits_are_disjoint_over_thousands_of_problems():
    task = ArithmeticTask()
    train = task.problems("train", 3000, seed=0)
    test = task.problems("test", 300, seed=0)
    assert len(train) == 3000 and len(test) == 300
    train_ids, test_ids = {p.id for p in train}, {p.id for p in test}
    assert len(train_ids) == 3000 and len(test_ids) == 300  # distinct within a split
    assert not train_ids & test_ids
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(split_of(i) == "train" for i in train_ids)
    assert all(split_of(i) == "test" for i in test_ids)
    # another seed draws other problems, but still never a test one
    other = task.problems("train", 3000, seed=1)
    assert not {p.id for p in other} & test_ids


def test_sample_problems_is_seeded():
    task = ArithmeticTask()
    a = task.problems("train", 200, seed=3)
    assert a == task.problems("train", 200, seed=3)
    assert [p.meta for p in a] == [p.meta for p in task.problems("train", 200, seed=3)]
    assert a != task.problems("train", 200, seed=4)
    # a prefix of a longer draw: asking for more does not reshuffle what came first
    assert task.problems("train", 50, seed=3) == a[:50]


def test_sample_problems_space_too_small():
    task = ArithmeticTask(digits=1, ops="+")  # 81 problems, about 8 of them in test
    with pytest.raises(UserError, match="distinct"):
        task.problems("test", 50, seed=0)


def test_sample_problems_unknown_split():
    with pytest.raises(UserError, match="split"):
        sample_problems(ArithmeticTask()._make, "validation", 3, seed=0)


# -- verifier --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5", 5),
        ("0", 0),
        ("007", 7),
        ("1,234", 1234),
        ("1 234", 1234),
        ("12,345,678", 12345678),
        ("+42", 42),
        ("-7", -7),
        ("  99  ", 99),
        ("12a", None),
        ("a12", None),
        ("3.0", None),
        ("1e3", None),
        ("--5", None),
        ("-", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_int(text, expected):
    assert parse_int(text) == expected


def _problem(question: str, answer: int) -> Problem:
    op = "*" if "*" in question else "+"
    return Problem(
        id=f"arithmetic/{question}",
        question=question,
        answer=str(answer),
        meta={"op": op, "terms": [int(t) for t in question.split(op)]},
    )


@pytest.mark.parametrize(
    "question, answer, completion, correct, formatted, extracted",
    [
        ("2+3", 5, "<think> 2+3=5 </think> <answer>5</answer>", True, True, "5"),
        ("2+3", 5, "<think> 2+3=6 </think> <answer>6</answer>", False, True, "6"),
        ("2+3", 5, "<think> 2+3=5 </think> answer: 5", False, False, None),  # no tags: no answer
        ("2+3", 5, "<think> x </think> <answer>five</answer>", False, True, None),
        ("2+3", 5, "<answer>5</answer>", True, False, "5"),  # right but unformatted
        ("2+3", 5, "<think> x </think> <answer>5</answer> done", True, False, "5"),
        ("2+3", 5, "<answer>4</answer> <answer>5</answer>", True, False, "5"),  # the last answer counts
        ("617+617", 1234, "<think> x </think> <answer> 1,234 </answer>", True, True, "1234"),
        ("617+617", 1234, "<think> x </think> <answer>+1 234</answer>", True, True, "1234"),
        ("2*3", 6, "<think> x </think> <answer>-6</answer>", False, True, "-6"),
    ],
)
def test_arithmetic_score(question, answer, completion, correct, formatted, extracted):
    score = ArithmeticTask().score(_problem(question, answer), completion)
    assert (score.correct, score.formatted, score.answer) == (correct, formatted, extracted)


def test_problems_are_well_formed():
    task = ArithmeticTask(digits=4, operands=3, mul_digits=2)
    for p in task.problems("train", 300, seed=0):
        op = p.meta["op"]
        terms = [int(t) for t in p.question.split(op)]
        assert terms == p.meta["terms"]
        expected = sum(terms) if op == "+" else terms[0] * terms[1]
        assert int(p.answer) == expected
        assert p.id == f"arithmetic/{p.question}"
        if op == "+":
            assert len(terms) == 3 and all(1 <= t < 10**4 for t in terms)
        else:
            assert 2 <= terms[0] < 10**4 and 2 <= terms[1] < 10**2


# -- worked solutions ------------------------------------------------------------------------------------

CAREFUL = {"p_careful": 1.0, "p_sloppy": 0.0, "p_bad_format": 0.0}
SLOPPY = {"p_careful": 0.0, "p_sloppy": 1.0, "p_bad_format": 0.0}


@pytest.mark.parametrize(
    "knobs",
    [
        {"digits": 6, "operands": 3, "ops": "+"},  # addition
        {"digits": 5, "mul_digits": 1, "ops": "*"},  # one-digit multiplier
        {"digits": 4, "mul_digits": 2, "ops": "*"},  # multi-digit multiplier: partials, then their sum
        {"digits": 3, "mul_digits": 3, "ops": "*"},
    ],
)
def test_careful_solutions_are_formatted_and_correct(knobs):
    task = ArithmeticTask(**knobs, **CAREFUL)
    rng = random.Random(0)
    for p in task.problems("train", 200, seed=0):
        completion = task.solution(p, rng)
        score = task.score(p, completion)
        assert score.formatted and score.correct, (p.question, completion)


def test_careful_working_of_a_problem_rebuilt_from_its_id():
    task = ArithmeticTask(mul_digits=2, ops="*", **CAREFUL)
    bare = Problem(id="arithmetic/987*65", question="987*65", answer=str(987 * 65))  # no meta
    assert task.score(bare, task.solution(bare, random.Random(0))).correct


def test_ask_what_is_keeps_the_problems_and_their_split():
    bare = get_task("arithmetic:digits=2,ops=+")
    asked = get_task("arithmetic:digits=2,ops=+,ask=what-is", answer_format="boxed")
    for split in ("train", "test"):
        a, b = bare.problems(split, 50, seed=3), asked.problems(split, 50, seed=3)
        assert [p.id for p in a] == [p.id for p in b]
        assert [f"What is {p.question}?" for p in a] == [p.question for p in b]
    p = asked.problems("test", 1)[0]
    assert asked.score(p, f"so the answer is \\boxed{{{p.answer}}}").correct
    careful = ArithmeticTask(digits=3, ops="+", ask="what-is", **CAREFUL)
    rebuilt = Problem(id="", question="What is 487+65?", answer="552")  # neither meta nor an id: the question
    assert careful.score(rebuilt, careful.solution(rebuilt, random.Random(0))).correct


def _column_carry(terms: list[int]) -> bool:
    """Does adding `terms` column by column ever carry? (The first carry comes from a column whose digits alone
    reach 10, so no carry propagation is needed.) Independent of the task's code and its step format."""
    return any(sum(t // 10**i % 10 for t in terms) >= 10 for i in range(len(str(max(terms)))))


def _has_carry(problem: Problem) -> bool:
    terms = problem.meta["terms"]
    if problem.meta["op"] == "+":
        return _column_carry(terms)
    a, b = terms
    digits_a, digits_b = [int(c) for c in str(a)], [int(c) for c in str(b)]
    if any(x * y >= 10 for x in digits_a for y in digits_b):  # a carry in one of the partial products
        return True
    partials = [a * d * 10**shift for shift, d in enumerate(reversed(digits_b))]
    return len(partials) > 1 and _column_carry(partials)  # a carry adding the partial products


@pytest.mark.parametrize(
    "knobs",
    [
        {"digits": 4, "operands": 2, "ops": "+"},
        {"digits": 3, "operands": 3, "ops": "+"},
        {"digits": 4, "mul_digits": 1, "ops": "*"},
        {"digits": 3, "mul_digits": 2, "ops": "*"},
    ],
)
def test_sloppy_solutions_are_wrong_only_when_a_carry_exists(knobs):
    task = ArithmeticTask(**knobs, **SLOPPY)
    rng = random.Random(0)
    wrong = no_carry = 0
    for p in task.problems("train", 400, seed=0):
        completion = task.solution(p, rng)
        score = task.score(p, completion)
        assert score.formatted
        if not _has_carry(p):
            no_carry += 1
            assert score.correct, (p.question, completion)
        wrong += not score.correct
    assert wrong > 20  # dropped carries do make mistakes
    assert no_carry > 10  # the check above was exercised


def _first_word(completion: str) -> str:
    return think_text(completion).split()[0]


def test_corpus_mixture_shares():
    """Each way of answering opens the reasoning with its own word; the shares follow the knobs."""
    p = ArithmeticTask().problems("train", 1)[0]
    guess = {"p_careful": 0.0, "p_sloppy": 0.0, "p_bad_format": 0.0}
    words = [
        _first_word(ArithmeticTask(**kn).solution(p, random.Random(0))) for kn in (CAREFUL, SLOPPY, guess)
    ]
    assert len(set(words)) == 3

    task = ArithmeticTask(p_careful=0.3, p_sloppy=0.35, p_bad_format=0.2)
    rng = random.Random(0)
    texts = [task.solution(q, rng) for q in task.problems("train", 500, seed=0) for _ in range(4)]
    kinds = [_first_word(t) for t in texts]
    n = len(texts)
    for word, share in zip(words, (0.3, 0.35, 0.35)):
        assert abs(kinds.count(word) / n - share) < 0.04, word
    assert abs(sum(not is_formatted(t) for t in texts) / n - 0.2) < 0.04


# -- knobs and specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "knobs",
    [
        {"digits": 0},
        {"digits": 13},
        {"mul_digits": 0},
        {"mul_digits": 7},
        {"operands": 1},
        {"operands": 6},
        {"ops": ""},
        {"ops": "-"},
        {"ops": "+-"},
        {"ops": "/"},
        {"template": "nope"},
        {"p_careful": 0.8, "p_sloppy": 0.3},
        {"p_careful": -0.1},
        {"p_bad_format": -0.1},
        {"ask": "how-much"},
    ],
)
def test_arithmetic_knobs_are_validated(knobs):
    with pytest.raises(UserError):
        ArithmeticTask(**knobs)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    "spec", ["arithmetic:digits=2.5", "arithmetic:mul_digits=1.5", "arithmetic:operands=2.5"]
)
def test_non_integer_counts_are_user_errors(spec):
    with pytest.raises(UserError):
        get_task(spec).problems("train", 5)


@pytest.mark.parametrize("knobs", [{"test_percent": 150}, {"test_percent": -5}, {"p_bad_format": 2.0}])
def test_out_of_range_shares_are_user_errors(knobs):
    with pytest.raises(UserError):
        ArithmeticTask(**knobs)


def test_literal_template_is_accepted():
    task = ArithmeticTask(template="Q: {question} A:")
    p = task.problems("test", 1)[0]
    assert task.prompt(p) == f"Q: {p.question} A:"


def test_get_task_parses_knobs():
    task = get_task("arithmetic:digits=2,ops=+")
    assert isinstance(task, ArithmeticTask)
    assert (task.digits, task.ops) == (2, "+")
    assert all(p.meta["op"] == "+" for p in task.problems("train", 50))
    assert task_options(task)["digits"] == 2


def test_get_task_overrides_and_instances():
    assert get_task("arithmetic:digits=2", digits=5).digits == 5
    task = ArithmeticTask(digits=4)
    assert get_task(task) is task
    assert get_task("arithmetic") == ArithmeticTask()


def test_parse_task_spec():
    assert parse_task_spec("arithmetic") == ("arithmetic", {})
    assert parse_task_spec("arithmetic:digits=2, ops=+*") == ("arithmetic", {"digits": 2, "ops": "+*"})
    assert parse_task_spec("arithmetic:p_careful=0.5") == ("arithmetic", {"p_careful": 0.5})
    assert parse_task_spec("jsonl:data/x.jsonl,template=r1-zero") == (
        "jsonl",
        {"path": "data/x.jsonl", "template": "r1-zero"},
    )


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nope", "unknown task"),
        ("", "unknown task"),
        ("arithmetic:bogus=1", "arithmetic"),
        ("arithmetic:digits", "key=value"),
        ("arithmetic:digits=0", "digits"),
        ("arithmetic:digits=two", "arithmetic"),
    ],
)
def test_get_task_errors(spec, match):
    with pytest.raises(UserError, match=match):
        get_task(spec)


def test_unknown_task_message_lists_the_tasks():
    with pytest.raises(UserError) as e:
        get_task("nope")
    assert all(name in str(e.value) for name in TASKS)

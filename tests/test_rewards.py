"""Rule-based rewards (rewards.py): accuracy and format from the task's verdict, the paper's equal-weight sum,
language consistency, DAPO's overlong penalty, and a user's own reward named `package.module:function`."""

import pytest

from r1kit.algo.rewards import REWARDS, accuracy, combine, format_reward, language, overlong, resolve_reward
from r1kit.errors import UserError
from r1kit.tasks import get_task
from r1kit.tasks.base import Problem, Score

PROBLEM = Problem(id="p", question="1+2", answer="3")
GOOD = "<think>one plus two is three</think> <answer>3</answer>"


def _ctx(**kw) -> dict:
    return {"max_new_tokens": 100, "length": 10, "truncated": False, "language": "latin", **kw}


def test_accuracy_and_format_read_the_score():
    assert accuracy(PROBLEM, GOOD, Score(True, True, "3"), _ctx()) == 1.0
    assert accuracy(PROBLEM, GOOD, Score(False, True, "4"), _ctx()) == 0.0
    assert format_reward(PROBLEM, GOOD, Score(False, True, "4"), _ctx()) == 1.0
    assert format_reward(PROBLEM, GOOD, Score(True, False, "3"), _ctx()) == 0.0


def test_rewards_table():
    assert REWARDS == {
        "accuracy": accuracy,
        "format": format_reward,
        "language": language,
        "overlong": overlong,
    }


@pytest.mark.parametrize(
    "score, total",
    [
        (Score(True, True, "3"), 2.0),
        (Score(False, True, "4"), 1.0),
        (Score(True, False, "3"), 1.0),
        (Score(False, False, None), 0.0),
    ],
)
def test_paper_rule_reward_is_accuracy_plus_format(score, total):
    reward = combine({"accuracy": 1.0, "format": 1.0})
    value, parts = reward(PROBLEM, GOOD, score, _ctx())
    assert value == total
    assert parts == {"accuracy": float(score.correct), "format": float(score.formatted)}


def test_combine_with_a_real_verifier():
    # the reward and the evaluation use the same verifier: task.score
    task = get_task("arithmetic")
    problem = task.problems("train", 1, seed=0)[0]
    reward = combine({"accuracy": 1.0, "format": 1.0})
    right = f"<think>add</think> <answer>{problem.answer}</answer>"
    wrong_unformatted = f"the answer is {int(problem.answer) + 1}"
    assert reward(problem, right, task.score(problem, right), _ctx())[0] == 2.0
    assert reward(problem, wrong_unformatted, task.score(problem, wrong_unformatted), _ctx())[0] == 0.0


def test_combine_weights():
    value, parts = combine({"accuracy": 0.5, "format": 2.0})(PROBLEM, GOOD, Score(True, True, "3"), _ctx())
    assert value == 2.5 and parts == {"accuracy": 1.0, "format": 1.0}


# -- language consistency -----------------------------------------------------------------------------------------


def _lang(completion: str, script: str = "latin") -> float:
    return language(PROBLEM, completion, Score(True, True, "3"), _ctx(language=script))


def test_language_all_latin_think_is_one():
    assert _lang(GOOD) == 1.0
    assert _lang("<think>Ça fait trois, naïve façon</think> <answer>3</answer>") == 1.0  # accented latin


def test_language_half_cjk_words():
    # words: hello, 你好, world, 世界 -> 2 of 4 latin, 2 of 4 CJK. The answer's text does not count.
    text = "<think>hello 你好 world 世界</think> <answer>三 three</answer>"
    assert _lang(text, "latin") == pytest.approx(0.5)
    assert _lang(text, "cjk") == pytest.approx(0.5)
    # 3 CJK words, 1 latin: 0.25 latin, 0.75 CJK
    text = "<think>你好 world 世界 三</think> <answer>3</answer>"
    assert _lang(text, "latin") == pytest.approx(0.25)
    assert _lang(text, "cjk") == pytest.approx(0.75)


def test_language_word_counts_for_its_majority_script():
    # "abc你" is 3 of 4 letters latin: a latin word; "a你好" is mostly CJK
    assert _lang("<think>abc你</think>", "latin") == 1.0
    assert _lang("<think>a你好</think>", "latin") == 0.0
    assert _lang("<think>a你好</think>", "cjk") == 1.0


def test_language_without_tags_reads_the_whole_completion():
    assert _lang("привет world", "cyrillic") == pytest.approx(0.5)


def test_language_with_no_words_is_one():
    assert _lang("<think>1 + 2 = 3 !!</think> <answer>3</answer>") == 1.0
    assert _lang("") == 1.0


def test_language_unknown_script_is_user_error():
    with pytest.raises(UserError, match="klingon"):
        _lang(GOOD, "klingon")


def test_language_defaults_to_latin():
    ctx = {"max_new_tokens": 10, "length": 1}
    assert language(PROBLEM, "<think>你好 hi</think>", Score(True, True, "3"), ctx) == 0.5


# -- overlong penalty -------------------------------------------------------------------------------------------


def _over(length: int, truncated: bool = False, buffer: int = 0, budget: int = 100) -> float:
    ctx = _ctx(max_new_tokens=budget, length=length, truncated=truncated, overlong_buffer=buffer)
    return overlong(PROBLEM, GOOD, Score(True, True, "3"), ctx)


def test_overlong_without_buffer_penalises_only_truncation():
    assert _over(100, truncated=True) == -1.0
    assert _over(100, truncated=False) == 0.0  # exactly at the budget but finished: no penalty
    assert _over(5, truncated=False) == 0.0
    ctx = {"max_new_tokens": 10, "length": 3}  # no buffer, no truncated flag: nothing
    assert overlong(PROBLEM, GOOD, Score(True, True, "3"), ctx) == 0.0


def test_overlong_ramp_with_buffer():
    # budget 100, buffer 20: 0 up to length 80, then -(length - 80) / 20, at most -1
    assert _over(50, buffer=20) == 0.0
    assert _over(80, buffer=20) == 0.0
    assert _over(85, buffer=20) == pytest.approx(-0.25)
    assert _over(90, buffer=20) == pytest.approx(-0.5)
    assert _over(100, buffer=20, truncated=True) == pytest.approx(-1.0)
    assert _over(130, buffer=20) == pytest.approx(-1.0)


# -- user rewards -----------------------------------------------------------------------------------------------

USER_MODULE = '''
CONSTANT = 3.0


def length_bonus(problem, completion, score, ctx):
    """A user's reward: a tenth of the completion's token count."""
    return ctx["length"] / 10


def answer_is_three(problem, completion, score, ctx):
    return 1.0 if score.answer == "3" else 0.0
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"r1kit_user_rewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_reward_by_module_path(user_module):
    fn = resolve_reward(f"{user_module}:length_bonus")
    assert fn(PROBLEM, GOOD, Score(True, True, "3"), _ctx(length=7)) == pytest.approx(0.7)


def test_user_reward_combined_with_builtins(user_module):
    reward = combine(
        {"accuracy": 1.0, f"{user_module}:answer_is_three": 0.5, f"{user_module}:length_bonus": 1.0}
    )
    value, parts = reward(PROBLEM, GOOD, Score(True, True, "3"), _ctx(length=20))
    # 1·1 + 0.5·1 + 1·2 = 3.5
    assert value == pytest.approx(3.5)
    assert parts == {
        "accuracy": 1.0,
        f"{user_module}:answer_is_three": 1.0,
        f"{user_module}:length_bonus": 2.0,
    }


def test_builtin_names_resolve():
    for name, fn in REWARDS.items():
        assert resolve_reward(name) is fn


@pytest.mark.parametrize("name", ["accuracyy", "nope", ""])
def test_unknown_reward_name_is_user_error(name):
    with pytest.raises(UserError, match="unknown reward"):
        resolve_reward(name)
    with pytest.raises(UserError):
        combine({name: 1.0})


def test_missing_module_or_function_is_user_error(user_module):
    with pytest.raises(UserError, match="cannot load reward"):
        resolve_reward("r1kit_no_such_module_xyz:fn")
    with pytest.raises(UserError, match="cannot load reward"):
        resolve_reward(f"{user_module}:no_such_function")


def test_not_callable_is_user_error(user_module):
    with pytest.raises(UserError, match="not a function"):
        resolve_reward(f"{user_module}:CONSTANT")

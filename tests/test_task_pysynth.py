"""The pysynth task (program synthesis from examples, judged in the sandbox), and code scoring in the RL loop:
batch scoring, the ledger's sandbox phase, the per-step timeout and crash rates."""

from __future__ import annotations

import collections
import random
import types

import pytest

from r1kit.errors import UserError
from r1kit.tasks import get_task
from r1kit.tasks.base import Problem
from r1kit.tasks.pysynth import PySynthTask
from sandbox_helpers import answer as ans
from sandbox_helpers import requires_sandbox

pytestmark = requires_sandbox


@pytest.fixture(scope="module")
def task():
    return get_task("pysynth")


def test_splits_are_disjoint_and_deterministic(task):
    train, test = task.problems("train"), task.problems("test")
    assert len(train) + len(test) == 3 * 9 * 990
    assert not {p.id for p in train} & {p.id for p in test}
    assert len(test) >= 300  # enough for the recipe's held-out evaluation
    assert task.problems("test", n=5, seed=3) == task.problems("test", seed=3)[:5]
    assert task.problems("test", n=5, seed=3) != task.problems("test", n=5, seed=4)


def test_question_shows_the_first_values(task):
    p = next(q for q in task.problems("test") if q.meta["family"] == "square")
    a, b = p.meta["a"], p.meta["b"]
    assert p.question == f"write def f(x) with f(0)={b}, f(1)={a + b}, f(2)={4 * a + b}, f(3)={9 * a + b}"
    assert p.answer == f"def f(x): return {a}*x*x+{b}"


def test_hidden_tests_decide(task):
    p = next(q for q in task.problems("test") if q.meta["family"] == "line")
    a, b = p.meta["a"], p.meta["b"]
    echo = ("def f(x):\n    return {" + ", ".join(f"{x}: {a * x + b}" for x in range(4)) + "}[x]")
    scores = task.score_many([p] * 5, [ans(p.answer), ans(echo), ans(f"def f(x): return {a}*x*x+{b}"),
                                       ans("def f(x): return (" + p.answer.split("return ")[1] + ")"),
                                       ans("def g(x): return 0")])
    assert [s.correct for s in scores] == [True, False, False, True, False]
    assert scores[1].execution.status == "fail" and scores[4].execution.status == "fail"


def test_a_problem_rebuilt_from_its_id(task):
    for p in task.problems("train", n=30):
        rebuilt = Problem(p.id, p.question, p.answer)
        assert task.tests(rebuilt) == task.tests(p)
    with pytest.raises(ValueError):
        task.tests(Problem("pysynth/x**3", "", ""))


def test_the_corpus_mixture(task):
    """careful working is always right when formatted; quick is right about a third of the time; guesses rarely."""
    rng = random.Random(0)
    problems = task.problems("train", n=240)
    solutions = [task.solution(p, rng) for p in problems]
    scores = task.score_many(problems, solutions)
    tally = collections.defaultdict(list)
    for text, score in zip(solutions, scores):
        if "<answer>" in text:
            tally[text.split()[1]].append(score.correct)
    assert all(tally["careful:"]) and len(tally["careful:"]) > 40
    assert 0.15 < sum(tally["quick:"]) / len(tally["quick:"]) < 0.55  # the family taken on trust: 1 in 3
    assert sum(tally["guess:"]) / len(tally["guess:"]) < 0.15
    assert 0.1 < sum(not s.formatted for s in scores) / len(scores) < 0.3


def test_the_careful_answer_checks_the_families_when_it_runs(task):
    think, code = task.careful("parity", 7, 57)
    assert code == ("def f(x): a, b = 64-57, 57; return a*x+b if 2*a+b == 57 else a*x*x+b if 4*a+b == 57 "
                    "else a*(x%2)+b")
    assert think == "careful: a=64-57, b=57, and the code tests each family on f(2)=57."
    two = PySynthTask(families="square,line")
    assert two.careful("line", 3, 10)[1] == "def f(x): a, b = 13-10, 10; return a*x*x+b if 4*a+b == 16 else a*x+b"


def test_knobs_are_checked():
    with pytest.raises(UserError, match="families"):
        PySynthTask(families="line,cube")
    with pytest.raises(UserError, match="shown"):
        PySynthTask(shown=2)
    with pytest.raises(UserError, match="shares"):
        PySynthTask(p_careful=0.8, p_sloppy=0.5)
    small = PySynthTask(families="line", max_a=2, min_b=0, max_b=9)
    assert len(small.problems("train")) + len(small.problems("test")) == 20


def test_a_chat_models_code_block(task):
    p = task.problems("test", n=1)[0]
    chat = PySynthTask(answer_format="code")
    assert chat.score(p, f"Sure:\n```python\n{p.answer}\n```").correct
    assert not chat.score(p, f"Sure: {p.answer}").correct  # no block, no program


# -- code scoring in the RL loop ------------------------------------------------------------------------------


def test_rl_scores_a_step_in_the_sandbox_and_bills_it(task, tokenizer, tmp_path, monkeypatch):
    """One rollout step of the RL loop with sampling replaced by fixed completions: right, wrong, endless, crashing.
    The rewards follow the sandbox, the ledger gets a `sandbox` phase with its CPU-seconds, and the step's
    metrics carry the timeout and crash rates the doctor reads."""
    from r1kit.algo import rl_step, rollouts
    from r1kit.algo.rewards import combine
    from r1kit.algo.rl_config import RLConfig
    from r1kit.config import build
    from r1kit.cost.ledger import Ledger, read_ledger
    from r1kit.tasks.prompting import make_prompter

    problem = task.problems("train", n=1)[0]
    completions = [ans(problem.answer), ans("def f(x): return 0"), ans("def f(x):\n    while True: pass"),
                   ans("def f(x): return 1/0"), "no answer at all", ans(problem.answer), ans("import no_such_module"),
                   ans(problem.answer)]
    tok = [tokenizer(c, add_special_tokens=False).input_ids for c in completions]

    def fake_sample(rollout_engine, tokenizer_, prompter, problems, keys, step, rnd, cfg, eos, engine):
        rows = [0] * len(tok)
        return [[1, 2, 3]], rows, tok, [True] * len(tok), [[0.0] * len(t) for t in tok]

    monkeypatch.setattr(rollouts, "sample_groups", fake_sample)
    monkeypatch.setattr(PySynthTask, "wall_s", 1.0)
    cfg = build(RLConfig, {"model": "unused", "out": str(tmp_path), "task": "pysynth", "steps": 1,
                           "rollout": {"prompts_per_step": 1, "group_size": 8, "max_new_tokens": 64}})
    cfg.resolve(1)
    stream = [problem] * 4
    engine = types.SimpleNamespace(info=types.SimpleNamespace(world=1, rank=0))
    ledger = Ledger(tmp_path, "rl", "cpu", 1, None, None, None)
    prompter = make_prompter(task, tokenizer)
    kept, seen, times = rollouts.collect_groups(0, None, tokenizer, prompter, stream, combine(cfg.reward.weights), cfg,
                                           engine, ledger, [tokenizer.eos_token_id])
    correct = [s.correct for s in seen["scores"]]
    assert correct == [True, False, False, False, False, True, False, True]
    statuses = [getattr(s.execution, "status", None) for s in seen["scores"]]
    assert statuses == ["pass", "fail", "timeout", "fail", None, "pass", "error", "pass"]
    assert seen["rewards"][0] == 2.0 and seen["rewards"][1] == 1.0  # accuracy + format; format only
    records = read_ledger(tmp_path)
    sandbox = [r for r in records if r["phase"] == "sandbox"]
    assert len(sandbox) == 1 and not [r for r in records if r["phase"] == "scoring"]
    assert sandbox[0]["executions"] == 7 and sandbox[0]["timeouts"] == 1 and sandbox[0]["crashes"] == 1
    assert 0 < sandbox[0]["sandbox_cpu_s"] and sandbox[0]["wall_s"] >= 1.0  # the endless loop ran to its limit
    stats = {k: 0.0 for k in ("loss", "kl", "clip_fraction", "entropy", "grad_norm", "skipped_updates",
                              "time_training", "time_weight_sync", "mismatch_kl", "tis_weight",
                              "tis_clip_fraction")}
    stats["rows_trained"] = 8
    m = rl_step.step_metrics(seen, stats, times, 1e-5, 1.0, engine.info, 0.0)
    assert m["execution_timeout_rate"] == pytest.approx(1 / 8) and m["execution_crash_rate"] == pytest.approx(1 / 8)


def test_a_chat_tokenizer_gets_the_code_format(tokenizer):
    """With a chat template and answer_format auto, a code task is answered in a ```python block."""
    import copy

    from r1kit.tasks.formats import INSTRUCTIONS
    from r1kit.tasks.prompting import make_prompter

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    prompter = make_prompter(PySynthTask(), chat)
    assert prompter.chat and prompter.answer_format == "code" and prompter.instruction == INSTRUCTIONS["code"]
    assert make_prompter(get_task("arithmetic"), chat).answer_format == "boxed"  # other tasks as before

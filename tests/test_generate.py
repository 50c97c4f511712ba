"""Rejection sampling (loops/generate.py): select() keeps only correct, formatted, finished completions, without
duplicates and at most max_per_prompt; run_generate writes rows with their provenance, refuses to overwrite, and
`--resume` after a stop (even one that left half a chunk behind) gives a byte-identical file.

A freshly initialised teacher answers nothing correctly and rarely ends a completion, so the runs here use two
stand-ins, both explicit:
- the teacher's generation config lists every fifth token id as a stop token (so most completions finish and
  some do not); the real sampler and the real EOS handling (`eos_ids`) do the rest;
- the task's verifier is replaced by a lenient one (`LenientTask`) that calls a completion correct and formatted
  unless its characters' code points sum to a multiple of 3. The questions, prompts and answers are still the
  arithmetic task's. What these tests check is therefore the loop's bookkeeping (which completions are kept,
  what each row records, resume), not the teacher's arithmetic.
Sampling 6 questions × 3 completions of ≤ 8 tokens takes well under a second.
"""

import json
import random

import pytest

from r1kit.errors import UserError
from r1kit.loops import generate
from r1kit.loops.generate import GenerateConfig, progress_path, run_generate, select
from r1kit.models.modeling import new_model, save_model
from r1kit.tasks import get_task
from r1kit.tasks.arithmetic import ArithmeticTask
from r1kit.tasks.base import Problem, Score

slow = pytest.mark.slow  # the tests that sample from a model


def rejected(text: str) -> bool:
    return sum(map(ord, text)) % 3 == 0


class LenientTask:
    """The arithmetic task with a stand-in verifier (see the module docstring); records every verdict."""

    def __init__(self, task):
        self.task = task
        self.name = task.name
        self.scored: list[tuple[str, str]] = []

    def __getattr__(self, name):  # template and format options: the wrapped task's
        if name == "task":  # not set yet (copy.copy makes the instance without __init__)
            raise AttributeError(name)
        return getattr(self.task, name)

    def problems(self, split, n, seed=0):
        return self.task.problems(split, n, seed=seed)

    def prompt(self, problem):
        return self.task.prompt(problem)

    def score(self, problem, completion):
        self.scored.append((problem.id, completion))
        ok = not rejected(completion)
        return Score(correct=ok, formatted=ok, answer=problem.answer if ok else None)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer):
    """A micro model whose generation config stops at every fifth token id (and at EOS)."""
    model = new_model("micro", tokenizer, seed=0)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *range(2, len(tokenizer), 5)]
    return save_model(model, tokenizer, tmp_path_factory.mktemp("teacher") / "model")


@pytest.fixture(scope="module")
def lenient():
    """Patches generate.get_task to wrap the real task in LenientTask; yields the list of wrappers made, and
    spies on select() (the real one runs) to record what it saw and what it kept."""
    made, calls = [], []
    real_get_task, real_select = generate.get_task, generate.select

    def fake_get_task(spec):
        made.append(LenientTask(real_get_task(spec)))
        return made[-1]

    def spy_select(problem, texts, finished, task, cfg):
        kept = real_select(problem, texts, finished, task, cfg)
        calls.append({"id": problem.id, "texts": list(texts), "finished": list(finished), "kept": kept})
        return kept

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate, "get_task", fake_get_task)
        mp.setattr(generate, "select", spy_select)
        yield made, calls


def make_cfg(teacher, out, **kw) -> GenerateConfig:
    base = dict(model=str(teacher), task="arithmetic", out=str(out), n=6, k=3, chunk=2, max_new_tokens=8, seed=0)
    return GenerateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, teacher, lenient, torch_threads):
    """The uninterrupted reference run: 6 questions in 3 chunks of 2, 3 completions each."""
    made, calls = lenient
    del calls[:]
    out = tmp_path_factory.mktemp("gen") / "traces.jsonl"
    summary = run_generate(make_cfg(teacher, out), progress=False)
    return out, summary, list(calls)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- select() -------------------------------------------------------------------------------------------------


class TextTask:
    """Verdicts read off the text: 'ok' means correct, 'fmt' means formatted."""

    def score(self, problem, text):
        return Score(correct="ok" in text, formatted="fmt" in text, answer="1" if "ok" in text else None)


PROBLEM = Problem(id="p", question="1", answer="1")


def test_select_keeps_only_correct_formatted_finished():
    texts = ["ok fmt a", "ok b", "fmt c", "ok fmt d", "nothing", "ok fmt e"]
    finished = [True, True, True, False, True, True]
    kept = select(PROBLEM, texts, finished, TextTask(), GenerateConfig())
    assert [j for j, _ in kept] == [0, 5]  # 1: unformatted, 2: wrong, 3: truncated, 4: neither
    assert all(s.correct and s.formatted and s.answer == "1" for _, s in kept)


def test_select_dedups_on_stripped_text_and_honours_max_per_prompt():
    texts = ["ok fmt", " ok fmt\n", "ok fmt 2", "ok fmt", "ok fmt 3"]
    finished = [True] * 5
    assert [j for j, _ in select(PROBLEM, texts, finished, TextTask(), GenerateConfig())] == [0, 2, 4]
    no_dedup = GenerateConfig(dedup=False)
    assert [j for j, _ in select(PROBLEM, texts, finished, TextTask(), no_dedup)] == [0, 1, 2, 3, 4]
    assert [j for j, _ in select(PROBLEM, texts, finished, TextTask(), GenerateConfig(max_per_prompt=2))] == [0, 2]
    assert [j for j, _ in select(PROBLEM, texts, finished, TextTask(), GenerateConfig(max_per_prompt=1))] == [0]
    # a truncated duplicate does not block a later finished copy
    assert [j for j, _ in select(PROBLEM, ["ok fmt", "ok fmt"], [False, True], TextTask(), GenerateConfig())] == [1]


def test_select_with_the_real_arithmetic_verifier():
    task = ArithmeticTask()
    problem = Problem(id="arithmetic/2+3", question="2+3", answer="5")
    texts = [
        "<think>2+3=5</think> <answer>5</answer>",  # kept
        "<think>2+3=6</think> <answer>6</answer>",  # wrong
        "the answer is <answer>5</answer>",  # right but unformatted
        "<think>2+3=5</think> <answer>5</answer>",  # duplicate
        "<think>sure</think>\n<answer> 5 </answer>",  # kept
    ]
    kept = select(problem, texts, [True] * 5, task, GenerateConfig())
    assert [j for j, _ in kept] == [0, 4]
    assert [s.answer for _, s in kept] == ["5", "5"]


def test_generate_config_is_checked():
    for bad in (dict(n=0), dict(k=0), dict(chunk=0), dict(max_per_prompt=-1), dict(top_p=0.0),
                dict(temperature=-0.1)):
        with pytest.raises(UserError):
            GenerateConfig(**bad)


# -- run_generate ---------------------------------------------------------------------------------------------


@slow
def test_rows_are_what_select_kept_with_provenance(full_run, teacher):
    out, summary, calls = full_run
    rows = _rows(out)
    task = get_task("arithmetic")
    problems = task.problems("train", 6, seed=0)
    assert [c["id"] for c in calls] == [p.id for p in problems]  # every question, in order, from train
    expected = [(c["id"], c["texts"][j], j) for c in calls for j, _ in c["kept"]]
    assert [(r["id"], r["completion"], r["provenance"]["sample"]) for r in rows] == expected
    assert rows, "the lenient verifier should keep some finished completions"
    by_id = {p.id: p for p in problems}
    for r in rows:
        p = by_id[r["id"]]
        assert r["prompt"] == task.prompt(p) and r["reference"] == p.answer and r["answer"] == p.answer
        assert r["reward"] == {"accuracy": 1.0, "format": 1.0}
        assert 1 <= r["length"] <= 8
        assert r["provenance"] == {"teacher": str(teacher), "task": "arithmetic", "split": "train",
                                   "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8, "seed": 0,
                                   "sample": r["provenance"]["sample"],
                                   "formats": {"prompt_format": "r1-zero-compact", "answer_format": "think-answer",
                                               "system": "", "instruction": "", "prefill": ""}}
        assert r["question"] == p.question
        assert 0 <= r["provenance"]["sample"] < 3
    assert summary == {**summary, "questions": 6, "sampled": 18, "kept": len(rows), "finished": True}
    assert summary["keep_rate"] == pytest.approx(len(rows) / 18)


@slow
def test_only_finished_accepted_distinct_completions_are_kept(full_run):
    """What the loop kept, checked against what the sampler produced: the filter really had work to do."""
    _, _, calls = full_run
    saw_unfinished = saw_rejected = False
    for c in calls:
        kept = [j for j, _ in c["kept"]]
        assert len({c["texts"][j].strip() for j in kept}) == len(kept)
        for j, (text, fin) in enumerate(zip(c["texts"], c["finished"])):
            saw_unfinished |= not fin
            saw_rejected |= fin and rejected(text)
            if j in kept:
                assert fin and not rejected(text)
            elif fin and not rejected(text):  # dropped although acceptable: only as a duplicate of a kept one
                assert text.strip() in {c["texts"][i].strip() for i in kept if i < j}
    assert saw_unfinished and saw_rejected


@slow
def test_progress_sidecar_of_a_finished_run(full_run):
    out, summary, _ = full_run
    state = json.loads(progress_path(out).read_text())
    assert state["finished"] and state["chunks_done"] == 3 and state["rows"] == summary["kept"]
    assert state["bytes"] == out.stat().st_size
    assert state["config"]["temperature"] == 0.6 and "out" not in state["config"]


def test_metrics_per_chunk_beside_the_output(full_run):
    """OUT.metrics.jsonl: the counts after each chunk (what the trackers of [log] get, with a table of kept rows)."""
    out, summary, _ = full_run
    lines = _rows(out.with_name(out.name + ".metrics.jsonl"))
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert [line["questions"] for line in lines] == [2, 4, 6] and [line["sampled"] for line in lines] == [6, 12, 18]
    assert lines[-1]["kept"] == summary["kept"] and lines[-1]["keep_rate"] == summary["keep_rate"]
    assert list((out.parent / "tb").glob("events.out.tfevents.*"))  # [log] report_to's default: TensorBoard


@slow
def test_refuses_an_existing_output_without_resume(full_run, teacher, tmp_path):
    out, _, _ = full_run
    before = out.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        run_generate(make_cfg(teacher, out), progress=False)
    assert out.read_bytes() == before
    # a file r1kit did not write (no progress sidecar): refused with or without --resume
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(UserError, match="already exists"):
        run_generate(make_cfg(teacher, foreign), progress=False)
    with pytest.raises(UserError, match="not written by r1kit generate"):
        run_generate(make_cfg(teacher, foreign), resume=True, progress=False)
    assert foreign.read_text() == '{"prompt": "a", "completion": "b"}\n'


@slow
def test_resume_after_stop_is_byte_identical(full_run, teacher, tmp_path):
    ref, _, _ = full_run
    out = tmp_path / "traces.jsonl"
    part = run_generate(make_cfg(teacher, out), progress=False, stop_after_chunks=1)
    assert not part["finished"] and part["sampled"] == 6
    state = json.loads(progress_path(out).read_text())
    assert state["chunks_done"] == 1 and not state["finished"]
    assert ref.read_bytes().startswith(out.read_bytes())

    # other settings: refused, naming what differs; the file is left alone
    for changed, name in ((dict(temperature=0.9), "temperature"), (dict(k=2), "k"), (dict(n=8), "n"),
                          (dict(seed=1), "seed"), (dict(max_per_prompt=1), "max_per_prompt")):
        with pytest.raises(UserError, match=rf"\({name} differ\)"):
            run_generate(make_cfg(teacher, out, **changed), resume=True, progress=False)
    assert json.loads(progress_path(out).read_text()) == state

    # killed while writing the second chunk: half a row past the recorded size
    with open(out, "ab") as f:
        f.write(b'{"id": "arithmetic/half a ro')
    done = run_generate(make_cfg(teacher, out), resume=True, progress=False)
    assert done["finished"] and done["sampled"] == 18
    assert out.read_bytes() == ref.read_bytes()
    metrics = out.name + ".metrics.jsonl"
    assert (out.parent / metrics).read_text() == (ref.parent / metrics).read_text()  # one line per chunk, again

    # resuming a finished run changes nothing and reports the same totals
    again = run_generate(make_cfg(teacher, out), resume=True, progress=False)
    assert out.read_bytes() == ref.read_bytes()
    assert {k: again[k] for k in ("questions", "sampled", "kept", "finished")} == \
        {k: done[k] for k in ("questions", "sampled", "kept", "finished")}


@slow
@pytest.mark.parametrize("damage", ["deleted", "cut short"])
def test_resume_refuses_an_output_shorter_than_its_progress_record(damage, teacher, lenient, tmp_path):
    """The sidecar says chunk 1 wrote N bytes, but the file now holds fewer (deleted, or cut by hand): resuming
    must not pretend those rows exist. (Today `f.truncate(state["bytes"])` *extends* the file with NUL bytes,
    and the summary counts the lost rows as kept.)"""
    out = tmp_path / "traces.jsonl"
    run_generate(make_cfg(teacher, out), progress=False, stop_after_chunks=1)
    recorded = json.loads(progress_path(out).read_text())["bytes"]
    assert recorded > 0
    if damage == "deleted":
        out.unlink()
    else:
        out.write_bytes(out.read_bytes()[: recorded // 2])
    with pytest.raises(UserError):
        run_generate(make_cfg(teacher, out), resume=True, progress=False)
    assert b"\0" not in (out.read_bytes() if out.exists() else b"")


@slow
def test_resume_without_a_file_starts_fresh(full_run, teacher, tmp_path):
    ref, _, _ = full_run
    out = tmp_path / "sub" / "traces.jsonl"
    run_generate(make_cfg(teacher, out), resume=True, progress=False)
    assert out.read_bytes() == ref.read_bytes()


@slow
def test_max_per_prompt_in_a_run(full_run, teacher, tmp_path):
    _, _, calls = full_run
    out = tmp_path / "one.jsonl"
    run_generate(make_cfg(teacher, out, max_per_prompt=1), progress=False)
    rows = _rows(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    # same seed, same samples: the one kept is the first acceptable completion of each question
    assert [r["id"] for r in rows] == [c["id"] for c in calls if c["kept"]]
    assert [r["provenance"]["sample"] for r in rows] == [c["kept"][0][0] for c in calls if c["kept"]]


def test_chunk_seed_differs_per_chunk_and_seed():
    seeds = {generate._chunk_seed(s, c) for s in range(3) for c in range(50)}
    assert len(seeds) == 150
    assert all(0 <= x < 2**63 for x in seeds)
    rng = random.Random(0)
    big = rng.randrange(2**62)
    assert 0 <= generate._chunk_seed(big, 10**9) < 2**63

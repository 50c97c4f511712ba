"""`r1kit run`: a multi-stage recipe is checked before anything runs (errors name its line), finished stages are
skipped, an interrupted stage resumes from its checkpoint, a changed stage is an error, the summary table covers
every stage, and `match_compute` gives an RL stage the FLOPs budget of the stages it names.

One small pipeline (micro base, SFT, two RL stages, eval) runs once per module, in three calls: the first stops
after two stages, the second interrupts an RL stage after one step, the third finishes. The tests read what
those calls recorded.
"""

import contextlib
import io
import json
import random

import pytest

from r1kit import pipeline
from r1kit.checkpoint import latest_checkpoint
from r1kit.cli import main
from r1kit.errors import UserError
from r1kit.pipeline import check_resumable, load_pipeline, run_pipeline, stage_state
from r1kit.summary import format_summary, summary_rows

EVAL_N = 4

HEAD = f"""\
[run]
task = "arithmetic"
seed = 0

[eval]
n = {EVAL_N}
k = 1
max_new_tokens = 16
"""

BASE = """
[[stage]]
name = "base"
kind = "base"
size = "micro"
steps = 10
corpus = 300
batch_size = 8
"""

SFT = """
[[stage]]
name = "sft"
kind = "sft"
model = "base"
data = "{rows}"
epochs = 1
batch_size = 4
"""

ZERO = """
[[stage]]
name = "zero"
kind = "rl"
model = "base"
steps = 2
checkpoint_every = 1
final_eval = true
[stage.rollout]
prompts_per_step = 2
group_size = 2
max_new_tokens = 16
"""

MATCHED = """
[[stage]]
name = "matched"
kind = "rl"
model = "base"
match_compute = ["zero"]
steps = 4
checkpoint_every = 1
[stage.rollout]
prompts_per_step = 2
group_size = 2
max_new_tokens = 16
"""

EVAL = """
[[stage]]
name = "eval"
kind = "eval"
"""

STAGES = ["base", "sft", "zero", "matched", "eval"]
MODEL_STAGES = ["base", "sft", "zero", "matched"]


def write_rows(path, n: int = 8):
    """SFT rows in `r1kit generate`'s format: arithmetic prompts with worked solutions."""
    from r1kit.tasks import get_task

    task = get_task("arithmetic")
    rng = random.Random(0)
    with open(path, "w") as f:
        for p in task.problems("train", n, seed=0):
            f.write(json.dumps({"prompt": task.prompt(p), "completion": " " + task.solution(p, rng),
                                "provenance": {"task": "arithmetic", "teacher": "worked-solutions"}}) + "\n")
    return path


def line_of(text: str, snippet: str) -> int:
    """The 1-based line of the one line of `text` that is `snippet` (stripped)."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if line.strip() == snippet]
    assert len(hits) == 1, (snippet, hits)
    return hits[0]


def at(text: str, snippet: str) -> str:
    """`recipe.toml:LINE:`, the prefix of an error at the line that is `snippet`."""
    return f"recipe.toml:{line_of(text, snippet)}:"


def header_of(text: str, name: str) -> int:
    """The line of stage `name`'s [[stage]] header (the line above its `name = ...`)."""
    n = line_of(text, f'name = "{name}"')
    assert text.splitlines()[n - 2] == "[[stage]]"
    return n - 1


def ledger_factory(run_dir, stage, model_config=None):
    from r1kit.devices import ledger_for

    return ledger_for(run_dir, stage, model_config=model_config)


def _no_probe(monkeypatch):
    """The CPU peak is a matmul benchmark when not cached: a constant keeps these tests fast and quiet."""
    monkeypatch.setattr("r1kit.devices.cpu_peak_flops", lambda *a, **k: 1e10)


def _ledger_lines(folder) -> int:
    return len((folder / "ledger.jsonl").read_text().splitlines())


def _check_plan(recipe, out) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", str(recipe), "--out", str(out), "--check"]) == 0
    return buf.getvalue()


# ---- A bad recipe is rejected before anything runs, naming its line --------------------------------------------


@pytest.fixture
def rows(tmp_path):
    return write_rows(tmp_path / "rows.jsonl")


def _rejected(tmp_path, text: str) -> str:
    """The UserError of running `text` as a recipe; nothing may have been written."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        run_pipeline(recipe, out, progress=False)
    assert not out.exists()
    return str(e.value)


def test_unknown_kind(tmp_path):
    text = HEAD + BASE + '\n[[stage]]\nname = "pt"\nkind = "pretrain"\n'
    msg = _rejected(tmp_path, text)
    assert at(text, 'kind = "pretrain"') in msg
    assert "pretrain" in msg and "rl" in msg  # the known kinds are listed


def test_input_that_names_nothing(tmp_path):
    text = HEAD + BASE + ZERO.replace('model = "base"', 'model = "bsae"')
    msg = _rejected(tmp_path, text)
    assert at(text, 'model = "bsae"') in msg
    assert "'bsae'" in msg and "no earlier stage" in msg


def test_missing_input_names_the_stage_header(tmp_path):
    text = HEAD + BASE + ZERO.replace('model = "base"\n', "")
    msg = _rejected(tmp_path, text)
    assert f"recipe.toml:{header_of(text, 'zero')}:" in msg
    assert "'zero'" in msg and "model" in msg


def test_input_from_a_later_stage(tmp_path, rows):
    text = HEAD + BASE + ZERO.replace('model = "base"', 'model = "sft"') + SFT.format(rows=rows)
    msg = _rejected(tmp_path, text)
    assert at(text, 'model = "sft"') in msg
    assert "later stage" in msg and f"{header_of(text, 'sft')})" in msg  # (line N) or (recipe.toml:N)


def test_match_compute_of_a_later_stage(tmp_path):
    text = HEAD + BASE + MATCHED + ZERO
    msg = _rejected(tmp_path, text)
    assert at(text, 'match_compute = ["zero"]') in msg
    assert "'zero'" in msg


@pytest.mark.parametrize(
    "old, new",
    [
        ("steps = 2", "stepz = 2"),  # a top-level key of the stage
        ("group_size = 2", "group_sise = 2"),  # a key of a sub-table ([stage.rollout])
    ],
)
def test_unknown_key_names_its_line(tmp_path, old, new):
    text = HEAD + BASE + ZERO.replace(old, new)
    msg = _rejected(tmp_path, text)
    assert at(text, new) in msg
    assert new.split()[0] in msg and "'zero'" in msg


@pytest.mark.parametrize(
    "old, new",
    [
        ("steps = 10", 'steps = "ten"'),
        ("batch_size = 8", "batch_size = true"),
    ],
)
def test_bad_value_type_names_its_line(tmp_path, old, new):
    text = HEAD + BASE.replace(old, new)
    msg = _rejected(tmp_path, text)
    assert at(text, new) in msg
    assert new.split()[0] in msg and "'base'" in msg


def test_bad_value_type_in_a_sub_table(tmp_path):
    text = HEAD + BASE + ZERO.replace("max_new_tokens = 16", 'max_new_tokens = "long"')
    msg = _rejected(tmp_path, text)
    assert at(text, 'max_new_tokens = "long"') in msg
    assert "rollout.max_new_tokens" in msg


def test_bad_value_in_a_sub_table_whose_key_appears_twice(tmp_path):
    """[stage.rollout] and [stage.eval] both have max_new_tokens: the error must point at the eval one."""
    text = HEAD + BASE + ZERO + '[stage.eval]\nmax_new_tokens = "long"\n'
    msg = _rejected(tmp_path, text)
    assert "eval.max_new_tokens" in msg
    assert at(text, 'max_new_tokens = "long"') in msg


def test_sub_table_given_as_a_value_is_a_user_error(tmp_path):
    """`eval = 3` in a stage (a table expected) is a UserError naming its line, not an AttributeError."""
    text = HEAD + BASE.replace("steps = 10", "steps = 10\neval = 3")
    msg = _rejected(tmp_path, text)
    assert at(text, 'eval = 3') in msg


def test_duplicate_stage_names(tmp_path):
    text = HEAD + BASE + ZERO + BASE
    msg = _rejected(tmp_path, text)
    headers = [n for n, line in enumerate(text.splitlines(), 1) if line == "[[stage]]"]
    assert f"recipe.toml:{headers[2]}:" in msg
    assert "'base'" in msg and "twice" in msg and f"{headers[0]})" in msg  # (first at ...:N)


def test_input_of_the_wrong_type(tmp_path):
    text = HEAD + BASE + SFT.format(rows="base")  # data = a base stage: a model, not data
    msg = _rejected(tmp_path, text)
    assert at(text, 'data = "base"') in msg
    assert "produces model, not data" in msg


def test_cli_reports_one_line_and_status_2(tmp_path, capsys):
    text = HEAD + BASE + '\n[[stage]]\nname = "pt"\nkind = "pretrain"\n'
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1kit: error: "), captured.err
    assert at(text, 'kind = "pretrain"') in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists()


def test_a_good_recipe_loads(tmp_path, rows):
    text = HEAD + BASE + SFT.format(rows=rows) + ZERO + MATCHED + EVAL
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    pipe = load_pipeline(recipe, tmp_path / "out")
    assert [s.name for s in pipe.stages] == STAGES
    by = {s.name: s for s in pipe.stages}
    assert by["sft"].upstream == ["base"] and by["matched"].upstream == ["base", "zero"]
    assert by["eval"].inputs["model_names"] == MODEL_STAGES
    assert by["sft"].config["final_eval"] is False and by["zero"].config["final_eval"] is True
    assert by["zero"].config["eval"]["n"] == EVAL_N  # the recipe's [eval] reaches every stage
    assert all(stage_state(pipe.out, s) == "new" for s in pipe.stages)
    assert not (tmp_path / "out").exists()


# ---- One pipeline, run in three calls ---------------------------------------------------------------------------


class Refuse:
    """Stands in for a loop that must not run again."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *a, **k):
        raise AssertionError(f"{self.name} ran again for a finished stage")


@pytest.fixture(scope="module")
def run(tmp_path_factory, torch_threads):
    tmp = tmp_path_factory.mktemp("pipeline")
    rows_file = write_rows(tmp / "rows.jsonl")
    text = HEAD + BASE + SFT.format(rows=rows_file) + ZERO + MATCHED + EVAL
    recipe = tmp / "recipe.toml"
    recipe.write_text(text)
    out = tmp / "out"
    seen = {"text": text, "recipe": recipe, "out": out, "rows": rows_file}
    pipe = load_pipeline(recipe, out)
    with pytest.MonkeyPatch.context() as mp:
        _no_probe(mp)
        # 1: two stages, then stop.
        first = run_pipeline(recipe, out, ledger_factory=ledger_factory, progress=False, stop_after_stages=2)
        seen["first"] = first["status"]
        seen["states_1"] = {s.name: stage_state(out, s) for s in pipe.stages}
        seen["folders_1"] = sorted(p.name for p in out.iterdir() if p.is_dir())
        seen["done_mtime"] = {n: (out / n / "done.json").stat().st_mtime_ns for n in ("base", "sft")}
        seen["ledger_lines"] = {n: _ledger_lines(out / n) for n in ("base", "sft")}

        # 2: the finished stages must not run; the RL stage is cut after one step (as if killed).
        mp.setattr(pipeline, "run_base", Refuse("run_base"))
        mp.setattr(pipeline, "run_sft", Refuse("run_sft"))
        real_rl = pipeline.run_rl
        rl_calls = []

        def cut_rl(cfg, **kw):
            rl_calls.append(cfg.out)
            return real_rl(cfg, **kw, stop_after=1)

        mp.setattr(pipeline, "run_rl", cut_rl)
        second = run_pipeline(recipe, out, ledger_factory=ledger_factory, progress=False)
        seen["second"] = second["status"]
        seen["rl_calls_2"] = list(rl_calls)
        seen["states_2"] = {s.name: stage_state(out, s) for s in pipe.stages}
        seen["zero_2"] = {
            "checkpoints": sorted(p.name for p in (out / "zero" / "checkpoints").glob("step_*")),
            "latest": latest_checkpoint(out / "zero").name,
            "done": (out / "zero" / "done.json").exists(),
            "training_records": sum(1 for r in _ledger(out / "zero") if r["phase"] == "training"),
        }
        seen["plan_2"] = _check_plan(recipe, out)

        # 3: the rest, with the real RL loop (spied on).
        rl_calls.clear()

        def spy_rl(cfg, **kw):
            rl_calls.append((cfg.out, kw.get("resume")))
            return real_rl(cfg, **kw)

        mp.setattr(pipeline, "run_rl", spy_rl)
        third = run_pipeline(recipe, out, ledger_factory=ledger_factory, progress=False)
        seen["third"] = third["status"]
        seen["rl_calls_3"] = list(rl_calls)
        seen["states_3"] = {s.name: stage_state(out, s) for s in pipe.stages}
    return seen


def _ledger(folder) -> list[dict]:
    from r1kit.ledger import read_ledger

    return read_ledger(folder / "ledger.jsonl")


def test_stop_after_two_stages_runs_exactly_two(run):
    assert run["first"] == {"base": "ran", "sft": "ran"}
    assert run["states_1"] == {"base": "done", "sft": "done", "zero": "new", "matched": "new", "eval": "new"}
    out = run["out"]
    assert run["folders_1"] == ["base", "sft"]  # no folder for a stage that did not start
    assert json.loads((out / "pipeline.json").read_text())["stages"][1] == {
        "name": "sft", "kind": "sft", "upstream": ["base"]}


def test_finished_stages_are_skipped_not_redone(run):
    # Re-runs 2 and 3 replaced run_base and run_sft by functions that fail if called; they reported "skipped".
    for status in (run["second"], run["third"]):
        assert status["base"] == "skipped" and status["sft"] == "skipped"
    out = run["out"]
    for name in ("base", "sft"):
        assert (out / name / "done.json").stat().st_mtime_ns == run["done_mtime"][name]
        assert _ledger_lines(out / name) == run["ledger_lines"][name]


def test_an_interrupted_stage_is_left_partial(run):
    assert run["second"] == {"base": "skipped", "sft": "skipped", "zero": "interrupted"}
    assert run["rl_calls_2"] == [str(run["out"] / "zero")]  # the stage after it did not start
    assert run["states_2"]["zero"] == "partial" and run["states_2"]["matched"] == "new"
    assert run["zero_2"] == {"checkpoints": ["step_000001"], "latest": "step_000001", "done": False,
                             "training_records": 1}
    plan = run["plan_2"].splitlines()
    assert [line.split()[-1] for line in plan[:-1]] == ["done", "done", "partial", "new", "new"]
    assert plan[-1].endswith("5 stages, checked")


def test_an_interrupted_stage_resumes_from_its_checkpoint(run):
    out = run["out"]
    assert run["third"] == {"base": "skipped", "sft": "skipped", "zero": "ran", "matched": "ran", "eval": "ran"}
    assert run["states_3"] == dict.fromkeys(STAGES, "done")
    assert run["rl_calls_3"][0] == (str(out / "zero"), True)
    zero = out / "zero"
    assert json.loads((zero / "run.json").read_text())["resumed_from"] == 1
    steps = [json.loads(line)["step"] for line in (zero / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # step 1 from the first process, step 2 from the second: not restarted
    assert sum(1 for r in _ledger(zero) if r["phase"] == "training") == 2
    assert json.loads((zero / "done.json").read_text())["summary"]["steps"] == 2


def test_match_compute_budget(run):
    out = run["out"]
    zero = [r for r in _ledger(out / "zero")]
    assert any(r["phase"] == "evaluation" and r["flops"] > 0 for r in zero)  # final_eval = true
    spent = sum(r["flops"] or 0.0 for r in zero if r["phase"] != "evaluation")
    budget = json.loads((out / "matched" / "budget.json").read_text())
    assert budget == {"match_compute": ["zero"], "max_flops": pytest.approx(spent, rel=1e-12)}
    assert budget["max_flops"] > 0
    reached = json.loads((out / "matched" / "budget_reached.json").read_text())
    assert reached["step"] < 4 and reached["flops"] >= budget["max_flops"]
    matched_spent = sum(r["flops"] or 0.0 for r in _ledger(out / "matched") if r["phase"] != "evaluation")
    assert matched_spent == pytest.approx(reached["flops"])
    done = json.loads((out / "matched" / "done.json").read_text())["summary"]
    assert done["steps"] == reached["step"] and done["stopped_by_budget"]["step"] == reached["step"]
    assert (out / "matched" / "model" / "config.json").is_file()


def test_match_compute_without_a_ledger_is_an_error(tmp_path, torch_threads):
    """Without a cost ledger there is no compute to match: the run must refuse (as `r1kit rl` refuses max_flops
    without a ledger), not run the stage with max_flops = 0, which means no budget at all."""
    recipe = tmp_path / "recipe.toml"
    small = BASE.replace("steps = 10", "steps = 2").replace("corpus = 300", "corpus = 50")
    recipe.write_text(HEAD + small + MATCHED.replace('["zero"]', '["base"]').replace("steps = 4", "steps = 1"))
    with pytest.raises(UserError, match="ledger"):
        run_pipeline(recipe, tmp_path / "out", progress=False)


def test_summary_rows(run):
    rows = summary_rows(run["out"])
    assert [r["stage"] for r in rows] == STAGES
    by = {r["stage"]: r for r in rows}
    for name in MODEL_STAGES:
        r = by[name]
        assert r["done"] and r["params"] > 0
        assert 0.0 <= r["pass@1"] <= 1.0 and r["problems"] == EVAL_N and r["k"] == 1
    assert by["base"]["params"] == by["sft"]["params"]  # sft fine-tunes the base model
    for r in rows:
        assert r["flops"] > 0 and r["usd"] > 0
        assert r["lineage_flops"] >= r["flops"] and r["lineage_usd"] >= r["usd"]
        assert r["lineage_device_hours"] >= r["device_hours"]
    assert by["sft"]["lineage_flops"] == pytest.approx(by["sft"]["flops"] + by["base"]["flops"])
    assert by["matched"]["lineage_flops"] == pytest.approx(sum(by[n]["flops"] for n in ("base", "zero",
                                                                                        "matched")))
    assert by["eval"]["lineage_flops"] == pytest.approx(sum(r["flops"] for r in rows))


def test_summary_row_of_the_eval_stage_has_no_model_metrics(run):
    """The eval stage made no model. Its row must not borrow zero/eval.json (zero's own final eval, written as
    final_eval = true) just because the stage is called "eval"."""
    row = {r["stage"]: r for r in summary_rows(run["out"])}["eval"]
    assert (run["out"] / "zero" / "eval.json").is_file()
    assert row["params"] is None and row["pass@1"] is None and row["problems"] is None


def test_format_summary(run):
    table = format_summary(summary_rows(run["out"]))
    lines = table.splitlines()
    for name in STAGES:
        assert any(line.startswith(name + " ") for line in lines), name
    assert "(not finished)" not in table
    held_out = [line for line in lines if line.startswith("held-out:")]
    assert len(held_out) == 1 and held_out[0].startswith(f"held-out: {EVAL_N} test problems x k=1")


# ---- A finished stage whose recipe changed -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage, old, new",
    [
        ("base", "steps = 10", "steps = 11"),
        ("zero", 'max_new_tokens = 16\n\n[[stage]]\nname = "matched"',
         'max_new_tokens = 12\n\n[[stage]]\nname = "matched"'),
    ],
)
def test_a_changed_stage_is_an_error(run, stage, old, new, tmp_path):
    text = run["text"]
    assert text.count(old) == 1
    changed = run["recipe"].parent / f"changed-{stage}" / "recipe.toml"
    changed.parent.mkdir()
    changed.write_text(text.replace(old, new))
    mtimes = {p: p.stat().st_mtime_ns for p in run["out"].rglob("*") if p.is_file()}
    with pytest.raises(UserError) as e:
        run_pipeline(changed, run["out"], progress=False)
    msg = str(e.value)
    assert f"recipe.toml:{header_of(text, stage)}:" in msg and f"'{stage}'" in msg and "another config" in msg
    with pytest.raises(UserError):
        check_resumable(load_pipeline(changed, run["out"]))
    assert {p: p.stat().st_mtime_ns for p in run["out"].rglob("*") if p.is_file()} == mtimes


def test_changed_stage_through_the_cli(run, capsys):
    changed = run["recipe"].parent / "changed-cli" / "recipe.toml"
    changed.parent.mkdir()
    changed.write_text(run["text"].replace("corpus = 300", "corpus = 301"))
    assert main(["run", str(changed), "--out", str(run["out"]), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("r1kit: error: ") and "'base'" in err[0]


def test_check_shows_the_plan(run, capsys):
    """An added stage is new, the others done; --check runs nothing."""
    more = run["recipe"].parent / "more" / "recipe.toml"
    more.parent.mkdir()
    more.write_text(run["text"] + ZERO.replace('name = "zero"', 'name = "zero2"'))
    assert main(["run", str(more), "--out", str(run["out"]), "--check"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 7
    for i, (line, name) in enumerate(zip(lines, [*STAGES, "zero2"]), 1):
        assert line.startswith(f"[{i}/6] {name} ")
        assert line.split()[-1] == ("new" if name == "zero2" else "done")
    assert "from base, zero" in lines[3]
    assert lines[-1] == f"recipe {more}: 6 stages, checked"
    assert not (run["out"] / "zero2").exists()

"""`r1kit run`: finished stages are skipped, an interrupted stage resumes from its checkpoint, a changed stage
is an error, the summary table covers every stage, and `match_compute` gives an RL stage the FLOPs budget of the
stages it names (bad recipes: tests/test_recipe.py; the recipe and helpers both use: tests/pipeline_recipe.py).

One small pipeline (micro base, SFT, two RL stages, eval) runs once per module, in three calls: the first stops
after two stages, the second interrupts an RL stage after one step, the third finishes. The tests read what
those calls recorded.
"""

import json

import pytest

from pipeline_recipe import (
    BASE,
    EVAL,
    EVAL_N,
    HEAD,
    MATCHED,
    MODEL_STAGES,
    SFT,
    STAGES,
    ZERO,
    _check_plan,
    _ledger_lines,
    _no_probe,
    header_of,
    ledger_factory,
    write_rows,
)
from r1kit.cli import pipeline
from r1kit.cli.main import main
from r1kit.cli.pipeline import check_resumable, load_pipeline, run_pipeline, stage_state
from r1kit.errors import UserError
from r1kit.models.checkpoint import latest_checkpoint
from r1kit.reporting.summary import format_summary, summary_rows

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
    from r1kit.cost.ledger import read_ledger

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

"""The R1 pipeline from one recipe file (../shared/r1-reference.md §4): stages run in order, each in its own folder.

recipe.py reads and checks the recipe (the format is described there). Each stage folder holds `stage.json` (its
resolved config and inputs: the lineage) and, once finished, `done.json`. Re-running the same command skips
finished stages and resumes an interrupted one; a stage whose recipe changed is an error, not a silent reuse.
An rl stage with `match_compute` gets the FLOPs the named stages recorded in their ledgers as its budget.
Where a stage's metrics go (`log`, its trackers) is not part of what it computed: changing it redoes nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

from r1kit.algo.rl_config import RLConfig
from r1kit.cli.recipe import KINDS, Pipeline, Stage, load_pipeline, model_dir, output_of
from r1kit.config import LogConfig, build, to_dict
from r1kit.cost.ledger import read_ledger, spent_flops
from r1kit.errors import UserError
from r1kit.evaluation.evaluate import evaluate
from r1kit.loops.base import BaseConfig, run_base
from r1kit.loops.distill import DistillConfig, run_distill
from r1kit.loops.generate import GenerateConfig, run_generate
from r1kit.loops.rl import run_rl
from r1kit.loops.sft import SFTConfig, run_sft
from r1kit.models.modeling import count_params, load_model
from r1kit.reporting.runlog import MetricsLog, write_json
from r1kit.tasks import get_task

__all__ = ["KINDS", "load_pipeline", "model_dir", "output_of", "run_pipeline", "stage_state", "check_resumable"]


def stage_state(out: Path, stage: Stage) -> str:
    """done | partial | new | changed (its folder holds a run of another config)."""
    folder = out / stage.name
    record = folder / "stage.json"
    if not record.is_file():
        return "partial" if folder.exists() and any(folder.iterdir()) else "new"
    saved = json.loads(record.read_text())
    if not _same_config(saved.get("config"), stage) or saved.get("kind") != stage.kind:
        return "changed"
    return "done" if (folder / "done.json").is_file() else "partial"


def _defaults(cls) -> dict:
    """A config class's field defaults, as to_dict writes them (without building one: some need inputs)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def _same_config(saved, stage: Stage) -> bool:
    """The recorded config is the stage's, keys added to the config class since (a new option at its default,
    absent from the record) aside: an upgrade alone does not make a finished stage run again."""
    current = {k: v for k, v in json.loads(json.dumps(stage.config)).items() if k != "log"}
    if not isinstance(saved, dict):
        return False
    saved = {k: v for k, v in saved.items() if k != "log"}
    cls = KINDS[stage.kind].config
    if cls is not None:
        defaults = json.loads(json.dumps(_defaults(cls)))
        current = {k: v for k, v in current.items() if k in saved or k not in defaults or v != defaults[k]}
    return saved == current


def check_resumable(pipe: Pipeline) -> None:
    for stage in pipe.stages:
        if stage_state(pipe.out, stage) == "changed":
            raise UserError(f"{stage.file}:{stage.line}: stage {stage.name!r} in {pipe.out} ran with another "
                            f"config: use another --out, or delete {pipe.out / stage.name} to redo it")


def flops_of(out: Path, names: list[str]) -> float:
    """Compute the named stages spent (their ledgers, evaluation excluded)."""
    total = 0.0
    for name in names:
        ledger = out / name / "ledger.jsonl"
        if ledger.is_file():
            total += spent_flops(read_ledger(ledger))
    return total


def _run_stage(pipe: Pipeline, stage: Stage, ledger_factory, progress: bool) -> dict:
    cfg_data = copy.deepcopy(stage.config)
    out = pipe.out / stage.name
    if stage.kind == "base":
        return run_base(build(BaseConfig, cfg_data), resume=True, progress=progress, ledger_factory=ledger_factory)
    if stage.kind == "rl":
        if stage.keys.get("match_compute"):
            cfg_data["max_flops"] = flops_of(pipe.out, list(stage.keys["match_compute"]))
            if cfg_data["max_flops"] <= 0:
                raise UserError(f"{stage.file}:{stage.line}: stage {stage.name!r}: the stages it matches "
                                f"({', '.join(stage.keys['match_compute'])}) recorded no compute in their ledgers")
            write_json(out / "budget.json", {"match_compute": stage.keys["match_compute"],
                                             "max_flops": cfg_data["max_flops"]})
        return run_rl(build(RLConfig, cfg_data), resume=True, progress=progress, ledger_factory=ledger_factory)
    if stage.kind == "generate":
        return run_generate(build(GenerateConfig, cfg_data), resume=True, progress=progress,
                            ledger_factory=ledger_factory)
    if stage.kind == "sft":
        return run_sft(build(SFTConfig, cfg_data), resume=True, progress=progress, ledger_factory=ledger_factory)
    if stage.kind == "distill":
        return run_distill(build(DistillConfig, cfg_data), resume=True, progress=progress,
                           ledger_factory=ledger_factory)
    return _run_eval(pipe, stage, ledger_factory, progress)


def _run_eval(pipe: Pipeline, stage: Stage, ledger_factory, progress: bool) -> dict:
    """Every listed model on the same held-out problems and settings; one JSON per model (resumable)."""
    out = pipe.out / stage.name
    task = get_task(pipe.task, **pipe.prompt)
    results = {}
    for name, path in zip(stage.inputs["model_names"], stage.inputs["models"]):
        file = out / f"{Path(name).name}.json"
        if file.is_file():
            results[name] = json.loads(file.read_text())
            continue
        model, tokenizer = load_model(path)
        ledger = ledger_factory(out, "eval", model.config.to_dict()) if ledger_factory else None
        result = evaluate(model, tokenizer, task, pipe.eval, progress=progress, ledger=ledger)
        result.update(model=path, params=count_params(model))
        write_json(file, result)
        results[name] = result
    log = MetricsLog(out, log=build(LogConfig, dict(pipe.log)), config={"eval": to_dict(pipe.eval), "task": pipe.task,
                                                                        "models": stage.inputs["models"]})
    log.table(0, "evaluation", [{"model": name, "params": r.get("params"), **r["metrics"]} for name, r in results.items()])
    log.finish(0, {f"{name}/pass@1": r["metrics"].get("pass@1") for name, r in results.items()})
    return {"evaluated": list(results)}


def run_pipeline(path: str | Path, out: str | Path, *, ledger_factory=None, progress: bool = True,
                 stop_after_stages: int | None = None, on_stage=None, log: dict | None = None) -> dict:
    """Run (or continue) a recipe into `out`; returns {stage name: "ran" | "skipped"} plus the summary rows.

    `stop_after_stages` ends after that many stages have run in this call (for tests of resuming).
    `on_stage(stage, state)` is told about each stage before it runs (the CLI prints a line). `log`: [log] keys
    over the recipe's.
    """
    pipe = load_pipeline(path, out, log)
    check_resumable(pipe)
    budgeted = [s for s in pipe.stages if s.keys.get("match_compute")]
    if budgeted and ledger_factory is None:
        raise UserError(f"{budgeted[0].file}:{budgeted[0].line}: stage {budgeted[0].name!r} matches compute, which "
                        "the cost ledger measures: run the pipeline with a ledger")
    pipe.out.mkdir(parents=True, exist_ok=True)
    write_json(pipe.out / "pipeline.json", {"recipe": str(pipe.path), "task": pipe.task, "seed": pipe.seed,
                                            "eval": to_dict(pipe.eval), "prompt": pipe.prompt,
                                            "stages": [{"name": s.name, "kind": s.kind, "upstream": s.upstream}
                                                       for s in pipe.stages]})
    status, ran = {}, 0
    for stage in pipe.stages:
        state = stage_state(pipe.out, stage)
        if on_stage is not None:
            on_stage(stage, state)
        if state == "done":
            status[stage.name] = "skipped"
            continue
        if stop_after_stages is not None and ran >= stop_after_stages:
            break
        folder = pipe.out / stage.name
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "stage.json", {"name": stage.name, "kind": stage.kind, "config": stage.config,
                                           "inputs": stage.inputs,
                                           "upstream": stage.upstream, "recipe": str(pipe.path)})
        t0 = time.perf_counter()
        named = None
        if ledger_factory is not None:  # the ledger names the pipeline's stage, not the loop's kind
            def named(run_dir, _kind, model_config=None, _name=stage.name):
                return ledger_factory(run_dir, _name, model_config)
        summary = _run_stage(pipe, stage, named, progress)
        if summary.get("finished", True):
            write_json(folder / "done.json", {"seconds": time.perf_counter() - t0,
                                              "summary": {k: v for k, v in summary.items() if k != "eval"}})
            status[stage.name] = "ran"
        else:
            status[stage.name] = "interrupted"
            break
        ran += 1
    return {"status": status, "pipeline": pipe}

"""The R1 pipeline from one recipe file (../shared/r1-reference.md §4): stages run in order, each in its own folder.

    [run]                       task, seed: defaults for every stage
    [eval]                      the held-out set every model is evaluated on (EvalConfig)
    [[stage]]                   name, kind, inputs by stage name, then the kind's own config keys
    kind = base | rl | generate | sft | distill | eval

Inputs name earlier stages (or existing paths): `model` (rl, generate, sft), `data` (sft, distill logit),
`teacher` / `student` (distill), `models` (eval); `match_compute = [stages]` (rl) gives an RL stage the compute
those stages spent (a FLOPs budget), for "distillation vs RL at equal compute". An `rl` stage may start from an
RL recipe file (`recipe = "tiny-r1-zero.toml"`) whose keys the stage's own keys override.

The whole recipe is checked before anything runs: unknown kinds or keys, bad values, an input that names no
stage, or one produced by a later stage are errors that name the recipe's line. Each stage folder holds
`stage.json` (its resolved config and inputs: the lineage) and, once finished, `done.json`. Re-running the same
command skips finished stages and resumes an interrupted one; a stage whose recipe changed is an error, not a
silent reuse.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.config import build, load_toml, to_dict
from r1kit.errors import UserError
from r1kit.evaluate import evaluate
from r1kit.ledger import read_ledger
from r1kit.loops.base import BaseConfig, run_base
from r1kit.loops.distill import DistillConfig, run_distill
from r1kit.loops.generate import GenerateConfig, run_generate
from r1kit.loops.rl import run_rl
from r1kit.loops.sft import SFTConfig, run_sft
from r1kit.metrics import EvalConfig
from r1kit.modeling import count_params, load_model
from r1kit.rl_config import RLConfig
from r1kit.runlog import write_json
from r1kit.tasks import get_task

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Kind:
    """A stage kind: its config class, which keys are inputs (and what they must be), and what it produces."""

    config: type | None
    inputs: dict  # key -> "model" | "data" | "models"
    output: str  # "model" | "data" | "eval"
    model_path: str = "model"  # where the model lies inside the stage folder ("" = the folder itself)


KINDS = {
    "base": Kind(BaseConfig, {}, "model", model_path=""),
    "rl": Kind(RLConfig, {"model": "model"}, "model"),
    "generate": Kind(GenerateConfig, {"model": "model"}, "data"),
    "sft": Kind(SFTConfig, {"model": "model", "data": "data", "tokenizer": "model"}, "model"),
    "distill": Kind(DistillConfig, {"teacher": "model", "student": "model", "data": "data"}, "model"),
    "eval": Kind(None, {"models": "models"}, "eval"),
}
PIPELINE_KEYS = ("name", "kind", "recipe", "match_compute")  # stage keys the pipeline reads itself
DATA_FILE = "data.jsonl"


@dataclass
class Stage:
    name: str
    kind: str
    index: int  # position in the recipe
    line: int  # the recipe line of its [[stage]] header
    keys: dict  # the stage's own keys (inputs still as written)
    inputs: dict = field(default_factory=dict)  # key -> resolved path(s)
    upstream: list = field(default_factory=list)  # names of the stages it reads from
    config: dict = field(default_factory=dict)  # resolved config data (what stage.json records)


@dataclass
class Pipeline:
    path: Path
    out: Path
    task: str
    seed: int
    eval: EvalConfig
    stages: list


# ---- Reading and checking a recipe ---------------------------------------------------------------------------


class _Lines:
    """Where things are in the recipe's text, for error messages."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers = [i + 1 for i, line in enumerate(self.lines) if re.match(r"^\s*\[\[\s*stage\s*\]\]", line)]

    def stage(self, index: int) -> int:
        return self.headers[index] if index < len(self.headers) else 1

    def key(self, index: int, dotted: str) -> int:
        """The line of `dotted` (e.g. rollout.temperature) inside stage `index` (else the stage's header)."""
        start = self.stage(index)
        end = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines) + 1
        parts = dotted.split(".")
        last = re.escape(parts[-1])
        for n in range(start, end):
            line = self.lines[n - 1]
            if re.match(rf"^\s*(\w+\.)*[\"']?{last}[\"']?\s*=", line) or re.search(rf"[{{,]\s*{last}\s*=", line):
                return n
        return start

    def top(self, section: str) -> int:
        for n, line in enumerate(self.lines, 1):
            if re.match(rf"^\s*\[\s*{re.escape(section)}\s*\]", line):
                return n
        return 1


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_dir(out: Path, stage: Stage) -> Path:
    path = KINDS[stage.kind].model_path
    return out / stage.name / path if path else out / stage.name


def output_of(out: Path, stage: Stage) -> Path:
    kind = KINDS[stage.kind]
    if kind.output == "model":
        return model_dir(out, stage)
    if kind.output == "data":
        return out / stage.name / DATA_FILE
    return out / stage.name


def load_pipeline(path: str | Path, out: str | Path) -> Pipeline:
    """Read and check a recipe completely; raises UserError `recipe:line: ...` at the first fault."""
    path = Path(path)
    data = load_toml(path)
    where = _Lines(path.read_text())
    unknown = sorted(set(data) - {"run", "eval", "stage", "recipe"})
    if unknown:
        raise UserError(f"{path}:{where.top(unknown[0])}: unknown section [{unknown[0]}]: a pipeline recipe has "
                        "[run], [eval] and [[stage]] tables")
    run = dict(data.get("run", {}))
    bad_run = sorted(set(run) - {"task", "seed"})
    if bad_run:
        raise UserError(f"{path}:{where.top('run')}: unknown key {bad_run[0]!r} in [run] (known: task, seed)")
    task, seed = str(run.get("task", "arithmetic")), run.get("seed", 0)
    try:
        get_task(task)
        eval_cfg = build(EvalConfig, dict(data.get("eval", {})), "eval")
    except UserError as e:
        raise UserError(f"{path}:{where.top('eval')}: {e}") from None
    raw = data.get("stage")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{path}:1: no stages: add [[stage]] tables (name = ..., kind = ...)")
    pipe = Pipeline(path, Path(out), task, seed, eval_cfg, [])
    names: dict[str, int] = {}
    all_names = [s.get("name") for s in raw]
    for i, keys in enumerate(raw):
        line = where.stage(i)
        name, kind = keys.get("name"), keys.get("kind")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise UserError(f"{path}:{line}: stage {i + 1} needs a name of letters, digits, '-', '_' or '.'")
        if name in names:
            raise UserError(f"{path}:{line}: stage name {name!r} is used twice (first at line "
                            f"{where.stage(names[name])})")
        if kind not in KINDS:
            raise UserError(f"{path}:{where.key(i, 'kind')}: stage {name!r}: unknown kind {kind!r}; use one of "
                            f"{', '.join(KINDS)}")
        stage = Stage(name, kind, i, line, dict(keys))
        _resolve_inputs(pipe, stage, names, all_names, where)
        _resolve_config(pipe, stage, where)
        names[name] = i
        pipe.stages.append(stage)
    return pipe


def _resolve_inputs(pipe: Pipeline, stage: Stage, names: dict, all_names: list, where: _Lines) -> None:
    kind = KINDS[stage.kind]
    by_name = {s.name: s for s in pipe.stages}

    def resolve(key: str, value, want: str) -> str:
        line = where.key(stage.index, key)
        if not isinstance(value, str) or not value:
            raise UserError(f"{pipe.path}:{line}: stage {stage.name!r}: {key} must name a stage or a path")
        if value in by_name:
            src = by_name[value]
            produced = KINDS[src.kind].output
            if produced != want:
                raise UserError(f"{pipe.path}:{line}: stage {stage.name!r}: {key} = {value!r} is a {src.kind} "
                                f"stage, which produces {produced}, not {want}")
            stage.upstream.append(value)
            return str(output_of(pipe.out, src))
        if value in all_names:
            later = all_names.index(value)
            raise UserError(f"{pipe.path}:{line}: stage {stage.name!r} uses {value!r}, the output of a later stage "
                            f"(line {where.stage(later)}): stages run in the order written")
        if "/" in value or Path(value).exists():
            if not Path(value).exists():
                raise UserError(f"{pipe.path}:{line}: stage {stage.name!r}: {key} = {value!r}: no such path")
            return value
        raise UserError(f"{pipe.path}:{line}: stage {stage.name!r}: {key} = {value!r} names no earlier stage "
                        "and no existing path")

    for key, want in kind.inputs.items():
        if key not in stage.keys:
            continue
        value = stage.keys[key]
        if want == "models":
            values = value if isinstance(value, list) else [value]
            stage.inputs[key] = [resolve(key, v, "model") for v in values]
            stage.inputs["model_names"] = list(values)
        else:
            stage.inputs[key] = resolve(key, value, want)
    for value in stage.keys.get("match_compute", []) or []:
        if stage.kind != "rl":
            raise UserError(f"{pipe.path}:{where.key(stage.index, 'match_compute')}: only rl stages take "
                            "match_compute")
        if value not in by_name:
            raise UserError(f"{pipe.path}:{where.key(stage.index, 'match_compute')}: stage {stage.name!r}: "
                            f"match_compute names {value!r}, which is no earlier stage")
        stage.upstream.append(value)
    if stage.kind == "eval" and "models" not in stage.keys:  # default: every model made so far
        made = [s for s in pipe.stages if KINDS[s.kind].output == "model"]
        stage.inputs["models"] = [str(model_dir(pipe.out, s)) for s in made]
        stage.inputs["model_names"] = [s.name for s in made]
        stage.upstream += [s.name for s in made]


def _resolve_config(pipe: Pipeline, stage: Stage, where: _Lines) -> None:
    """The stage's config data: [run] defaults, its own keys, resolved inputs; built once to check it."""
    kind = KINDS[stage.kind]
    data = {k: v for k, v in stage.keys.items() if k not in PIPELINE_KEYS and k not in kind.inputs}
    if stage.kind == "eval":
        extra = sorted(data)
        if extra:
            raise UserError(f"{pipe.path}:{where.key(stage.index, extra[0])}: stage {stage.name!r}: eval stages "
                            f"take only `models`; the settings are the recipe's [eval] (got {extra[0]!r})")
        stage.config = {"models": stage.inputs["models"], "eval": to_dict(pipe.eval), "task": pipe.task}
        return
    if "recipe" in stage.keys:
        if stage.kind != "rl":
            raise UserError(f"{pipe.path}:{where.key(stage.index, 'recipe')}: only rl stages take a recipe file")
        base_file = (pipe.path.parent / stage.keys["recipe"]).resolve()
        if not base_file.is_file():
            raise UserError(f"{pipe.path}:{where.key(stage.index, 'recipe')}: stage {stage.name!r}: recipe "
                            f"{stage.keys['recipe']!r} not found beside {pipe.path.name}")
        base = {k: v for k, v in load_toml(base_file).items() if k != "recipe"}
        data = _deep_merge(base, data)
    data = {k: v for k, v in data.items()}
    fields = kind.config.__dataclass_fields__
    if "task" in fields:
        data.setdefault("task", pipe.task)
    data.setdefault("seed", pipe.seed)
    data.update({k: v for k, v in stage.inputs.items()})
    stage_dir = pipe.out / stage.name
    data["out"] = str(stage_dir / DATA_FILE) if stage.kind == "generate" else str(stage_dir)
    if "eval" in fields:
        data["eval"] = _deep_merge(to_dict(pipe.eval), data.get("eval", {}))
    if "final_eval" in fields:
        data.setdefault("final_eval", False)  # the pipeline's eval stage evaluates every model the same way
    try:
        cfg = build(kind.config, data)
        if isinstance(cfg, RLConfig):
            cfg.resolve()
    except UserError as e:
        key = re.match(r"^(?:unknown config key ')?([\w.]+)", str(e))
        line = where.key(stage.index, key.group(1)) if key else stage.line
        raise UserError(f"{pipe.path}:{line}: stage {stage.name!r}: {e}") from None
    stage.config = to_dict(cfg)


# ---- Running -------------------------------------------------------------------------------------------------


def stage_state(out: Path, stage: Stage) -> str:
    """done | partial | new | changed (its folder holds a run of another config)."""
    folder = out / stage.name
    record = folder / "stage.json"
    if not record.is_file():
        return "partial" if folder.exists() and any(folder.iterdir()) else "new"
    saved = json.loads(record.read_text())
    if saved.get("config") != json.loads(json.dumps(stage.config)) or saved.get("kind") != stage.kind:
        return "changed"
    return "done" if (folder / "done.json").is_file() else "partial"


def check_resumable(pipe: Pipeline) -> None:
    for stage in pipe.stages:
        if stage_state(pipe.out, stage) == "changed":
            raise UserError(f"{pipe.path}:{stage.line}: stage {stage.name!r} in {pipe.out} ran with another "
                            f"config: use another --out, or delete {pipe.out / stage.name} to redo it")


def flops_of(out: Path, names: list[str]) -> float:
    """Compute the named stages spent (their ledgers, evaluation excluded)."""
    total = 0.0
    for name in names:
        ledger = out / name / "ledger.jsonl"
        if ledger.is_file():
            total += sum(r.get("flops") or 0.0 for r in read_ledger(ledger) if r.get("phase") != "evaluation")
    return total


def _run_stage(pipe: Pipeline, stage: Stage, ledger_factory, progress: bool) -> dict:
    cfg_data = copy.deepcopy(stage.config)
    out = pipe.out / stage.name
    if stage.kind == "base":
        for stale in ("metrics.jsonl",):  # an interrupted base stage restarts from scratch
            (out / stale).unlink(missing_ok=True)
        return run_base(build(BaseConfig, cfg_data), progress=progress, ledger_factory=ledger_factory)
    if stage.kind == "rl":
        if stage.keys.get("match_compute"):
            cfg_data["max_flops"] = flops_of(pipe.out, list(stage.keys["match_compute"]))
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
    task = get_task(pipe.task)
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
    return {"evaluated": list(results)}


def run_pipeline(path: str | Path, out: str | Path, *, ledger_factory=None, progress: bool = True,
                 stop_after_stages: int | None = None, on_stage=None) -> dict:
    """Run (or continue) a recipe into `out`; returns {stage name: "ran" | "skipped"} plus the summary rows.

    `stop_after_stages` ends after that many stages have run in this call (for tests of resuming).
    `on_stage(stage, state)` is told about each stage before it runs (the CLI prints a line).
    """
    pipe = load_pipeline(path, out)
    check_resumable(pipe)
    pipe.out.mkdir(parents=True, exist_ok=True)
    write_json(pipe.out / "pipeline.json", {"recipe": str(pipe.path), "task": pipe.task, "seed": pipe.seed,
                                            "eval": to_dict(pipe.eval),
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
                                           "inputs": {k: v for k, v in stage.inputs.items()},
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

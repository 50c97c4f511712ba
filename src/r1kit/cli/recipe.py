"""Pipeline recipes: reading one (and what it includes) and checking all of it before anything runs.

    [run]                       task, seed: defaults for every stage
    [eval]                      the held-out set every model is evaluated on (EvalConfig)
    [prompt]                    format options for every stage's task and the eval (PromptConfig)
    [log]                       the trackers of every stage (LogConfig: report_to = ["tensorboard", "trackio"])
    [[stage]]                   name, kind, inputs by stage name, then the kind's own config keys
    kind = base | rl | generate | sft | distill | eval

Inputs name earlier stages (or existing paths): `model` (rl, generate, sft), `data` (sft, distill logit),
`teacher` / `student` (distill), `models` (eval), `tokenizer` (base, sft); `match_compute = [stages]` (rl) gives
an RL stage the compute those stages spent (a FLOPs budget). An `rl` stage may start from an RL recipe file
(`recipe = "tiny-r1-zero.toml"`) whose keys the stage's own keys override; `include = "other.toml"` runs another
recipe's stages first. Unknown sections, kinds or keys, bad values, an input that names no stage, or one produced
by a later stage are errors that name the file and line. pipeline.py runs what `load_pipeline` returns.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.algo.rl_config import RLConfig
from r1kit.config import EvalConfig, LogConfig, build, load_toml, to_dict
from r1kit.errors import UserError
from r1kit.loops.base import BaseConfig
from r1kit.loops.distill import DistillConfig
from r1kit.loops.generate import GenerateConfig
from r1kit.loops.sft import SFTConfig
from r1kit.tasks import get_task
from r1kit.tasks.formats import PromptConfig

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Kind:
    """A stage kind: its config class, which keys are inputs (and what they must be), and what it produces."""

    config: type | None
    inputs: dict  # key -> "model" | "data" | "models"
    output: str  # "model" | "data" | "eval"
    model_path: str = "model"  # where the model lies inside the stage folder ("" = the folder itself)


KINDS = {
    "base": Kind(BaseConfig, {"tokenizer": "model"}, "model", model_path=""),
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
    file: Path = Path()  # the recipe file that defines it
    where: object = None  # that file's _Lines


@dataclass
class Pipeline:
    path: Path
    out: Path
    task: str
    seed: int
    eval: EvalConfig
    stages: list
    prompt: dict = field(default_factory=dict)  # [prompt]: format options over the task spec's (set ones only)
    log: dict = field(default_factory=dict)  # [log]: trackers for every stage, under a stage's own [stage.log]


class _Lines:
    """Where things are in the recipe's text, for error messages."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers = [i + 1 for i, line in enumerate(self.lines) if re.match(r"^\s*\[\[\s*stage\s*\]\]", line)]

    def stage(self, index: int) -> int:
        return self.headers[index] if index < len(self.headers) else 1

    def key(self, index: int, dotted: str) -> int:
        """The line of `dotted` (e.g. rollout.temperature) inside stage `index` (else the stage's header).

        A key inside a sub-table counts only under its own `[stage.SECTION]` header, as `SECTION.key = ...`, or
        inside an inline `SECTION = {key = ...}`."""
        start = self.stage(index)
        end = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines) + 1
        *sections, last = dotted.split(".")
        section, key = ".".join(sections), re.escape(last)
        current = ""  # the [stage.X] sub-table the scan is in ("" = the stage's own keys)
        for n in range(start, end):
            line = self.lines[n - 1]
            header = re.match(r"^\s*\[\s*stage\.([\w.]+)\s*\]", line)
            if header:
                current = header.group(1)
                continue
            if current == section and re.match(rf"^\s*[\"']?{key}[\"']?\s*=", line):
                return n
            if section and current == "" and (
                re.match(rf"^\s*{re.escape(section)}\.{key}\s*=", line)
                or re.match(rf"^\s*{re.escape(section)}\s*=.*[{{,]\s*{key}\s*=", line)
            ):
                return n
        if section:  # the sub-table's header, else the stage's
            for n in range(start, end):
                if re.match(rf"^\s*\[\s*stage\.{re.escape(section)}\s*\]", self.lines[n - 1]):
                    return n
        return start

    def top_key(self, key: str) -> int:
        for n, line in enumerate(self.lines, 1):
            if re.match(rf"^\s*{re.escape(key)}\s*=", line):
                return n
        return 1

    def top(self, section: str) -> int:
        for n, line in enumerate(self.lines, 1):
            if re.match(rf"^\s*\[\s*{re.escape(section)}\s*\]", line):
                return n
        return 1


def _deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, table by table (a non-table value replaces whatever was there)."""
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


def _read_files(path: Path, chain: tuple = ()) -> list[tuple[Path, dict, _Lines]]:
    """The recipe and, first, the recipes it includes (`include = "other.toml"`, beside it), in running order."""
    if path.resolve() in chain:
        raise UserError(f"{path}:1: include cycle: {' -> '.join(str(c) for c in (*chain, path.resolve()))}")
    data = load_toml(path)
    where = _Lines(path.read_text())
    unknown = sorted(set(data) - {"run", "eval", "prompt", "log", "stage", "recipe", "include"})
    if unknown:
        raise UserError(f"{path}:{where.top(unknown[0])}: unknown section [{unknown[0]}]: a pipeline recipe has "
                        "[run], [eval], [prompt], [log] and [[stage]] tables (and an optional include)")
    files = []
    if "include" in data:
        other = path.parent / str(data["include"])
        if not other.is_file():
            raise UserError(f"{path}:{where.top_key('include')}: include {data['include']!r}: no such recipe "
                            f"beside {path.name}")
        files = _read_files(other, (*chain, path.resolve()))
    return [*files, (path, data, where)]


def load_pipeline(path: str | Path, out: str | Path, log: dict | None = None) -> Pipeline:
    """Read and check a recipe completely; raises UserError `recipe:line: ...` at the first fault. `log`: [log]
    keys over the recipe's (`r1kit run --log.report_to=...`)."""
    path = Path(path)
    files = _read_files(path)
    run, eval_data, prompt_data, log_data = {}, {}, {}, {}
    for file, data, where in files:  # an including recipe's [run], [eval] and [prompt] override the included one's
        bad_run = sorted(set(data.get("run", {})) - {"task", "seed"})
        if bad_run:
            raise UserError(f"{file}:{where.top('run')}: unknown key {bad_run[0]!r} in [run] (known: task, seed)")
        run.update(data.get("run", {}))
        eval_data.update(data.get("eval", {}))
        prompt_data.update(data.get("prompt", {}))
        log_data.update(data.get("log", {}))
        try:
            build(LogConfig, dict(log_data), "log")
        except UserError as e:
            raise UserError(f"{file}:{where.top('log')}: {e}") from None
        try:
            prompt = build(PromptConfig, dict(prompt_data), "prompt").overrides()
        except UserError as e:
            raise UserError(f"{file}:{where.top('prompt')}: {e}") from None
        try:
            get_task(str(run.get("task", "arithmetic")), **prompt)
            eval_cfg = build(EvalConfig, dict(eval_data), "eval")
        except UserError as e:
            raise UserError(f"{file}:{where.top('eval')}: {e}") from None
    log_data.update(log or {})
    build(LogConfig, dict(log_data), "log")
    pipe = Pipeline(path, Path(out), str(run.get("task", "arithmetic")), run.get("seed", 0), eval_cfg, [],
                    prompt, log_data)
    everything = [(s.get("name"), file, where.stage(i)) for file, data, where in files
                  for i, s in enumerate(data.get("stage") or [])]
    if not everything:
        raise UserError(f"{path}:1: no stages: add [[stage]] tables (name = ..., kind = ...)")
    names: dict[str, str] = {}
    for file, data, where in files:
        raw = data.get("stage") or []
        if not isinstance(raw, list):
            raise UserError(f"{file}:{where.top('stage')}: stages are [[stage]] tables (an array of tables)")
        for i, keys in enumerate(raw):
            line = where.stage(i)
            name, kind = keys.get("name"), keys.get("kind")
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise UserError(f"{file}:{line}: stage {i + 1} needs a name of letters, digits, '-', '_' or '.'")
            if name in names:
                raise UserError(f"{file}:{line}: stage name {name!r} is used twice (first at {names[name]})")
            if kind not in KINDS:
                raise UserError(f"{file}:{where.key(i, 'kind')}: stage {name!r}: unknown kind {kind!r}; use one "
                                f"of {', '.join(KINDS)}")
            stage = Stage(name, kind, i, line, dict(keys), file=file, where=where)
            _resolve_inputs(pipe, stage, everything)
            _resolve_config(pipe, stage)
            names[name] = f"{file.name}:{line}"
            pipe.stages.append(stage)
    return pipe


def _resolve_inputs(pipe: Pipeline, stage: Stage, everything: list) -> None:
    kind, where = KINDS[stage.kind], stage.where
    all_names = [name for name, _, _ in everything]
    by_name = {s.name: s for s in pipe.stages}

    def resolve(key: str, value, want: str) -> str:
        line = where.key(stage.index, key)
        if not isinstance(value, str) or not value:
            raise UserError(f"{stage.file}:{line}: stage {stage.name!r}: {key} must name a stage or a path")
        if value in by_name:
            src = by_name[value]
            produced = KINDS[src.kind].output
            if produced != want:
                raise UserError(f"{stage.file}:{line}: stage {stage.name!r}: {key} = {value!r} is a {src.kind} "
                                f"stage, which produces {produced}, not {want}")
            stage.upstream.append(value)
            return str(output_of(pipe.out, src))
        if value in all_names:
            later = all_names.index(value)
            _, file, at = everything[later]
            raise UserError(f"{stage.file}:{line}: stage {stage.name!r} uses {value!r}, the output of a later stage "
                            f"({file.name}:{at}): stages run in the order written")
        if "/" in value or Path(value).exists():
            if not Path(value).exists():
                raise UserError(f"{stage.file}:{line}: stage {stage.name!r}: {key} = {value!r}: no such path")
            return value
        raise UserError(f"{stage.file}:{line}: stage {stage.name!r}: {key} = {value!r} names no earlier stage "
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
            raise UserError(f"{stage.file}:{where.key(stage.index, 'match_compute')}: only rl stages take "
                            "match_compute")
        if value not in by_name:
            raise UserError(f"{stage.file}:{where.key(stage.index, 'match_compute')}: stage {stage.name!r}: "
                            f"match_compute names {value!r}, which is no earlier stage")
        stage.upstream.append(value)
    if stage.kind == "eval" and "models" not in stage.keys:  # default: every model made so far
        made = [s for s in pipe.stages if KINDS[s.kind].output == "model"]
        stage.inputs["models"] = [str(model_dir(pipe.out, s)) for s in made]
        stage.inputs["model_names"] = [s.name for s in made]
        stage.upstream += [s.name for s in made]


def _resolve_config(pipe: Pipeline, stage: Stage) -> None:
    """The stage's config data: [run] defaults, its own keys, resolved inputs; built once to check it."""
    kind, where = KINDS[stage.kind], stage.where
    data = {k: v for k, v in stage.keys.items() if k not in PIPELINE_KEYS and k not in kind.inputs}
    if stage.kind == "eval":
        extra = sorted(data)
        if extra:
            raise UserError(f"{stage.file}:{where.key(stage.index, extra[0])}: stage {stage.name!r}: eval stages "
                            f"take only `models`; the settings are the recipe's [eval] (got {extra[0]!r})")
        stage.config = {"models": stage.inputs["models"], "eval": to_dict(pipe.eval), "task": pipe.task}
        if pipe.prompt:  # (absent when unset: the record of a stage run before [prompt] existed still matches)
            stage.config["prompt"] = dict(pipe.prompt)
        return
    if "recipe" in stage.keys:
        if stage.kind != "rl":
            raise UserError(f"{stage.file}:{where.key(stage.index, 'recipe')}: only rl stages take a recipe file")
        base_file = (stage.file.parent / stage.keys["recipe"]).resolve()
        if not base_file.is_file():
            raise UserError(f"{stage.file}:{where.key(stage.index, 'recipe')}: stage {stage.name!r}: recipe "
                            f"{stage.keys['recipe']!r} not found beside {stage.file.name}")
        base = {k: v for k, v in load_toml(base_file).items() if k != "recipe"}
        data = _deep_merge(base, data)
    fields = kind.config.__dataclass_fields__
    if "task" in fields:
        data.setdefault("task", pipe.task)
    data.setdefault("seed", pipe.seed)
    if "prompt" in fields and pipe.prompt:  # the recipe's [prompt] under the stage's own (and its RL recipe's)
        if not isinstance(data.get("prompt", {}), dict):
            raise UserError(f"{stage.file}:{where.key(stage.index, 'prompt')}: stage {stage.name!r}: prompt: "
                            "expected a [stage.prompt] table")
        data["prompt"] = {**pipe.prompt, **data.get("prompt", {})}
    if "log" in fields and pipe.log:  # the recipe's [log] under the stage's own
        if not isinstance(data.get("log", {}), dict):
            raise UserError(f"{stage.file}:{where.key(stage.index, 'log')}: stage {stage.name!r}: log: expected a "
                            "[stage.log] table")
        data["log"] = {**pipe.log, **data.get("log", {})}
    data.update(stage.inputs)
    stage_dir = pipe.out / stage.name
    data["out"] = str(stage_dir / DATA_FILE) if stage.kind == "generate" else str(stage_dir)
    if "eval" in fields:
        if not isinstance(data.get("eval", {}), dict):
            raise UserError(f"{stage.file}:{where.key(stage.index, 'eval')}: stage {stage.name!r}: eval: expected a "
                            "[stage.eval] table")
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
        raise UserError(f"{stage.file}:{line}: stage {stage.name!r}: {e}") from None
    stage.config = to_dict(cfg)

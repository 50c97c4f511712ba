"""Tasks by name. A task spec is `NAME` or `NAME:key=value,key=value` (for jsonl: `jsonl:PATH[,key=value]`; for
reasoning-gym's datasets: `rg:DATASET[:key=value,...]`; for datasets: `data:PATH`, `hf:NAME[:CONFIG]`, presets
`gsm8k`, `math500`, `aime24`, `aime25`, see tasks/dataset.py; code, judged in r1kit.sandbox: `humaneval`,
`pysynth`)."""

from __future__ import annotations

import dataclasses
import inspect

from r1kit.errors import UserError
from r1kit.tasks.base import Problem, Score, Task


def _arithmetic(**kw):
    from r1kit.tasks.arithmetic import ArithmeticTask

    return ArithmeticTask(**kw)


def _countdown(**kw):
    from r1kit.tasks.countdown import CountdownTask

    return CountdownTask(**kw)


def _jsonl(**kw):
    from r1kit.tasks.jsonl import JsonlTask

    return JsonlTask(**kw)


def _reasoning_gym(**kw):
    from r1kit.tasks.reasoning_gym import ReasoningGymTask

    return ReasoningGymTask(**kw)


def _humaneval(**kw):
    from r1kit.tasks.humaneval import HumanEvalTask

    return HumanEvalTask(**kw)


def _pysynth(**kw):
    from r1kit.tasks.pysynth import PySynthTask

    return PySynthTask(**kw)


def _dataset(**kw):
    from r1kit.tasks.dataset import DatasetTask

    return DatasetTask(**kw)


def _preset(name: str):
    def make(**kw):
        from r1kit.tasks.dataset import preset_task

        return preset_task(name, **kw)

    return make


PRESETS = ("gsm8k", "math500", "aime24", "aime25")  # tasks/dataset.py's PRESETS: hub benchmarks, columns mapped
TASKS = {"arithmetic": _arithmetic, "countdown": _countdown, "jsonl": _jsonl, "rg": _reasoning_gym,
         "data": _dataset, "hf": _dataset, "humaneval": _humaneval, "pysynth": _pysynth,
         **{name: _preset(name) for name in PRESETS}}
POSITIONAL = {"jsonl": "path", "data": "path", "hf": "hub"}  # the option a spec's bare first item sets


def _coerce(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_task_spec(spec: str) -> tuple[str, dict]:
    """`arithmetic:digits=2,ops=+` -> ("arithmetic", {"digits": 2, "ops": "+"}); `jsonl:data.jsonl` -> path;
    `rg:chain_sum:max_terms=3` -> ("rg", {"dataset": "chain_sum", "max_terms": 3})."""
    name, _, rest = spec.partition(":")
    kwargs: dict = {}
    if name == "rg":
        dataset, _, rest = rest.partition(":")
        if not dataset.strip() or "=" in dataset or "," in dataset:
            raise UserError(f"task spec {spec!r}: write rg:DATASET[:key=value,...] (e.g. rg:chain_sum:max_terms=3)")
        kwargs["dataset"] = dataset.strip()
    for i, item in enumerate(p for p in rest.split(",") if p):
        key, eq, value = item.partition("=")
        if not eq:
            if i == 0 and name in POSITIONAL:
                kwargs[POSITIONAL[name]] = item
                continue
            raise UserError(f"task spec {spec!r}: {item!r} is not key=value (e.g. arithmetic:digits=2)")
        kwargs[key.strip()] = _coerce(value.strip())
    return name, kwargs


def get_task(spec: str | Task, **overrides) -> Task:
    """Build a task from its spec; unknown names or knobs are UserErrors that list what exists."""
    if not isinstance(spec, str):
        return spec
    name, kwargs = parse_task_spec(spec)
    kwargs.update(overrides)
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}: use one of {', '.join(sorted(TASKS))} "
                        "(or jsonl:PATH, data:PATH, hf:NAME, rg:DATASET)")
    try:
        return TASKS[name](**kwargs)
    except TypeError as e:
        raise UserError(f"task {name!r}: {e}; check the task's options") from None


def task_options(task: Task) -> dict:
    """The task's knobs, for recording in a run's resolved config (a task's own `options()` when it has one)."""
    if hasattr(task, "options"):
        return task.options()
    if dataclasses.is_dataclass(task):
        return dataclasses.asdict(task)
    sig = inspect.signature(type(task).__init__)
    return {k: getattr(task, k) for k in sig.parameters if k != "self" and hasattr(task, k)}


__all__ = ["Problem", "Score", "Task", "TASKS", "get_task", "parse_task_spec", "task_options"]

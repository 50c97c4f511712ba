"""The recipes in recipes/ are what users run first: each must load, resolve its task and prompt, and (for
pipelines) pass every check `r1kit run` makes before a stage starts. A recipe that rots fails here, not at a
user's step 1."""

from pathlib import Path

import pytest

from r1kit.cli.pipeline import load_pipeline
from r1kit.cli.train import rl_config_from
from r1kit.config import load_toml
from r1kit.tasks import get_task

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.toml"))


def _is_pipeline(path: Path) -> bool:
    return bool({"stage", "include"} & load_toml(path).keys())


def test_there_are_recipes():
    assert {"tiny-r1-zero.toml", "tiny-r1.toml", "tiny-distill.toml", "smollm2-r1-zero.toml",
            "smollm2-distill.toml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("path", [p for p in RECIPES if not _is_pipeline(p)], ids=lambda p: p.name)
def test_rl_recipe_builds_and_its_task_resolves(path):
    class Args:
        config, model, task, out, strict = str(path), "a-model", None, "out", False

    cfg = rl_config_from(Args, []).resolve()
    task = get_task(cfg.task)
    assert task.problems("test", 4, seed=cfg.seed)


@pytest.mark.parametrize("path", [p for p in RECIPES if _is_pipeline(p)], ids=lambda p: p.name)
def test_pipeline_recipe_passes_the_checks(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Models a recipe takes from outside the pipeline (the imported SmolLM2, its RL run) are paths: stand them in.
    for stage in load_toml(path).get("stage", []):
        for key in ("model", "teacher", "student"):
            if "/" in str(stage.get(key, "")):
                (tmp_path / stage[key]).mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(path, tmp_path / "out")
    assert pipe.stages

"""Training checkpoints: a Hugging Face model directory plus the state needed to resume exactly.

    RUN_DIR/checkpoints/step_000050/   model.safetensors, config.json, tokenizer files  (the policy)
                                       trainer_state.pt   optimiser, step, reference weights, doctor, RNG
    RUN_DIR/checkpoints/latest         the name of the newest complete checkpoint

A checkpoint is written into a temporary directory and renamed into place, then `latest` is replaced atomically,
so a run killed at any moment leaves the previous checkpoint intact. Non-finite weights are never written.
Randomness in the RL loop is derived from (seed, step), so a resumed run replays the same samples.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

from r1kit.errors import UserError
from r1kit.models.modeling import save_model

STATE_FILE = "trainer_state.pt"


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def staging_dir(run_dir, step: int) -> Path:
    """The (emptied) temporary directory checkpoint `step` is written into before `publish` renames it."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".step_{step:06d}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def publish(run_dir, step: int, staging: Path, keep: int = 2) -> Path:
    """Rename a complete staging directory into place, point `latest` at it, prune to the newest `keep`."""
    root = checkpoint_root(run_dir)
    name = f"step_{step:06d}"
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    tmp = root / ".latest.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / "latest")
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_state(staging: Path, step: int, model, tokenizer, state: dict, state_dict: dict | None = None) -> None:
    """The Hugging Face model (from `state_dict` when given: a gathered sharded model) and the trainer state."""
    state = dict(state, step=step, python_rng=random.getstate(), torch_rng=torch.get_rng_state())
    save_model(model, tokenizer, staging, state_dict=state_dict)  # raises on NaN/inf weights: nothing is written
    torch.save(state, staging / STATE_FILE)


def save_checkpoint(run_dir, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` (model + `state`), point `latest` at it, prune to the newest `keep`."""
    staging = staging_dir(run_dir, step)
    write_state(staging, step, model, tokenizer, state)
    return publish(run_dir, step, staging, keep)


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def step_of(checkpoint: Path | None) -> int:
    """The step a checkpoint was written at (0 for none)."""
    return int(checkpoint.name.split("_")[1]) if checkpoint is not None else 0


def checkpoint_to_resume(run_dir, resume: bool) -> Path | None:
    """The checkpoint a run continues from; a run directory that already holds one needs `resume`."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and not resume:
        raise UserError(f"{run_dir} already holds a run (checkpoint {ckpt.name}): add --resume to continue it, or "
                        "choose another --out")
    return ckpt if resume else None


def load_state(path: Path) -> dict:
    state = torch.load(path / STATE_FILE, weights_only=False, map_location="cpu")
    random.setstate(state.pop("python_rng"))
    torch.set_rng_state(state.pop("torch_rng"))
    return state

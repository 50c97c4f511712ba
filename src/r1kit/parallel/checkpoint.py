"""Checkpoints of a sharded (FSDP2) run: torch.distributed.checkpoint (DCP) shards plus the usual export.

    RUN_DIR/checkpoints/step_000050/   model.safetensors, config.json, tokenizer   (gathered on rank 0 only)
                                       trainer_state.pt   step, doctor, history, world size   (rank 0)
                                       sharded/           DCP: every rank's shards of the policy, the optimiser
                                                          state and the reference model

Each rank writes its own shards (DCP, in parallel), so no rank ever holds the whole optimiser state; the Hugging
Face export is gathered one tensor at a time onto rank 0's CPU. The directory is staged and renamed into place
by rank 0 after every rank has written (checkpoint.publish), so a kill -9 at any moment leaves the previous
checkpoint intact. A resume loads the shards back into the same layout, so the run continues bit for bit; a
different world size is refused (the shards would be re-laid out and the per-rank sampling streams change).
"""

from __future__ import annotations

from pathlib import Path

from r1kit.errors import UserError
from r1kit.models.checkpoint import load_state, publish, save_checkpoint, staging_dir, write_state
from r1kit.parallel import dist
from r1kit.parallel.engine import Engine
from r1kit.parallel.fsdp import full_state_dict

SHARDED_DIR = "sharded"
SHARED_TOKEN = ".shared-by-all-ranks"


def save_training_checkpoint(run_dir, step: int, policy, export_model, tokenizer, optimizer, ref, state: dict,
                             keep: int, engine: Engine) -> None:
    """Checkpoint `step` of a training run: on one process a Hugging Face directory + trainer_state.pt (optimiser
    and reference inside); sharded, DCP shards + the gathered export. Every rank calls it."""
    if engine.sharded:
        save_sharded_checkpoint(run_dir, step, policy, export_model, tokenizer, optimizer, ref, state, keep, engine)
    else:
        state = dict(state, optimizer=optimizer.state_dict(), ref=ref.state_dict() if ref is not None else None)
        save_checkpoint(run_dir, step, policy, tokenizer, state, keep)


def load_training_checkpoint(checkpoint: Path, policy, optimizer, ref, engine: Engine) -> dict:
    """The trainer state of `checkpoint`, with the optimiser (and reference) loaded; the policy's weights come
    from its model directory. A checkpoint written by another number of ranks is refused."""
    state = load_state(checkpoint)
    written = state.get("world_size", 1)
    if written != engine.info.world:
        raise UserError(f"{checkpoint} was written by {written} rank(s) and this run has {engine.info.world}: "
                        "resume with the same number of processes (torchrun --nproc-per-node/--nnodes), "
                        "or start a new run from its model directory")
    if engine.sharded:
        load_sharded_checkpoint(checkpoint, policy, optimizer, ref)
    else:
        optimizer.load_state_dict(state["optimizer"])
        if ref is not None:
            ref.load_state_dict(state["ref"])
    return state


def _stateful(policy, optimizer, ref) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(policy, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    if ref is not None:
        state["ref"] = ref.state_dict()
    return state


def save_sharded_checkpoint(run_dir, step: int, policy, export_model, tokenizer, optimizer, ref, state: dict,
                            keep: int, engine: Engine) -> Path | None:
    """Collective: every rank calls it. Returns the checkpoint's path on rank 0 (None elsewhere)."""
    import torch.distributed.checkpoint as dcp

    staging = staging_dir(run_dir, step) if engine.info.main else None
    if staging is not None:
        (staging / SHARED_TOKEN).write_text("written by rank 0\n")
    staging = Path(dist.broadcast_object(str(staging) if staging else None))
    seen = dist.all_gather_objects((staging / SHARED_TOKEN).is_file())
    if not all(seen):
        raise UserError(f"ranks {[r for r, ok in enumerate(seen) if not ok]} do not see {staging}: a sharded "
                        "run's --out must be on a file system that every node mounts (NFS, Lustre, ...)")
    full = full_state_dict(policy)  # rank 0: every weight, on the CPU; the others: {}
    dcp.save(_stateful(policy, optimizer, ref), checkpoint_id=staging / SHARDED_DIR)
    final = None
    if engine.info.main:
        write_state(staging, step, export_model, tokenizer, dict(state, world_size=engine.info.world),
                    state_dict=full)
        (staging / SHARED_TOKEN).unlink()
        final = publish(run_dir, step, staging, keep)
    dist.barrier()
    return final


def load_sharded_checkpoint(checkpoint: Path, policy, optimizer, ref) -> None:
    """Load the shards of `checkpoint` into the sharded policy, optimiser and reference (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if not (checkpoint / SHARDED_DIR).is_dir():
        raise UserError(f"{checkpoint} has no {SHARDED_DIR}/ (shards): it is damaged or was not written by this "
                        "run; start a new run from its model directory")
    target = _stateful(policy, optimizer, ref)
    dcp.load(target, checkpoint_id=checkpoint / SHARDED_DIR)
    set_state_dict(policy, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    if ref is not None:
        ref.load_state_dict(target["ref"])

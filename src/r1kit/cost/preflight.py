"""Checks before step 1 of an RL run: will it fit? The memory plan of `r1kit plan` (memplan.py) for this run on
this device, against the device's capacity (its GPU's memory, or the machine's RAM shared by the ranks on it).
The run doctor warns, or with --strict refuses, before any weight is loaded. Layer 4: it reads the model's
config.json and tokenizer, and the engine the loop resolved.
"""

from __future__ import annotations

import dataclasses

from r1kit.algo.rl_config import RLConfig
from r1kit.cost.devices import gpu_kind
from r1kit.cost.estimate import load_model_config
from r1kit.cost.hardware import DEVICE_MEMORY_BYTES
from r1kit.cost.memplan import check_memory, memory_plan
from r1kit.errors import UserError
from r1kit.models.modeling import load_tokenizer
from r1kit.parallel import dist
from r1kit.parallel.engine import Engine
from r1kit.tasks.prompting import make_prompter


def check_memory_before_launch(cfg: RLConfig, task, engine: Engine) -> None:
    """The run doctor's memory check before anything is loaded: warns, or refuses with --strict (every rank)."""
    warning = None
    if engine.info.main:
        prompter = make_prompter(task, load_tokenizer(cfg.model))
        longest = max(map(len, prompter.encode(task.problems("train", 64, seed=cfg.seed))), default=1)
        try:
            warning = memory_warning(load_model_config(cfg.model), cfg, engine, longest)
        except UserError:  # a config the plan cannot read (GPT-2's n_embd, ...): no plan, no check
            warning = None
    warning = dist.broadcast_object(warning)
    if warning and cfg.doctor.strict:
        raise UserError(f"r1kit doctor (--strict): {warning}")
    if warning and engine.info.main:
        print(f"r1kit doctor: {warning}", flush=True)


def memory_warning(model_config: dict, cfg: RLConfig, engine: Engine, prompt_len: int) -> str | None:
    """The memory plan (memplan.py) of this run on this device; a warning when it does not fit."""
    resolved = dataclasses.replace(cfg, parallel=dataclasses.replace(  # the plan of what this engine does
        cfg.parallel, dtype=engine.precision,
        activation_checkpointing="on" if engine.activation_checkpointing else "off"))
    gpu = None
    if engine.kind == "cuda":  # an unknown GPU is planned as a datacenter one, against its real capacity
        kind = gpu_kind(engine.device_name())
        gpu = kind if kind in DEVICE_MEMORY_BYTES else "H100"
    plan = memory_plan(model_config, resolved, engine.info.world, gpu, capacity_bytes=engine.memory_capacity_bytes(),
                       prompt_len=prompt_len)
    return check_memory(plan)

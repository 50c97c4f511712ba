"""Supervised fine-tuning on (prompt, completion) rows, as R1's cold start and distillation do
(../shared/r1-reference.md §4-5): loss on completion tokens only, examples packed into rows without attention
across them, AdamW with linear warmup and cosine decay to 1/10 of the peak learning rate, several epochs.

A step takes `batch_size` examples (the paper: 64) in a fresh seeded order each epoch; their completion tokens
share one average. Checkpoints hold the optimiser and step; the data order is a function of (seed, epoch), so
`--resume` ends with the same weights as an uninterrupted run. The student is a model directory or a fresh
Llama of a named size on the teacher's tokenizer (`student_size`).

    r1kit sft --model runs/base-tiny --data traces.jsonl --out runs/sft
    r1kit sft --student-size micro --data traces.jsonl --out runs/student
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.algo.sft import (
    cosine_lr,
    encode_rows,
    epoch_order,
    make_optimizer,
    make_student,
    optimizer_step,
    packed_batches,
    read_rows,
    sft_token_loss,
    task_of,
    teacher_answer_contract,
    teacher_of,
)
from r1kit.config import EvalConfig, LogConfig, ParallelConfig, to_dict
from r1kit.errors import UserError
from r1kit.evaluation.evaluate import finish_model, format_eval_table
from r1kit.models.checkpoint import (
    checkpoint_to_resume,
    latest_checkpoint,
    load_state,
    save_checkpoint,
    step_of,
)
from r1kit.models.lora import LoraConfig, load_for_training
from r1kit.models.modeling import count_params
from r1kit.parallel.engine import resolve_engine
from r1kit.reporting.runlog import MetricsLog, progress_bar, write_json
from r1kit.tasks import get_task
from r1kit.tasks.formats import PromptConfig
from r1kit.tasks.prompting import make_prompter
from r1kit.tools import make_toolbox
from r1kit.tools.base import ToolConfig


@dataclass
class SFTConfig:
    data: str = ""  # JSONL rows with "prompt" and "completion" (r1kit generate writes them)
    out: str = ""  # run directory; the final model goes to OUT/model
    model: str = ""  # the student: a Hugging Face model directory ...
    student_size: str = ""  # ... or a fresh Llama of this size (modeling.SIZES) on the tokenizer below
    tokenizer: str = ""  # tokenizer directory for a fresh student (default: the teacher named in the data)
    task: str = ""  # task for the held-out evaluation (default: the task named in the data)
    seed: int = 0
    epochs: int = 2  # passes over the data (the paper: 2-3)
    batch_size: int = 64  # examples per optimiser step (the paper: 64)
    max_len: int = 512  # tokens per packed row; longer examples are cut
    packing: bool = True  # several examples per row, attention confined to each
    max_tokens: int = 8192  # tokens per forward pass (gradient accumulation above it)
    lr: float = 1e-4  # peak learning rate (the paper: 1e-4 for its 1.5B student)
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio (the paper: 1/10)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_examples: int = 0  # use at most this many rows; 0: all
    log_every: int = 10
    checkpoint_every: int = 100  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 1
    final_eval: bool = True  # evaluate the final model on the task's held-out split
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank 0: full fine-tuning
    prompt: PromptConfig = field(default_factory=PromptConfig)  # the student's format options over the task's
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # device and precision (one process)
    tools: list[str] = field(default_factory=list)  # tools the final evaluation lets the model call, e.g. python
    tool_use: ToolConfig = field(default_factory=ToolConfig)  # their call format and budgets (tools/base.py)
    log: LogConfig = field(default_factory=LogConfig)  # trackers: TensorBoard, trackio, wandb

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.max_len, self.max_tokens, self.checkpoint_every) < 1:
            raise UserError("sft: epochs, batch_size, max_len, max_tokens and checkpoint_every must be >= 1")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise UserError("sft: lr must be positive and min_lr_ratio in [0, 1]")
        if not self.data or not self.out:
            raise UserError("sft: give --data (a JSONL file) and --out (a run directory)")


def run_sft(cfg: SFTConfig, *, resume: bool = False, progress: bool = True, ledger_factory=None,
            stop_after: int | None = None) -> dict:
    """Fine-tune as configured; returns a summary (examples, steps, seconds, eval). `stop_after`: see run_rl."""
    out = Path(cfg.out)
    rows = read_rows(cfg.data, cfg.max_examples)
    ckpt = checkpoint_to_resume(out, resume)
    model, tokenizer = load_for_training(
        lambda: make_student(cfg.model, cfg.student_size, cfg.tokenizer or teacher_of(rows), cfg.seed), ckpt, cfg.lora, cfg.seed)
    engine = resolve_engine(cfg.parallel)
    model = engine.place(model)
    task_spec = cfg.task or task_of(rows)
    task, prompter = None, None
    if task_spec:  # prompts in the student's own format; answers in the teacher's (unless the task names one)
        task = get_task(task_spec, **cfg.prompt.overrides())
        teacher_answer_contract(task, rows)
        prompter = make_prompter(task, tokenizer)
    tools = make_toolbox(cfg.tools, cfg.tool_use, chat=bool(prompter and prompter.chat), tokenizer=tokenizer,
                         system=prompter.system if prompter else "")
    if tools is not None and prompter is not None:
        tools.attach(prompter)  # a chat prompt lists the tools, as the traces' prompts did
    examples = encode_rows(tokenizer, rows, cfg.max_len, prompter)
    per_epoch = -(-len(examples) // cfg.batch_size)
    total = per_epoch * cfg.epochs
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    start = 0
    if ckpt is not None:
        state = load_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    log = MetricsLog(out, log=cfg.log, config=to_dict(cfg), resumed=start > 0)
    log.truncate_after(start)
    write_json(out / "run.json", {"stage": "sft", "config": to_dict(cfg), "examples": len(examples),
                                  "formats": prompter.settings() if prompter else None,
                                  "steps": total, "resumed_from": start or None,
                                  "inputs": {"data": cfg.data, "model": cfg.model or None}})
    ledger = ledger_factory(out, "sft", model.config.to_dict()) if ledger_factory else None
    bar = progress_bar(range(start, total), desc=f"SFT ({len(examples)} examples)", disable=not progress,
                       initial=start, total=total)
    t0 = time.perf_counter()
    order, order_epoch = None, -1
    for step in bar:
        if stop_after is not None and step >= start + stop_after:
            break
        epoch, i = divmod(step, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(examples), cfg.seed, epoch), epoch
        lr = cosine_lr(step, total, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        with ledger.phase("training") if ledger else nullcontext() as ph:
            batches = packed_batches(examples, idx, cfg.max_len, cfg.packing, tokenizer.pad_token_id,
                                     cfg.max_tokens)
            stats = optimizer_step(model, optimizer, batches, sft_token_loss, cfg.grad_clip, engine)
            if ph is not None:
                ph.add(trained_tokens=stats["tokens"], seq_len=stats["seq_len"])
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            log.log(done, {"loss": stats["loss"], "lr": lr, "grad_norm": stats["grad_norm"], "epoch": epoch,
                           "loss_tokens": stats["loss_tokens"], "skipped_update": stats["skipped"]})
            bar.set_postfix(loss=f"{stats['loss']:.3f}", refresh=False)
        if done % cfg.checkpoint_every == 0 or done == total:
            with ledger.phase("checkpointing") if ledger else nullcontext():
                save_checkpoint(out, done, model, tokenizer, {"optimizer": optimizer.state_dict()},
                                cfg.keep_checkpoints)
    bar.close()
    finished = step_of(latest_checkpoint(out)) == total
    summary = {"run_dir": str(out), "examples": len(examples), "steps": total, "params": count_params(model),
               "seconds_this_process": time.perf_counter() - t0, "finished": finished}
    if not finished:
        log.close()
        return summary
    with engine.autocast():
        result = finish_model(model, tokenizer, out, title=f"{out.name}: SFT on {Path(cfg.data).name}",
                              task_spec=task or task_spec, eval_cfg=cfg.eval if cfg.final_eval else None,
                              upstream=[cfg.model], ledger=ledger, progress=progress, tools=tools)
    if result is not None:
        summary["eval"] = result
    write_json(out / "summary.json", {k: v for k, v in summary.items() if k != "eval"})
    log.finish(total, result["metrics"] if result else None)
    return summary


def describe(summary: dict) -> str:
    head = (f"SFT {summary['run_dir']}: {summary['params'] / 1e6:.2f}M parameters, {summary['examples']} "
            f"examples, {summary['steps']} steps")
    return head + ("\n" + format_eval_table(summary["eval"]) if summary.get("eval") else "")

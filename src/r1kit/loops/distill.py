"""Token-level distillation of a teacher into a student that shares its tokenizer (../shared/r1-reference.md §5,
"beyond the paper"):

- `logit`: on teacher-written, verified traces (r1kit generate), minimise the forward KL(p_T || p_S) at every
  completion token over the full vocabulary: the student learns the teacher's whole next-token distribution,
  not just the sampled token (sequence-level distillation, R1's method, is `r1kit generate` + `r1kit sft`).
- `on-policy`: the student samples completions to training questions; the teacher scores every token; minimise the
  reverse KL(p_S || p_T) at each position of the student's own samples (GKD / the Qwen3 report's on-policy
  distillation), which corrects the states the student actually visits.

Losses are averaged over every completion token of a step; the schedule is warmup + cosine to 1/10 (as SFT).
Data order is a function of (seed, epoch) and sampling of (seed, step), so `--resume` replays exactly.

    r1kit distill --teacher runs/demo/rl/model --student-size micro --method logit --data traces.jsonl --out D
    r1kit distill --teacher runs/demo/rl/model --student runs/student --method on-policy --out D
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.algo.losses import DISTILL_LOSSES
from r1kit.algo.sft import (
    cosine_lr,
    encode_rows,
    epoch_order,
    make_optimizer,
    make_student,
    optimizer_step,
    packed_batches,
    read_rows,
    teacher_answer_contract,
)
from r1kit.config import EvalConfig, LogConfig, ParallelConfig, to_dict
from r1kit.cost.ledger import flops_per_token
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
from r1kit.models.modeling import count_params, eos_ids, load_model
from r1kit.models.packing import Example, PackedBatch, packed_logits
from r1kit.parallel.engine import resolve_engine
from r1kit.reporting.runlog import MetricsLog, progress_bar, write_json
from r1kit.rollout import SamplerEngine
from r1kit.rollout.multiturn import run_episodes
from r1kit.rollout.sampler import SamplingParams, sample
from r1kit.tasks import get_task
from r1kit.tasks.formats import PromptConfig
from r1kit.tasks.prompting import make_prompter
from r1kit.tools import make_toolbox
from r1kit.tools.base import ToolConfig

METHODS = ("logit", "on-policy")


@dataclass
class DistillConfig:
    teacher: str = ""  # the teacher: a Hugging Face model directory
    method: str = "logit"  # logit (forward KL on teacher traces) | on-policy (reverse KL on student samples)
    out: str = ""  # run directory; the student goes to OUT/model
    student: str = ""  # the student: a model directory ...
    student_size: str = ""  # ... or a fresh Llama of this size on the teacher's tokenizer
    task: str = "arithmetic"  # on-policy: questions come from its train split; the held-out eval uses its test split
    data: str = ""  # logit: teacher-written JSONL rows (r1kit generate)
    seed: int = 0
    epochs: int = 2  # logit: passes over the data
    steps: int = 100  # on-policy: optimiser steps
    batch_size: int = 64  # logit: examples per step; on-policy: completions sampled per step
    samples_per_prompt: int = 1  # on-policy: completions per question
    sample_temperature: float = 1.0  # on-policy: the student's sampling temperature
    max_new_tokens: int = 128  # on-policy: completion budget
    temperature: float = 1.0  # softmax temperature of both distributions inside the KL
    max_len: int = 512  # tokens per packed row
    max_tokens: int = 8192  # tokens per forward pass
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    train_problems: int = 20_000  # on-policy: size of the training-question pool
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 1
    final_eval: bool = True
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank 0: full fine-tuning of the student
    prompt: PromptConfig = field(default_factory=PromptConfig)  # format options over the task spec's
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # device and precision (one process)
    tools: list[str] = field(default_factory=list)  # on-policy: tools the student calls (multi-turn samples)
    tool_use: ToolConfig = field(default_factory=ToolConfig)  # call format and budgets (tools/base.py)
    log: LogConfig = field(default_factory=LogConfig)  # trackers: TensorBoard, trackio, wandb

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown distillation method {self.method!r}: use logit, on-policy or sequence "
                            "(sequence = r1kit generate + r1kit sft)")
        if not self.teacher or not self.out:
            raise UserError("distill: give --teacher (a model directory) and --out (a run directory)")
        if self.method == "logit" and not self.data:
            raise UserError("distill --method logit trains on teacher traces: give --data (r1kit generate writes "
                            "them)")
        if min(self.epochs, self.steps, self.batch_size, self.samples_per_prompt, self.max_len) < 1:
            raise UserError("distill: epochs, steps, batch_size, samples_per_prompt and max_len must be >= 1")
        if self.batch_size % self.samples_per_prompt:
            raise UserError("distill: batch_size must be a multiple of samples_per_prompt")


def check_shared_tokenizer(teacher_tok, student_tok) -> None:
    """Token-level distillation compares distributions token by token: the vocabularies must be the same."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise UserError("teacher and student tokenizers differ: token-level distillation (logit, on-policy) needs "
                        "a shared tokenizer; use --method sequence (generate + SFT) instead")


def _kd_loss(teacher, method: str, temperature: float):
    """loss_fn for optimizer_step: the per-token KL between student and teacher on a packed batch."""
    per_token = DISTILL_LOSSES[method]

    def loss_fn(student, batch: PackedBatch) -> torch.Tensor:
        with torch.no_grad():
            t_logits = packed_logits(teacher, batch)[:, :-1]  # (B, T-1, Vt)
        s_logits = packed_logits(student, batch)[:, :-1]  # (B, T-1, Vs)
        v = min(s_logits.shape[-1], t_logits.shape[-1])  # padded vocabularies may differ in size
        return per_token(s_logits[..., :v], t_logits[..., :v], temperature)  # (B, T-1)

    return loss_fn


def _on_policy_examples(student, tokenizer, prompter, pool, step: int, cfg: DistillConfig,
                        tools=None) -> tuple[list, int]:
    """The student's own completions to this step's questions, as examples (the completion carries the loss; with
    `tools`, multi-turn trajectories whose observation tokens carry none)."""
    n_q = cfg.batch_size // cfg.samples_per_prompt
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    questions = [pool[int(i)] for i in torch.randint(len(pool), (n_q,), generator=g)]
    prompts = [ids for ids in prompter.encode(questions) for _ in range(cfg.samples_per_prompt)]
    params = SamplingParams(cfg.sample_temperature, 1.0, cfg.max_new_tokens)
    stops = eos_ids(student, tokenizer)
    if tools is None:
        res = sample(student, prompts, params, eos_ids=stops, pad_id=tokenizer.pad_token_id, generator=g)
        tokens, masks = res.tokens, [None] * len(prompts)
    else:
        eps = run_episodes(SamplerEngine(student), prompts, params, tools=tools, tokenizer=tokenizer, eos_ids=stops,
                           pad_id=tokenizer.pad_token_id, generator=g, return_logprobs=False)
        tokens, masks = [e.tokens for e in eps], [e.mask for e in eps]
    examples = [Example((p + t)[:cfg.max_len], min(len(p), cfg.max_len), m)
                for p, t, m in zip(prompts, tokens, masks) if t]
    return examples, sum(map(len, tokens))


def run_distill(cfg: DistillConfig, *, resume: bool = False, progress: bool = True, ledger_factory=None,
                stop_after: int | None = None) -> dict:
    """Distil as configured; returns a summary (steps, seconds, eval). `stop_after`: see run_rl."""
    out = Path(cfg.out)
    task = get_task(cfg.task, **cfg.prompt.overrides())
    ckpt = checkpoint_to_resume(out, resume)
    engine = resolve_engine(cfg.parallel)
    teacher, teacher_tok = load_model(cfg.teacher, dtype=engine.compute_dtype)
    teacher = teacher.to(engine.device).requires_grad_(False)
    student, tokenizer = load_for_training(
        lambda: make_student(cfg.student, cfg.student_size, cfg.teacher, cfg.seed), ckpt, cfg.lora, cfg.seed)
    student = engine.place(student)
    check_shared_tokenizer(teacher_tok, tokenizer)
    examples, pool, tools = [], [], None
    if cfg.method == "logit":
        rows = read_rows(cfg.data)
        teacher_answer_contract(task, rows)  # the teacher's answer format and instruction, as SFT does
        prompter = make_prompter(task, tokenizer)
        examples = encode_rows(tokenizer, rows, cfg.max_len, prompter)
        per_epoch = -(-len(examples) // cfg.batch_size)
        total = per_epoch * cfg.epochs
    else:
        prompter = make_prompter(task, tokenizer)
        tools = make_toolbox(cfg.tools, cfg.tool_use, chat=prompter.chat, tokenizer=tokenizer, system=prompter.system)
        if tools is not None:
            tools.attach(prompter)
        pool = task.problems("train", cfg.train_problems, seed=cfg.seed)
        total = cfg.steps
    optimizer = make_optimizer(student, cfg.lr, cfg.weight_decay)
    start = 0
    if ckpt is not None:
        state = load_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    log = MetricsLog(out, log=cfg.log, config=to_dict(cfg), resumed=start > 0)
    log.truncate_after(start)
    write_json(out / "run.json", {"stage": "distill", "config": to_dict(cfg), "steps": total,
                                  "resumed_from": start or None, "formats": prompter.settings(),
                                  "inputs": {"teacher": cfg.teacher, "student": cfg.student or None,
                                             "data": cfg.data or None}})
    ledger = ledger_factory(out, "distill", student.config.to_dict()) if ledger_factory else None
    loss_fn = _kd_loss(teacher, cfg.method, cfg.temperature)
    bar = progress_bar(range(start, total), desc=f"distill ({cfg.method})", disable=not progress, initial=start,
                       total=total)
    t0, order, order_epoch = time.perf_counter(), None, -1
    for step in bar:
        if stop_after is not None and step >= start + stop_after:
            break
        lr = cosine_lr(step, total, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        metrics = {"lr": lr}
        if cfg.method == "logit":
            epoch, i = divmod(step, per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(len(examples), cfg.seed, epoch), epoch
            batch_examples, idx = examples, order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        else:
            with ledger.phase("rollout") if ledger else nullcontext() as ph:
                with engine.autocast():
                    batch_examples, n_gen = _on_policy_examples(student, tokenizer, prompter, pool, step, cfg, tools)
                if ph is not None:
                    ph.add(prompt_tokens=sum(e.n_prompt for e in batch_examples), generated_tokens=n_gen,
                           seq_len=max((len(e.ids) for e in batch_examples), default=1))
            idx = list(range(len(batch_examples)))
            metrics["completion_len_mean"] = n_gen / max(cfg.batch_size, 1)
        with ledger.phase("training") if ledger else nullcontext() as ph:
            batches = packed_batches(batch_examples, idx, cfg.max_len, True, tokenizer.pad_token_id, cfg.max_tokens)
            stats = optimizer_step(student, optimizer, batches, loss_fn, cfg.grad_clip, engine)
            if ph is not None:  # the teacher's forward pass over the same tokens counts too
                ph.add(trained_tokens=stats["tokens"], seq_len=stats["seq_len"],
                       flops=_step_flops(student, teacher, stats))
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            log.log(done, {**metrics, "kl": stats["loss"], "grad_norm": stats["grad_norm"],
                           "loss_tokens": stats["loss_tokens"], "skipped_update": stats["skipped"]})
            bar.set_postfix(kl=f"{stats['loss']:.3f}", refresh=False)
        if done % cfg.checkpoint_every == 0 or done == total:
            with ledger.phase("checkpointing") if ledger else nullcontext():
                save_checkpoint(out, done, student, tokenizer, {"optimizer": optimizer.state_dict()},
                                cfg.keep_checkpoints)
    bar.close()
    finished = step_of(latest_checkpoint(out)) == total
    summary = {"run_dir": str(out), "method": cfg.method, "steps": total, "params": count_params(student),
               "teacher_params": count_params(teacher), "seconds_this_process": time.perf_counter() - t0,
               "finished": finished}
    if finished:
        with engine.autocast():
            result = finish_model(student, tokenizer, out, title=f"{out.name}: {cfg.method} distillation",
                                  task_spec=task, eval_cfg=cfg.eval if cfg.final_eval else None,
                                  upstream=[cfg.student], ledger=ledger, progress=progress, tools=tools)
        if result is not None:
            summary["eval"] = result
        write_json(out / "summary.json", {k: v for k, v in summary.items() if k != "eval"})
        log.finish(total, result["metrics"] if result else None)
    log.close()
    return summary


def _step_flops(student, teacher, stats: dict) -> float:
    """Student training (6N per token) plus the teacher's forward pass (2N per token), both with attention."""
    n, seq = stats["tokens"], stats["seq_len"]
    return n * (flops_per_token(student.config.to_dict(), seq, training=True)
                + flops_per_token(teacher.config.to_dict(), seq, training=False))


def describe(summary: dict) -> str:
    head = (f"distilled ({summary['method']}) {summary['run_dir']}: student {summary['params'] / 1e6:.2f}M "
            f"parameters, teacher {summary['teacher_params'] / 1e6:.2f}M, {summary['steps']} steps")
    return head + ("\n" + format_eval_table(summary["eval"]) if summary.get("eval") else "")

"""What supervised fine-tuning and distillation share: reading (prompt, completion) rows, building a student,
the cosine schedule, and one optimiser step over packed examples with any per-token loss.

A step averages its per-token losses over every completion token of the step (one global count, as TRL's
completion-only loss does), accumulating gradients over rows of packed examples so memory stays bounded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from r1kit.algo.losses import nll_per_token
from r1kit.errors import UserError
from r1kit.models.modeling import SIZES, load_model, load_tokenizer, new_model
from r1kit.models.packing import Example, PackedBatch, collate, encode_example, pack, packed_logits
from r1kit.parallel.engine import Engine
from r1kit.tasks.base import Problem


def cosine_lr(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to `peak`, then cosine decay to `peak * min_ratio` at the last step (`total - 1`)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of `n` examples in an epoch: a permutation fixed by (seed, epoch), so a resumed run replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 10_007 + epoch)).tolist()


def read_rows(path: str | Path, limit: int = 0) -> list[dict]:
    """(prompt, completion) rows of a JSONL file; a bad line is an error naming `file:line`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist: write one with `r1kit generate`")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)
                    and isinstance(row.get("completion"), str)):
                raise UserError(f"{path}:{n}: each row needs string fields \"prompt\" and \"completion\"")
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    if not rows:
        raise UserError(f"{path} holds no rows: nothing to train on (did the teacher get no question right? try more samples or a stronger teacher)")
    return rows


def teacher_of(rows: list[dict]) -> str | None:
    """The teacher recorded in the rows' provenance (r1kit generate), if they share one."""
    teachers = {(r.get("provenance") or {}).get("teacher") for r in rows}
    return teachers.pop() if len(teachers) == 1 else None


def task_of(rows: list[dict]) -> str | None:
    tasks = {(r.get("provenance") or {}).get("task") for r in rows}
    return tasks.pop() if len(tasks) == 1 else None


def make_student(model: str, size: str, tokenizer_dir: str | None, seed: int):
    """(model, tokenizer): a Hugging Face directory, or a fresh Llama of a named size on a given tokenizer."""
    if model and size:
        raise UserError("give the student as a model directory or as a size (--student-size), not both")
    if model:
        return load_model(model, trainable=True)
    if not size:
        raise UserError("no student: give a model directory (--model/--student) or --student-size")
    if size not in SIZES:
        raise UserError(f"unknown student size {size!r}: use one of {', '.join(SIZES)}")
    if not tokenizer_dir:
        raise UserError("a fresh student needs a tokenizer: give --tokenizer DIR (or data whose provenance "
                        "names its teacher)")
    tokenizer = load_tokenizer(tokenizer_dir)
    student = new_model(size, tokenizer, seed=seed)
    student.train()
    return student, tokenizer


def encode_rows(tokenizer, rows: list[dict], max_len: int, prompter=None) -> list[Example]:
    """Examples of the rows. With a `prompter` (r1kit/tasks/prompting.py), a row that carries its `question` gets its
    prompt rendered anew in the student's own format (its chat template, say): traces move across tokenizers as
    text, and the student is trained on the prompt it will be asked with."""
    examples = []
    for r in rows:
        formats = (r.get("provenance") or {}).get("formats") or {}
        completion = r["completion"]
        if prompter is not None and isinstance(r.get("question"), str):
            ids = prompter.encode_text(prompter.text(Problem(str(r.get("id", "")), r["question"], "")))
            completion = move_prefill(completion, formats.get("prefill") or "", prompter.prefill)
        else:  # the row's own prompt text; a chat prompt already holds its special tokens
            ids = tokenizer(r["prompt"], add_special_tokens=formats.get("prompt_format") != "chat").input_ids
        examples.append(encode_example(tokenizer, r["prompt"], completion, max_len, prompt_ids=ids))
    return examples


def move_prefill(completion: str, teacher_prefill: str, student_prefill: str) -> str:
    """A teacher's completion as the student writes it: the text the teacher's chat template had opened the answer
    with (e.g. "<think>\\n") put back in front, and what the student's template opens with taken off."""
    text = teacher_prefill + completion
    opener = student_prefill.strip()
    if opener and text.lstrip().startswith(opener):
        text = text.lstrip()[len(opener):]
    return text


def _teacher_format(rows: list[dict], key: str) -> str | None:
    """One of the formats the rows' teacher was run with (`answer_format`, `instruction`: r1kit generate records
    them in the provenance), if the rows share it."""
    formats = {((r.get("provenance") or {}).get("formats") or {}).get(key) for r in rows}
    return formats.pop() if len(formats) == 1 else None


def teacher_answer_contract(task, rows: list[dict]) -> None:
    """Give `task` the teacher's answer format and instruction where the task leaves them `auto`: the traces
    answer as the teacher was asked to, whatever prompt format (chat template) the student is shown."""
    fmt, instruction = _teacher_format(rows, "answer_format"), _teacher_format(rows, "instruction")
    if task.answer_format == "auto" and fmt:
        task.answer_format = fmt
        if task.instruction == "auto" and instruction is not None:
            task.instruction = instruction or "none"


def packed_batches(examples: list[Example], indices: list[int], max_len: int, packing: bool,
                   pad_id: int, max_tokens: int) -> list[PackedBatch]:
    """The examples `indices` as packed rows (or one example per row), grouped into batches of <= max_tokens."""
    chosen = [examples[i] for i in indices]
    bins = pack([len(e.ids) for e in chosen], max_len) if packing else [[i] for i in range(len(chosen))]
    bins.sort(key=lambda b: -sum(len(chosen[i].ids) for i in b))
    batches, group, width = [], [], 0
    for b in bins:
        w = sum(len(chosen[i].ids) for i in b)
        width = max(width, w)
        if group and width * (len(group) + 1) > max_tokens:
            batches.append(collate(chosen, group, pad_id))
            group, width = [], w
        group.append(b)
    if group:
        batches.append(collate(chosen, group, pad_id))
    return batches


def optimizer_step(model, optimizer, batches: list[PackedBatch], loss_fn: Callable[[object, PackedBatch],
                   torch.Tensor], grad_clip: float, engine: Engine | None = None) -> dict:
    """One update: Σ per-token loss over completion tokens / their total count, accumulated over `batches`.

    `loss_fn(model, batch)` returns per-token losses (B, T-1): position t's loss for predicting token t+1.
    A non-finite loss or gradient skips the update (the weights stay finite). Batches move to the engine's device
    (one copy per tensor) and run under its autocast.
    """
    engine = engine or Engine(torch.device("cpu"), "fp32")
    total = sum(b.loss_tokens for b in batches)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for b in batches:
        b = b.to(engine.device)
        mask = b.target_mask().float()  # (B, T-1)
        with engine.autocast():
            per_token = loss_fn(model, b).float()  # (B, T-1)
        loss = (per_token * mask).sum() / max(total, 1)
        loss.backward()
        loss_sum += float(loss.detach())
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip)) if params else 0.0
    skipped = not (math.isfinite(loss_sum) and math.isfinite(grad_norm))
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return {"loss": loss_sum, "grad_norm": grad_norm, "loss_tokens": total, "skipped": skipped,
            "tokens": sum(b.tokens for b in batches), "seq_len": max(b.input_ids.shape[1] for b in batches)}


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def sft_token_loss(model, batch: PackedBatch) -> torch.Tensor:
    """Next-token NLL at each position of a packed batch. -> (B, T-1)"""
    logits = packed_logits(model, batch)[:, :-1]  # (B, T-1, V)
    return nll_per_token(logits, batch.input_ids[:, 1:])

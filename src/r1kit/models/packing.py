"""Supervised examples as tensors: completion-only labels, and packing several examples into one row.

An example is `prompt + completion + EOS`; only completion (and EOS) tokens carry loss, so the model is never
taught to write the question. Packing puts several examples into one row of at most `max_len` tokens (first-fit
on decreasing length) instead of padding each to the longest: each row gets position ids that restart at 0 for
every example and a block-diagonal causal attention mask, so no token ever attends across two examples and a
packed row computes exactly what the examples would compute alone (tests/test_packing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # label of a token that carries no loss


@dataclass
class Example:
    """One tokenised example: `ids` = prompt + completion (+ EOS); `n_prompt` leading tokens carry no loss."""

    ids: list[int]
    n_prompt: int

    def labels(self) -> list[int]:
        return [IGNORE] * self.n_prompt + self.ids[self.n_prompt:]


def encode_example(tokenizer, prompt: str, completion: str, max_len: int, eos_id: int | None = None,
                   prompt_ids: list[int] | None = None) -> Example:
    """Tokenise prompt and completion separately (the boundary is exact), append EOS, cut to `max_len`.

    The prompt is tokenised as the sampler sees it (with the tokenizer's special tokens, e.g. a BOS; or given as
    `prompt_ids`, e.g. a chat prompt from r1kit/tasks/prompting.py), the completion as the continuation it is."""
    if prompt_ids is None:
        prompt_ids = tokenizer(prompt).input_ids
    completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    ids = (prompt_ids + completion_ids + ([eos] if eos is not None else []))[:max_len]
    return Example(ids, min(len(prompt_ids), len(ids)))


def pack(lengths: list[int], max_len: int) -> list[list[int]]:
    """Bins of example indices, each bin's total length <= max_len (first-fit decreasing; order is stable)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = min(lengths[i], max_len)
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_len - n)
    return [sorted(b) for b in bins]


@dataclass
class PackedBatch:
    """Rows of packed examples. `segments` numbers the examples within a row (-1: padding)."""

    input_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T) next-token targets are labels[:, 1:]; IGNORE where no loss
    position_ids: torch.Tensor  # (B, T) restart at 0 for each example
    segments: torch.Tensor  # (B, T)

    def to(self, device) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.labels, self.position_ids, self.segments)))

    def target_mask(self) -> torch.Tensor:
        """(B, T-1) True where position t predicts a loss-carrying token t+1 of the *same* example."""
        same = self.segments[:, 1:] == self.segments[:, :-1]
        return (self.labels[:, 1:] != IGNORE) & same

    @property
    def loss_tokens(self) -> int:
        return int(self.target_mask().sum())

    @property
    def tokens(self) -> int:
        return int((self.segments >= 0).sum())

    def attention_mask(self, implementation: str = "sdpa", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, 1, T, T) block-diagonal causal mask: True (or 0.0 for eager attention) where attending is allowed.

        A padding position attends only to itself, so no row of the mask is empty (an empty row gives NaN).
        """
        seg = self.segments
        t = seg.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()  # (T, T)
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)  # (B, T, T)
        allowed = (same & causal) | torch.eye(t, dtype=torch.bool, device=seg.device)  # (B, T, T)
        allowed = allowed[:, None]  # (B, 1, T, T)
        if implementation == "eager":
            zeros = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
            return zeros.masked_fill(~allowed, torch.finfo(dtype).min)
        return allowed


def collate(examples: list[Example], bins: list[list[int]], pad_id: int) -> PackedBatch:
    """Lay out `bins` (lists of indices into `examples`) as rows, padded to the longest row."""
    width = max(sum(len(examples[i].ids) for i in b) for b in bins)
    shape = (len(bins), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    for r, b in enumerate(bins):
        at = 0
        for s, i in enumerate(b):
            ex = examples[i]
            n = len(ex.ids)
            ids[r, at: at + n] = torch.tensor(ex.ids)
            labels[r, at: at + n] = torch.tensor(ex.labels())
            positions[r, at: at + n] = torch.arange(n)
            segments[r, at: at + n] = s
            at += n
    return PackedBatch(ids, labels, positions, segments)


def sliding_window(config) -> int | None:
    """The attention window of a model config (Mistral, Gemma 2/3, Phi-3, ...), None when attention is global.
    Qwen2/3 configs keep a window they do not use (`use_sliding_window = false`)."""
    if getattr(config, "use_sliding_window", None) is False:
        return None
    return getattr(config, "sliding_window", None) or None


def _packing_from_positions() -> bool:
    """transformers >= 4.54 builds packed masks itself from position ids that restart at 0."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        return False
    return True


def packed_logits(model, batch: PackedBatch) -> torch.Tensor:
    """The model's logits (B, T, V) on a packed batch, attention confined to each example.

    A model with a sliding window gets no mask of ours: one block-diagonal mask would give its windowed layers
    full attention. transformers reads the examples' bounds from the position ids instead (they restart at 0 for
    each example, and each padding token is one of its own) and builds every layer's mask, windowed or not."""
    if sliding_window(model.config) is not None and _packing_from_positions():
        return model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    impl = getattr(model.config, "_attn_implementation", None) or "sdpa"
    mask = batch.attention_mask(impl, dtype=next(model.parameters()).dtype)
    return model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask).logits

"""Chunked log-probabilities and entropies (logprobs.py): the same numbers and gradients as the full-logits path,
and a bounded peak memory on a 32K-vocabulary model, measured on this CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from r1kit.algo.logprobs import chunkable, completion_logprobs
from r1kit.algo.losses import entropy, token_logprobs

VOCAB_32K = 32_000


class _Tok:
    eos_token_id, pad_token_id = 1, 0

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab


def _model(vocab: int = 256, seed: int = 0):
    from r1kit.models.modeling import new_model

    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, max_position_embeddings=512)
    return new_model(size, _Tok(vocab), seed=seed)


def _batch(vocab: int, rows: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (rows, length), generator=g)  # (B, L)
    attn = torch.ones_like(ids)
    attn[0, :3] = 0  # a left-padded row
    return ids, attn


def _plain(model, ids, attn, width, temperature):
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=width + 1).logits[:, :-1]
    return token_logprobs(logits, ids[:, -width:], temperature), entropy(logits.detach(), temperature)


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_chunked_equals_the_full_logits(chunk, torch_threads):
    model = _model()
    assert chunkable(model)
    ids, attn = _batch(256, 3, 12)
    lp, ent = completion_logprobs(model, ids, attn, 5, temperature=0.7, chunk=chunk)  # (3, 5) each
    lp.sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    ref_lp, ref_ent = _plain(model, ids, attn, 5, 0.7)
    ref_lp.sum().backward()
    assert lp.shape == ent.shape == (3, 5)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    assert not ent.requires_grad
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, atol=1e-5, rtol=1e-4, msg=k)
    assert model.get_output_embeddings().forward.__func__ is type(model.get_output_embeddings()).forward


def test_other_architectures_and_adapted_heads_take_the_plain_path(torch_threads):
    model = _model()
    model.config.model_type = "falcon_h1"  # multiplies its logits after the head: not on the allow-list
    assert not chunkable(model)
    model = _model()
    model.lm_head = torch.nn.Sequential(model.lm_head)  # e.g. a LoRA layer around the head
    assert not chunkable(model)


def test_a_post_processed_head_takes_the_plain_path(torch_threads):
    model = _model()
    model.config.final_logit_softcapping = 30.0  # as Gemma-2 does after its lm_head
    assert not chunkable(model)
    ids, attn = _batch(256, 2, 8)
    lp, _ = completion_logprobs(model, ids, attn, 3)
    torch.testing.assert_close(lp, _plain(model, ids, attn, 3, 1.0)[0])


_PEAK = """
import json, sys
import torch
sys.path.insert(0, sys.argv[3])
from test_logprobs import _batch, _model, VOCAB_32K
import r1kit.algo.logprobs as lp

torch.set_num_threads(1)
model = _model(VOCAB_32K)
ids, attn = _batch(VOCAB_32K, 4, 520)
if sys.argv[1] == "full":
    lp.chunkable = lambda model: False  # the model's own (B, W, V) logits, as before chunking
from r1kit.parallel.engine import peak_rss_mib, reset_peak_rss

reset_peak_rss()
base = peak_rss_mib()
logprobs, ent = lp.completion_logprobs(model, ids, attn, 512, 1.0, int(sys.argv[2]))
logprobs.sum().backward()
print(json.dumps({"growth_mib": peak_rss_mib() - base}))
"""


def _peak_growth_mib(mode: str, chunk: int) -> float:
    # glibc's dynamic mmap threshold would keep freed chunks in the heap (RSS then counts allocator slack, not
    # live tensors): a fixed threshold returns every large block to the system when it is freed
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", _PEAK, mode, str(chunk), os.path.dirname(__file__)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mib"]


@pytest.mark.slow
def test_chunking_bounds_the_peak_memory_of_a_32k_vocabulary():
    """4 rows x 512 completion positions x 32,000 tokens: one float32 copy of the logits is 250 MiB. Forward and
    backward through the full logits hold several; chunks of 256 positions hold a few 31 MiB chunks. Measured
    on this CPU (peak RSS growth of a fresh process over the forward + backward): 1,277 MiB full vs 195 MiB
    chunked."""
    full = _peak_growth_mib("full", 0)
    chunked = _peak_growth_mib("chunked", 256)
    one_copy = 4 * 512 * VOCAB_32K * 4 / 2**20  # MiB
    print(f"peak RSS growth: full logits {full:.0f} MiB, chunked {chunked:.0f} MiB (one logits copy "
          f"{one_copy:.0f} MiB)")
    assert full > 2 * one_copy  # the full path really materialises the logits, several times
    assert chunked < one_copy  # the chunked one never holds even one full copy
    assert chunked < full / 4

"""Shared fixtures: one tiny tokenizer and one tiny Llama, built in memory (no downloads)."""

import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The sampler's compiled decoding step costs seconds to build per shape: tests run it eagerly, except the tests
# of the compiled path, which ask for it (`compile=True`).
os.environ.setdefault("R1KIT_COMPILE", "0")

# Small enough to build in a second on two cores; GQA (4 heads, 2 KV heads) so the fast path's grouping is used.
TINY_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "vocab_size": 512,
}


def arithmetic_documents(n: int = 300, seed: int = 0) -> list[str]:
    """Prompt + worked solution for `n` train-split arithmetic problems (the base corpus, in small)."""
    from r1kit.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask()
    rng = random.Random(seed)
    return [task.prompt(p) + " " + task.solution(p, rng) for p in task.problems("train", n, seed=seed)]


@pytest.fixture(scope="session")
def torch_threads():
    """One torch thread: tiny models gain nothing from more, and on a shared two-core machine a second thread
    spin-waits (a 10-step pre-training run went from 7 s to 36 s). Also fixes the thread count, which
    bit-for-bit reproducibility depends on."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    return dict(TINY_CONFIG)


@pytest.fixture(scope="session")
def tokenizer(torch_threads):
    from r1kit.models import modeling

    return modeling.train_tokenizer(arithmetic_documents())


@pytest.fixture(scope="module")
def tiny_model(tiny_config, tokenizer):
    """A freshly initialised tiny Llama (seed 0), in eval mode; tests must not change its weights."""
    from r1kit.models import modeling

    model = modeling.new_model(tiny_config, tokenizer, seed=0)
    model.eval()
    return model


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU: skipped where torch sees none (bench/gpu_check.sh runs them on one)."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in marked:
        item.add_marker(skip)

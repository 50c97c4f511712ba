"""Data parallelism through FSDP2 (parallel/fsdp.py + grpo.py): two and four gloo processes, each holding its share
of a global rollout and a shard of the model, take the same update as one process holding all of it, for every
loss aggregation and with several mini-batches and epochs.

The rollout is built from token-id lists (no tokenizer) and a model from a seed, so every process builds the
same ones. Each rank packs its own rows with `build_rollout`, as the RL loop does (so its padding differs from the
single process's). Plain SGD makes the comparison a comparison of summed gradients: Adam's first step g/|g|
would magnify float noise in gradients that are nearly zero.
"""

import datetime
import math
import os
import socket

import pytest
import torch

pytestmark = pytest.mark.slow

VOCAB = 128
MODEL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=64,
)
PAD, EOS = 0, 1
G, N = 2, 8  # 4 groups of 2
# (loss_aggregation, mu, mini_batches). With 4 mini-batches each holds one group, so each rank has nothing in
# every other mini-batch (rank 1 starts with an empty one): it must still join every collective.
CASES = [
    ("seq_mean", 1, 1),
    ("token_mean", 1, 1),
    ("constant", 1, 1),
    ("seq_mean", 1, 2),
    ("token_mean", 2, 2),
    ("constant", 1, 2),
    ("seq_mean", 1, 4),
    ("token_mean", 1, 4),
    # multi-turn trajectories: some completion tokens are a tool's observation (loss mask 0, TOOL_MASK)
    ("seq_mean+tools", 1, 2),
    ("token_mean+tools", 1, 1),
    ("constant+tools", 2, 2),
]


def TOOL_MASK(i: int, length: int) -> list[int]:
    """Completion i's loss mask in the `+tools` cases: every third token (from the second) an observation's."""
    return [0 if t % 3 == 1 else 1 for t in range(length)]


class _Tok:
    """Just what `new_model` reads from a tokenizer."""

    eos_token_id, pad_token_id = EOS, PAD

    def __len__(self) -> int:
        return VOCAB


def _global_rollout_data():
    """Token lists, advantages and per-token old/ref log-probs of the global rollout, from a fixed seed."""
    g = torch.Generator().manual_seed(1234)
    prompts, completions = [], []
    for i in range(N):
        if i % G == 0:
            prompt = torch.randint(
                2, VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g
            ).tolist()
        prompts.append(prompt)
        length = int(torch.randint(1, 9, (1,), generator=g))  # ragged: 1..8 tokens
        completions.append(torch.randint(2, VOCAB, (length,), generator=g).tolist())
    rewards = torch.rand(N, generator=g)
    advantages = (rewards.view(-1, G) - rewards.view(-1, G).mean(-1, keepdim=True)).view(-1) * 4
    # log-probs near log(1/V) (the fresh model's), spread so that a good share of ratios fall outside [0.8, 1.2]
    old = -torch.log(torch.tensor(float(VOCAB))) + 0.3 * torch.randn(N, 8, generator=g)
    ref = -torch.log(torch.tensor(float(VOCAB))) + 0.3 * torch.randn(N, 8, generator=g)
    return prompts, completions, advantages, old, ref


def _rows_of(rank: int, world: int) -> list[int]:
    return list(range(N)) if world == 1 else [i for i in range(N) if (i // G) % world == rank]


def _run_cases(rank: int, world: int) -> list[dict]:
    """Every case from the same initial model on this rank's rows; returns the (full) parameters and statistics."""
    from torch.distributed.tensor import DTensor

    from r1kit.algo.grpo import UpdateSettings, build_rollout, train_on_rollout
    from r1kit.models.modeling import new_model
    from r1kit.parallel.dist import DistInfo
    from r1kit.parallel.engine import Engine
    from r1kit.parallel.fsdp import shard

    engine = Engine(torch.device("cpu"), "fp32", DistInfo(rank, world, rank))

    prompts, completions, advantages, old, ref = _global_rollout_data()
    rows = _rows_of(rank, world)
    results = []
    for aggregation, mu, mini_batches in CASES:
        model = new_model(MODEL, _Tok(), seed=0)
        if world > 1:
            shard(model, engine)
        masks = [TOOL_MASK(i, len(completions[i])) for i in rows] if aggregation.endswith("+tools") else None
        aggregation = aggregation.removesuffix("+tools")
        rollout = build_rollout(
            [prompts[i] for i in rows], [completions[i] for i in rows], PAD, advantages[rows], loss_masks=masks
        )
        t_len = rollout.completion_len
        rollout.old_logprobs = old[rows, :t_len]
        rollout.ref_logprobs = ref[rows, :t_len]
        # the mini-batch of each row is fixed by its global index: groups 0,1 -> 0 and 2,3 -> 1 (with 2)
        rollout.mini_batch = torch.tensor([(i // G) * mini_batches // (N // G) for i in rows])
        settings = UpdateSettings(
            temperature=1.0,
            loss_aggregation=aggregation,
            beta=0.05,
            eps_low=0.2,
            eps_high=0.28,
            mu=mu,
            mini_batches=mini_batches,
            max_len=8,
            grad_clip=1.0,
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        stats = train_on_rollout(model, optimizer, rollout, settings, engine)
        params = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
                  for k, v in model.named_parameters()}
        results.append({"params": params, "stats": stats})
    return results


def _join(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """A spawned rank: join, run every case, save the results."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    _join(rank, world, port)
    try:
        torch.save(_run_cases(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_results(world: int, out) -> list[list[dict]]:
    """Every rank's results, ranks 1.. in spawned processes and rank 0 in this one (importing transformers costs
    seconds per process). The process group is gone again when it returns."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    port = _free_port()
    ctx = mp.get_context("spawn")
    children = [ctx.Process(target=_worker, args=(r, world, port, str(out))) for r in range(1, world)]
    for child in children:
        child.start()
    try:
        _join(0, world, port)
        try:
            rank0 = _run_cases(0, world)
        finally:
            dist.destroy_process_group()
        for r, child in enumerate(children, 1):
            child.join(timeout=180)
            assert child.exitcode == 0, f"rank {r} failed with exit code {child.exitcode}"
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
                child.join()
    assert not dist.is_initialized()
    return [rank0] + [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(1, world)]


@pytest.fixture(scope="module")
def single(torch_threads):
    return _run_cases(0, 1)


@pytest.fixture(scope="module", params=[2, 4], ids=["2-ranks", "4-ranks"])
def ranks(request, tmp_path_factory, torch_threads):
    return _sharded_results(request.param, tmp_path_factory.mktemp(f"dist{request.param}"))


@pytest.fixture(scope="module")
def results(single, ranks):
    """(one process, rank 0, rank 1, ...) results."""
    return (single, *ranks)


def test_the_rollout_exercises_clipping_and_both_mini_batches(results):
    _, _, advantages, _, _ = _global_rollout_data()
    assert (advantages != 0).all()
    for (aggregation, mu, mini_batches), result in zip(CASES, results[0]):
        stats = result["stats"]
        assert 0 < stats["clip_fraction"] < 1, aggregation  # some tokens clipped, not all
        assert stats["kl"] > 0 and stats["updates"] == mu * mini_batches and stats["skipped_updates"] == 0


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{a}-mu{m}-mb{b}" for a, m, b in CASES])
def test_n_processes_take_the_same_step_as_one(case, results):
    single, rank0, *others = (r[case] for r in results)
    for name, expected in single["params"].items():
        for other in others:  # every rank gathers identical weights (one reduce-scattered update) ...
            assert torch.equal(rank0["params"][name], other["params"][name]), name
        # ... equal to the single process's within float tolerance
        torch.testing.assert_close(rank0["params"][name], expected, atol=1e-6, rtol=1e-5, msg=name)
    moved = max(float((single["params"][k] - rank0["params"][k]).abs().max()) for k in single["params"])
    print(f"{CASES[case]}, {1 + len(others)} ranks vs 1: max |dw| {moved:.3g}")
    assert moved < 1e-5
    for key in ("loss", "kl", "clip_fraction", "entropy", "grad_norm"):
        assert rank0["stats"][key] == pytest.approx(single["stats"][key], rel=1e-4, abs=1e-6), key
        for other in others:
            assert other["stats"][key] == pytest.approx(rank0["stats"][key], rel=1e-9, abs=1e-9), key


def test_the_update_is_not_trivial(results):
    from r1kit.models.modeling import new_model

    initial = dict(new_model(MODEL, _Tok(), seed=0).named_parameters())
    for result in results[0]:
        delta = max(float((result["params"][k] - initial[k].detach()).abs().max()) for k in initial)
        # the comparison above is about a real step, not two copies of the initial weights
        assert delta > 1e-4


@pytest.mark.parametrize("after_nan", [False, True], ids=["fresh-grads", "after-skipped-nan-update"])
def test_every_rank_issues_the_same_collectives(monkeypatch, torch_threads, after_nan):
    """One process plays two ranks whose local mini-batches differ, recording each rank's all-reduces: a rank
    with nothing in a mini-batch must still take part in every collective (else the others hang), also when
    it has no gradients yet or a skipped NaN update cleared them."""
    import torch.distributed as tdist

    from r1kit.algo import grpo
    from r1kit.algo.grpo import UpdateSettings, build_rollout, train_on_rollout
    from r1kit.models.modeling import new_model
    from r1kit.parallel import dist

    calls: list = []
    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(grpo, "is_sharded", lambda model: True)  # FSDP2's own collectives run in each pass

    def fake_all_reduce(t, op=tdist.ReduceOp.SUM, **kwargs):
        calls.append((t.numel(), t.dtype, str(op)))
        if op == tdist.ReduceOp.MAX:  # micro-batches per rank: the other rank has 2 in every mini-batch
            t.fill_(2)
        elif t.dtype == torch.float64:  # the count sums: the other rank holds at least one sequence and token
            t.add_(1)

    monkeypatch.setattr(tdist, "all_reduce", fake_all_reduce)

    def collectives(mini_batch: list[int], advantages: list[float]) -> list:
        calls.clear()
        model = new_model(MODEL, _Tok(), seed=0)
        forward = model.forward
        model.forward = lambda *a, **k: (calls.append("forward"), forward(*a, **k))[1]  # FSDP2 gathers in each
        rollout = build_rollout([[5, 6], [7, 8]], [[9, 10], [11]], PAD, torch.tensor(advantages))
        rollout.mini_batch = torch.tensor(mini_batch)
        settings = UpdateSettings(1.0, "token_mean", 0.0, 0.2, 0.2, 1, 2, 8, 1.0)
        train_on_rollout(model, torch.optim.SGD(model.parameters(), lr=0.1), rollout, settings)
        return list(calls)

    if after_nan:
        # both ranks' first mini-batch has a NaN (the skip is global); rank B has no rows in the second
        rank_a = collectives([0, 1], [math.nan, 1.0])
        rank_b = collectives([0, 0], [math.nan, 1.0])
    else:
        # rank B has no rows in the first mini-batch of a fresh model
        rank_a = collectives([0, 1], [1.0, -1.0])
        rank_b = collectives([1, 1], [1.0, -1.0])
    assert rank_a == rank_b

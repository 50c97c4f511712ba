"""`r1kit rl` under torchrun, as users launch it: FSDP2 on gloo, 2 processes on one "node" and 1 process on each of
two "nodes" (two torchrun launches, c10d rendezvous), against the same command on one process; and a sharded run
killed with SIGKILL mid-run, resumed, bit-identical to the uninterrupted one.

Why the runs can agree: each sampling batch is seeded by its first question's global index (rollout.batch_size =
G here, so a batch is one group and a question gets the same completions whichever rank samples it), and the
update divides by counts over the global batch (test_distributed.py checks that part alone). The weights agree to
float tolerance, not bit for bit: the ranks sum the gradients in another order.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

REWARDS = '''
import os
import time


def spread(problem, completion, score, ctx):
    """Varies with the text, so groups of a random model differ; slow when asked (so a kill lands mid-run)."""
    time.sleep(float(os.environ.get("SLOW_REWARD_S", "0")))
    return (sum(map(ord, completion)) % 7) / 7
'''
STEPS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer, tiny_config):
    from r1kit.models.modeling import new_model, save_model

    root = tmp_path_factory.mktemp("torchrun")
    save_model(new_model(tiny_config, tokenizer, seed=0), tokenizer, root / "base")
    (root / "r1kit_torchrun_rewards.py").write_text(REWARDS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", R1KIT_DIST_TIMEOUT_S="120")
    sys.path.insert(0, str(root))  # the reward module, for the in-process runs
    yield root, env
    sys.path.remove(str(root))
    sys.modules.pop("r1kit_torchrun_rewards", None)


def _args(root: Path, out: Path) -> list[str]:
    return ["rl", "--model", str(root / "base"), "--task", "arithmetic", "--out", str(out), f"--steps={STEPS}",
            "--device", "cpu", "--train_problems=64", "--checkpoint_every=1", "--eval_every=2", "--eval.n=6",
            "--eval.k=2", "--eval.max_new_tokens=6", "--eval.batch_size=4",
            "--rollout.prompts_per_step=4", "--rollout.group_size=2", "--rollout.batch_size=2",
            "--rollout.max_new_tokens=8", "--algo.beta=0.01", "--algo.mini_batches=2", "--optim.lr=1e-3",
            "--reward.weights.r1kit_torchrun_rewards:spread=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(env, args, nproc: int = 2, nnodes: int = 1, endpoint: str | None = None) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes > 1:
        launcher += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                     "--rdzv-id", "r1kit-test"]
    else:
        launcher += ["--standalone"]
    return subprocess.Popen(launcher + ["-m", "r1kit"] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def single(setup, torch_threads):
    from r1kit.cli.main import main

    root, _ = setup
    out = root / "single"
    assert main(_args(root, out)) == 0
    return out


@pytest.fixture(scope="module")
def two_ranks(setup):
    root, env = setup
    out = root / "two-ranks"
    _finish(_torchrun(env, _args(root, out)))
    return out


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert set(wa) == set(wb)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=2e-5, rtol=1e-4, msg=name)
    print(f"{b.name} vs {a.name}: max |dw| {max(float((wa[k] - wb[k]).abs().max()) for k in wa):.3g}")


def test_two_processes_run_the_same_rl_as_one(single, two_ranks):
    import json

    _assert_same_weights(single, two_ranks)
    trained, start = _weights(single), load_file(single.parent / "base" / "model.safetensors")
    moved = max(float((trained[k] - start[k]).abs().max()) for k in start)
    print(f"the 1-process run moved the weights by max |dw| {moved:.3g}")
    assert moved > 1e-3  # a real update, not the start
    rows_of = (single, two_ranks)
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
            for d in rows_of]
    for a, b in zip(*rows, strict=True):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-9)  # the same completions were sampled
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-6)
    run = json.loads((two_ranks / "run.json").read_text())
    assert run["world_size"] == 2 and "FSDP2" in run["engine"]
    ledgers = [[json.loads(line) for line in (d / "ledger.jsonl").read_text().splitlines()] for d in rows_of]
    for phase, key in (("rollout", "generated_tokens"), ("rollout", "prompt_tokens"), ("training", "trained_tokens")):
        single_n, ranks_n = (sum(r.get(key) or 0 for r in ledger if r["phase"] == phase) for ledger in ledgers)
        assert single_n == ranks_n > 0, (phase, key)  # the ledger bills every rank's tokens, not rank 0's
    assert ledgers[1][0]["device_count"] == 2 and any(r["phase"] == "weight_sync" for r in ledgers[1])
    # the held-out evaluations were sharded over the ranks: every problem and sample, once
    final = json.loads((two_ranks / "eval.json").read_text())["metrics"]
    assert final["samples"] == 12 and final["ranks"] == 2


def test_two_nodes_run_the_same_rl_as_one(setup, single):
    """Two torchrun launches (`--nnodes 2`, c10d rendezvous on 127.0.0.1), one process each."""
    root, env = setup
    out = root / "two-nodes"
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [_torchrun(env, _args(root, out), nproc=1, nnodes=2, endpoint=endpoint) for _ in range(2)]
    for node in nodes:
        _finish(node)
    _assert_same_weights(single, out)


def test_a_sharded_run_killed_and_resumed_is_bit_identical(setup, two_ranks, torch_threads):
    from r1kit.cli.main import main

    root, env = setup
    out = root / "killed"
    proc = _torchrun(dict(env, SLOW_REWARD_S="0.1"), _args(root, out))  # about 0.4 s per step
    pointer = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not pointer.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    for pid in _tree(proc.pid):  # the launcher and both ranks, at once
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()
    done = int(pointer.read_text().strip().split("_")[1])
    assert 1 <= done < STEPS, "the run was killed after its first checkpoint and before its last"
    assert not (out / "model").exists()

    # one process cannot continue a 2-rank run: a one-line error, the checkpoint untouched
    assert main(_args(root, out) + ["--resume"]) == 2
    assert int(pointer.read_text().strip().split("_")[1]) == done

    _finish(_torchrun(env, _args(root, out) + ["--resume"]))
    resumed, reference = _weights(out), _weights(two_ranks)
    assert set(resumed) == set(reference)
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name

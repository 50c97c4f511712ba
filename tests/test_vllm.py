"""The vLLM rollout backend (rollout/vllm.py) on a tiny Llama: seeded reproducibility, the engine's logprobs against
the trainer's own forward before and after a weight update (a stale engine must fail that check), the EOS and
truncation contract, greedy decoding equal to r1kit's sampler, and GRPO steps through the backend.

These run where vLLM is installed: `make test-vllm` (the .venv-vllm virtualenv, which `make test` builds and runs).
Elsewhere they are skipped, except the weight-naming tests, which need no vLLM. One engine serves the module (its
start-up is the cost); each test loads the weights it needs first. vLLM's CPU attention takes head sizes of 32 and
up, so the model has 2 heads of 32 (one KV head) where conftest's has 4 of 16.
"""

import copy
import dataclasses
import json

import pytest
import torch

from r1kit.algo.logprobs import completion_logprobs
from r1kit.errors import UserError
from r1kit.models import modeling
from r1kit.rollout import SamplingParams, make_engine, sample, vllm_installed
from r1kit.rollout.vllm import kv_cache_bytes, named_weights

pytestmark = pytest.mark.vllm
needs_vllm = pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed here (make test-vllm runs these)")

NEVER = [-1]  # an EOS id no model emits
TEXTS = ["1 + 2 =", "12 + 345 =", "7 * 8 - 1 =", "What is 40 + 2?", "99 - 3 =", "5 + 5 + 5 =", "8 =", "3 * 3 ="]
ATOL = 1e-4  # float32 on both sides; measured ~1e-6 fresh, ~6e-5 after a large update
MAX_LEN = 96


@pytest.fixture(scope="module")
def vllm_config(tiny_config) -> dict:
    return dict(tiny_config, num_attention_heads=2, num_key_value_heads=1)


@pytest.fixture(scope="module")
def policy(vllm_config, tokenizer):
    """The policy the engine must follow: weights redrawn larger than an initialisation, so that sampling varies
    from row to row and a greedy decode is not a repetition of the last token."""
    model = modeling.new_model(vllm_config, tokenizer, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            if w.ndim == 2:
                w.copy_(torch.randn(w.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(t).input_ids for t in TEXTS]


@pytest.fixture(scope="module")
def engine(vllm_config, tokenizer, policy, tmp_path_factory, torch_threads):
    """One engine for the module, built from a directory holding *other* weights (seed 1) and given the policy's
    by make_engine: so what it samples from is what update_weights loaded, not what it started from."""
    if not vllm_installed():
        pytest.skip("vLLM is not installed here")
    source = tmp_path_factory.mktemp("vllm") / "model"
    modeling.save_model(modeling.new_model(vllm_config, tokenizer, seed=1), tokenizer, source)
    eng = make_engine("vllm", policy, source=str(source), tokenizer=tokenizer, max_len=MAX_LEN, seed=0)
    yield eng
    eng.close()


def _trainer_logprobs(model, prompts, completions, temperature) -> list[torch.Tensor]:
    """log π(token) at `temperature` by the trainer's own forward, one row at a time."""
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            ids = torch.tensor([p + c])  # (1, L)
            lp, _ = completion_logprobs(model, ids, torch.ones_like(ids), len(c), temperature=temperature)
            out.append(lp[0])  # (W,)
    return out


def _max_gap(samples, reference) -> float:
    return max((torch.tensor(a) - b).abs().max().item() for a, b in zip(samples.logprobs, reference))


# -- weights under their checkpoint names (no vLLM needed) ----------------------------------------------------------


def test_named_weights_are_the_checkpoint_tensors_with_tied_ones_once(policy):
    names = dict(named_weights(policy))
    state = policy.state_dict()
    assert policy.config.tie_word_embeddings and "lm_head.weight" not in names  # tied: given once, as the embedding
    assert set(names) == set(state) - {"lm_head.weight"}
    assert all(torch.equal(names[k], state[k]) for k in names)


def test_named_weights_of_a_lora_policy_are_its_effective_weights(policy):
    pytest.importorskip("peft")
    from r1kit.models.lora import LoraConfig, apply_lora, merged_copy

    lora = apply_lora(copy.deepcopy(policy), LoraConfig(rank=4, alpha=8, target_modules="q_proj,v_proj"))
    with torch.no_grad():  # B starts at zero: make the adapters do something
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    names = dict(named_weights(lora))
    merged = merged_copy(lora).state_dict()
    assert set(names) == set(merged) - {"lm_head.weight"}
    for k, v in names.items():
        assert torch.allclose(v, merged[k], atol=1e-6), k
    assert not torch.equal(names["model.layers.0.self_attn.q_proj.weight"],
                           policy.state_dict()["model.layers.0.self_attn.q_proj.weight"])


def test_kv_cache_holds_every_sequence(vllm_config, tokenizer):
    config = modeling.new_model(vllm_config, tokenizer, seed=0).config
    per_token = 2 * 2 * 1 * 32 * 4  # K and V, 2 layers, 1 KV head of 32, float32
    assert kv_cache_bytes(config, torch.float32, 64, 1024) == 64 * 1024 * per_token
    assert kv_cache_bytes(config, torch.float32, 1, 8) == 16 << 20  # a floor for tiny engines


# -- the engine -----------------------------------------------------------------------------------------------------


@needs_vllm
def test_an_unsupported_head_size_is_a_user_error(tiny_config, tokenizer, tmp_path):
    from r1kit.rollout.vllm import VLLMEngine

    modeling.save_model(modeling.new_model(tiny_config, tokenizer, seed=0), tokenizer, tmp_path / "m")
    with pytest.raises(UserError, match="head_dim 16"):
        VLLMEngine(str(tmp_path / "m"), max_len=MAX_LEN)


@needs_vllm
def test_same_seed_same_completions(engine, policy, prompts):
    engine.update_weights(policy)
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16)
    rng_before = torch.get_rng_state()

    def run(seed):
        return engine.sample(prompts, params, eos_ids=NEVER, pad_id=0, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(5), run(5), run(6)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    assert len({tuple(t) for t in a.tokens}) == len(prompts)  # rows differ from each other
    assert torch.equal(torch.get_rng_state(), rng_before)  # the trainer's global generator is untouched
    assert engine.startup_s > 0 and engine.sync_s > 0 and engine.sample_s > 0  # the ledger's three phases


@needs_vllm
def test_logprobs_follow_the_current_weights(engine, policy, prompts):
    """vLLM's behaviour logprobs equal the trainer's forward at the sampling temperature (before top-p) for the
    policy it was given; after an optimiser step they match the new policy only once update_weights ran."""
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=16)
    gen = torch.Generator().manual_seed(1)
    engine.update_weights(policy)
    fresh = engine.sample(prompts, params, eos_ids=NEVER, pad_id=0, generator=gen, return_logprobs=True)
    assert [len(lp) for lp in fresh.logprobs] == [len(t) for t in fresh.tokens]
    gap_fresh = _max_gap(fresh, _trainer_logprobs(policy, prompts, fresh.tokens, params.temperature))
    assert gap_fresh < ATOL

    # one real optimiser step (AdamW, a large learning rate so every weight moves) on the sampled completions
    trained = copy.deepcopy(policy).train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-2)
    loss = 0.0
    for p, c in zip(prompts, fresh.tokens):
        ids = torch.tensor([p + c])
        lp, _ = completion_logprobs(trained, ids, torch.ones_like(ids), len(c), temperature=params.temperature)
        loss = loss - lp.mean()
    loss.backward()
    optimizer.step()
    trained.eval()

    stale = engine.sample(prompts, params, eos_ids=NEVER, pad_id=0, generator=gen, return_logprobs=True)
    gap_stale = _max_gap(stale, _trainer_logprobs(trained, prompts, stale.tokens, params.temperature))
    assert gap_stale > 100 * ATOL  # a stale engine (trl#5312) is caught by this check

    engine.update_weights(trained)
    updated = engine.sample(prompts, params, eos_ids=NEVER, pad_id=0, generator=gen, return_logprobs=True)
    gap_updated = _max_gap(updated, _trainer_logprobs(trained, prompts, updated.tokens, params.temperature))
    assert gap_updated < ATOL
    print(f"logprob max |vLLM - trainer|: fresh {gap_fresh:.2e}, stale {gap_stale:.2e}, updated {gap_updated:.2e}; "
          f"sync {engine.sync_s * 1e3:.1f} ms, startup {engine.startup_s:.1f} s")


@needs_vllm
def test_eos_stops_a_row_and_is_kept_truncation_is_not_finished(engine, policy, prompts):
    engine.update_weights(policy)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12)

    def run(eos):
        return engine.sample(prompts, params, eos_ids=eos, pad_id=0, generator=torch.Generator().manual_seed(3))

    free = run(NEVER)
    assert all(len(t) == 12 for t in free.tokens) and not any(free.finished)
    eos = free.tokens[0][4]  # a token row 0 samples at position 4: with it as EOS, row 0 stops there
    cut = run([eos])
    for row, full in zip(cut.tokens, free.tokens):
        if eos in full:  # the same draws up to and including the first EOS, which is kept
            assert row == full[: full.index(eos) + 1]
        else:
            assert row == full
    assert cut.finished == [eos in full for full in free.tokens]
    assert cut.finished[0] and len(cut.tokens[0]) <= 5
    with pytest.raises(ValueError, match="max_len"):
        engine.sample([[1] * MAX_LEN], params, eos_ids=NEVER, pad_id=0)
    assert engine.sample([], params, eos_ids=NEVER, pad_id=0).tokens == []


@needs_vllm
def test_greedy_decoding_equals_r1kits_sampler(engine, policy, prompts):
    engine.update_weights(policy)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    ours = sample(policy, prompts, params, eos_ids=NEVER, pad_id=0)
    theirs = engine.sample(prompts, params, eos_ids=NEVER, pad_id=0, return_logprobs=True)
    assert theirs.tokens == ours.tokens
    assert len({tuple(t) for t in ours.tokens}) > 1 and any(len(set(t)) > 2 for t in ours.tokens)  # not trivial
    # at temperature 0 the logprobs are the plain log-softmax, as r1kit's sampler gives them
    assert _max_gap(theirs, _trainer_logprobs(policy, prompts, theirs.tokens, 1.0)) < ATOL


@needs_vllm
def test_a_second_engine_opens_and_closes_beside_the_first(engine, policy, prompts, tmp_path, tokenizer):
    """vLLM keeps parallel state per process; closing one engine must not tear it down under another."""
    engine.update_weights(policy)
    params = SamplingParams(temperature=1.0, max_new_tokens=8)

    def run(e):
        return e.sample(prompts, params, eos_ids=NEVER, pad_id=0, generator=torch.Generator().manual_seed(7)).tokens

    modeling.save_model(policy, tokenizer, tmp_path / "m")
    second = make_engine("vllm", policy, source=str(tmp_path / "m"), max_len=MAX_LEN)
    assert run(second) == run(engine)
    second.close()
    second.close()  # idempotent
    assert run(engine) == run(engine)


# -- GRPO through the backend -------------------------------------------------------------------------------------


def varied_reward(problem, completion: str, score, ctx: dict) -> float:
    """A reward that differs between a random model's completions (the task's would be 0 for all of them)."""
    return float(len(set(completion)) % 3)


@needs_vllm
def test_grpo_steps_through_the_vllm_backend(engine, policy, tokenizer, tmp_path):
    from r1kit.algo.rl_config import RLConfig, RolloutConfig
    from r1kit.config import build
    from r1kit.loops.rl import run_rl

    if "backend" not in {f.name for f in dataclasses.fields(RolloutConfig)}:
        pytest.skip("RLConfig.rollout has no `backend` field yet (the RL loop is not wired to rollout engines)")
    base = tmp_path / "base"  # the busy policy: varied completions, and a reward that varies with them
    modeling.save_model(policy, tokenizer, base)
    cfg = build(RLConfig, {
        "model": str(base), "out": str(tmp_path / "rl"), "task": "arithmetic", "steps": 2, "seed": 0,
        "train_problems": 32, "checkpoint_every": 2,
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 12, "backend": "vllm"},
        "optim": {"lr": 1e-3}, "eval": {"n": 2, "k": 1, "max_new_tokens": 8},
        "reward": {"weights": {"test_vllm:varied_reward": 1.0}}, "algo": {"beta": 0.0},
    })
    from r1kit.cost.devices import ledger_for
    from r1kit.cost.ledger import read_ledger

    summary = run_rl(cfg, progress=False,
                     ledger_factory=lambda d, stage, model_config: ledger_for(d, stage, model_config=model_config))
    assert summary["steps"] == 2
    steps = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "mismatch_kl" in m]
    assert len(steps) == 2
    assert steps[0]["completions_trained"] > 0  # step 1 changed the weights: step 2 samples from the new ones
    for m in steps:  # the engine follows the trainer: fp32 on both sides, weights synced after every step
        assert 0 <= m["mismatch_kl"] < 1e-4 and m["tis_weight"] == pytest.approx(1.0, abs=1e-3), m
    phases = {r.get("phase") for r in read_ledger(tmp_path / "rl")}
    assert {"rollout_engine_startup", "weight_sync", "rollout", "training"} <= phases
    trained, _ = modeling.load_model(tmp_path / "rl" / "model")
    start, _ = modeling.load_model(base)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters()))


# -- two ranks: FSDP2 shards gathered into each rank's engine --------------------------------------------------------


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    """A spawned rank: join a gloo group, shard the policy (FSDP2), build this rank's engine from `source` and load
    the sharded policy into it; record the logprob gap to the unsharded policy and that the group survives close."""
    import datetime
    import os

    import torch.distributed as dist

    from r1kit.parallel.dist import DistInfo
    from r1kit.parallel.engine import Engine
    from r1kit.parallel.fsdp import shard

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    policy, tokenizer = modeling.load_model(f"{folder}/policy")
    reference = copy.deepcopy(policy).eval()
    shard(policy, Engine(torch.device("cpu"), "fp32", DistInfo(rank, world, rank)))
    engine = make_engine("vllm", policy, source=f"{folder}/source", max_len=MAX_LEN, seed=rank)
    prompts = [tokenizer(t).input_ids for t in TEXTS[rank::world]]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=8)
    out = engine.sample(prompts, params, eos_ids=NEVER, pad_id=0, generator=torch.Generator().manual_seed(rank),
                        return_logprobs=True)
    gap = _max_gap(out, _trainer_logprobs(reference, prompts, out.tokens, params.temperature))
    engine.close()
    total = torch.tensor([1.0])
    dist.all_reduce(total)  # the trainer's process group outlives the engine
    torch.save({"gap": gap, "total": total.item(), "tokens": out.tokens}, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


@needs_vllm
@pytest.mark.slow
def test_two_ranks_load_fsdp2_shards_into_their_engines(policy, vllm_config, tokenizer, tmp_path):
    import multiprocessing as mp
    import socket

    modeling.save_model(policy, tokenizer, tmp_path / "policy")
    modeling.save_model(modeling.new_model(vllm_config, tokenizer, seed=1), tokenizer, tmp_path / "source")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["gap"] < ATOL and r["total"] == 2.0 for r in results)
    assert results[0]["tokens"] != results[1]["tokens"]


# -- eval and generate through the backend ---------------------------------------------------------------------


@needs_vllm
def test_eval_and_generate_commands_sample_through_vllm(engine, policy, tokenizer, tmp_path, capsys):
    """`r1kit eval --backend vllm` and `r1kit generate --backend vllm` build their engine from the model directory;
    a greedy evaluation gives what r1kit's sampler gives."""
    from r1kit.cli.main import main

    modeling.save_model(policy, tokenizer, tmp_path / "m")
    results = {}
    for backend in ("vllm", "r1kit"):
        out = tmp_path / f"{backend}.json"
        assert main(["eval", "--model", str(tmp_path / "m"), "--task", "arithmetic", "--n", "6", "--k", "1",
                     "--temperature", "0", "--max-new-tokens", "10", "--backend", backend, "--json", str(out)]) == 0
        results[backend] = json.loads(out.read_text())
    assert results["vllm"]["backend"] == "vllm" and results["r1kit"]["backend"] == "r1kit"
    assert results["vllm"]["metrics"]["mean_completion_tokens"] == results["r1kit"]["metrics"]["mean_completion_tokens"]
    assert [e["completion"] for e in results["vllm"]["examples"]] == [e["completion"] for e in results["r1kit"]["examples"]]
    traces = tmp_path / "traces.jsonl"
    assert main(["generate", "--model", str(tmp_path / "m"), "--task", "arithmetic", "--n", "4", "--k", "2",
                 "--max-new-tokens", "10", "--backend", "vllm", "--out", str(traces)]) == 0
    assert "sampled" in capsys.readouterr().out or traces.exists()

"""The RL loop (loops/rl.py) in-process on a tiny saved model: what a run writes, `--resume` replaying exactly
(after a stop, a kill mid-step and a kill mid-checkpoint), β=0 without a reference model, dynamic sampling, the
variants, the learning-rate schedule, the doctor in strict mode, checkpoints, and the `r1kit rl` command.

A freshly initialised model earns no accuracy or format reward, so the runs add a user reward (loaded by
`package.module:function`) that varies with the completion's text: groups then have non-zero advantages and the
weights really move, which is what makes the resume comparisons mean something.
"""

import copy
import json
import math
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from r1kit.algo import rl_step
from r1kit.algo.doctor import DoctorStop
from r1kit.algo.rl_config import VARIANTS, AlgoConfig, OptimConfig, RLConfig, RolloutConfig
from r1kit.algo.rl_step import learning_rate
from r1kit.config import build
from r1kit.errors import UserError
from r1kit.loops import rl
from r1kit.loops.rl import run_rl
from r1kit.models.checkpoint import STATE_FILE, latest_checkpoint, save_checkpoint
from r1kit.models.modeling import load_model, new_model, save_model

pytestmark = pytest.mark.slow

STEP_METRICS = [
    "reward_mean",
    "reward_std",
    "accuracy",
    "format_rate",
    "completion_len_mean",
    "completion_len_max",
    "truncation_rate",
    "zero_variance_share",
    "kl",
    "clip_fraction",
    "entropy",
    "grad_norm",
    "lr",
    "time_rollout",
    "time_scoring",
    "time_training",
    "tokens_per_s",
    "loss",
    "completions_sampled",
    "completions_trained",
]
USER_REWARDS = '''
def spread(problem, completion, score, ctx):
    """Varies with the text, so groups of a random model differ."""
    return (sum(map(ord, completion)) % 7) / 7


def const(problem, completion, score, ctx):
    return 1.0
'''


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, tokenizer, tiny_config):
    path = tmp_path_factory.mktemp("base") / "model"
    save_model(new_model(tiny_config, tokenizer, seed=0), tokenizer, path)
    return path


@pytest.fixture(scope="module")
def rewards_module(tmp_path_factory):
    """A user's reward module on sys.path, as `r1kit_rl_test_rewards:spread`."""
    name = "r1kit_rl_test_rewards"
    folder = tmp_path_factory.mktemp("user")
    (folder / f"{name}.py").write_text(USER_REWARDS)
    sys.path.insert(0, str(folder))
    yield name
    sys.path.remove(str(folder))
    sys.modules.pop(name, None)


def _merge(base: dict, extra: dict) -> dict:
    """`base` with `extra`'s top-level values, and its sections updated key by key (a key's value replaced)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


@pytest.fixture(scope="module")
def make_cfg(base_model, rewards_module):
    """RLConfig for a 4-step run of 2 questions × 2 completions of ≤ 12 tokens, with overrides."""

    def make(out, **extra) -> RLConfig:
        data = {
            "model": str(base_model),
            "out": str(out),
            "task": "arithmetic",
            "steps": 4,
            "seed": 0,
            "train_problems": 64,
            "checkpoint_every": 2,
            "eval_every": 2,
            "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 12},
            # two mini-batches: old log-probs come from the sampler; β > 0 with a reset at step 3
            "algo": {"mini_batches": 2, "beta": 0.01, "ref_reset_every": 3},
            "optim": {"lr": 1e-3, "warmup_steps": 1, "schedule": "cosine"},
            "reward": {"weights": {"accuracy": 1.0, "format": 1.0, f"{rewards_module}:spread": 1.0}},
            "eval": {"n": 4, "k": 1, "max_new_tokens": 8},
        }
        return build(RLConfig, _merge(data, extra))

    return make


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, make_cfg, torch_threads):
    """The uninterrupted reference run: 4 steps, checkpoints at 2 and 4, evaluations at 0, 2 and the end."""
    out = tmp_path_factory.mktemp("rl") / "A"
    summary = run_rl(make_cfg(out), progress=False)
    return out, summary


def _weights(run_dir) -> dict:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# -- (a) what a run writes ----------------------------------------------------------------------------------------


def test_run_writes_metrics_for_every_step(run_a, make_cfg):
    out, summary = run_a
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert "eval/pass@1" in rows[0] and "eval/pass@1" in rows[2]  # before training, and every eval_every
    cfg = make_cfg(out).resolve()
    for r in rows[1:]:
        missing = [k for k in STEP_METRICS if k not in r]
        assert not missing, missing
        assert all(math.isfinite(r[k]) for k in STEP_METRICS)
        assert r["lr"] == pytest.approx(learning_rate(r["step"] - 1, cfg))
        assert r["completions_sampled"] == 4 and r["completions_trained"] == 4
        assert 0 <= r["truncation_rate"] <= 1 and 0 <= r["zero_variance_share"] <= 1
        assert r["completion_len_max"] <= 12
        assert r["skipped_updates"] == 0
    assert any(r["grad_norm"] > 0 for r in rows[1:])  # the user reward gave something to learn from
    assert summary["finished"] and summary["steps"] == 4


def test_run_writes_tensorboard_events(run_a):
    out, _ = run_a
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert events
    data = b"".join(p.read_bytes() for p in events)
    assert b"reward_mean" in data and b"grad_norm" in data


def test_run_writes_checkpoints_model_and_eval(run_a, base_model):
    out, summary = run_a
    root = out / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_000004"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002", "step_000004"]
    state = torch.load(root / "step_000004" / STATE_FILE, weights_only=False)
    assert state["step"] == 4 and state["ref"] is not None  # β > 0: the reference is saved for --resume
    assert {"optimizer", "doctor", "history"} <= state.keys()
    model, tokenizer = load_model(out / "model")
    assert sum(p.numel() for p in model.parameters()) > 0 and tokenizer.pad_token_id is not None
    # training moved the weights
    init = load_file(str(base_model / "model.safetensors"))
    assert any(not torch.equal(init[k], v) for k, v in _weights(out).items())
    result = json.loads((out / "eval.json").read_text())
    assert result["metrics"]["problems"] == 4 and 0 <= result["metrics"]["pass@1"] <= 1
    assert summary["after"] == result["metrics"] and summary["before"]["problems"] == 4
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["algo"]["loss_aggregation"] == "seq_mean"  # the resolved variant is recorded
    assert not [p for p in out.rglob(".*") if p.name != ".gitignore"]  # no temp files left behind


# -- (b) resume exactness -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_b(tmp_path_factory, make_cfg, run_a):
    """Stopped after 3 steps (the last checkpoint is step 2: step 3's work is lost), then resumed."""
    out = tmp_path_factory.mktemp("rl") / "B"
    stopped = run_rl(make_cfg(out), progress=False, stop_after=3)
    assert not stopped["finished"] and not (out / "model").exists()
    assert latest_checkpoint(out).name == "step_000002"
    resumed = run_rl(make_cfg(out), resume=True, progress=False)
    return out, resumed


def test_resume_after_stop_ends_with_the_same_weights(run_a, run_b):
    out, summary = run_b
    assert summary["finished"]
    _assert_same_weights(run_a[0], out)
    assert json.loads((out / "eval.json").read_text())["metrics"]["pass@1"] == run_a[1]["after"]["pass@1"]


def test_resumed_steps_replay_the_same_samples(run_a, run_b):
    a = {r["step"]: r for r in _metrics(run_a[0])}
    b = {r["step"]: r for r in _metrics(run_b[0])}
    for step in (3, 4):  # replayed after the resume: same completions, same rewards, same update
        for key in ("reward_mean", "completion_len_mean", "loss", "kl", "grad_norm", "lr"):
            assert b[step][key] == a[step][key], (step, key)


def test_resumed_metrics_keep_every_step(run_a, run_b):
    assert [r["step"] for r in _metrics(run_b[0])] == [r["step"] for r in _metrics(run_a[0])]


def test_samples_file_shows_each_steps_completions_and_survives_a_resume(run_a, run_b):
    """samples.jsonl: per logged step, one group's question, answer and completions as text with their rewards;
    a resumed run rewrites the lost steps' lines instead of repeating them."""
    def lines(run_dir):
        return [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]

    a = lines(run_a[0])
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    for r in a:
        assert r["question"] and r["answer"] and 1 <= len(r["samples"]) <= 4
        assert all(isinstance(x["completion"], str) and isinstance(x["reward"], float) for x in r["samples"])
    assert lines(run_b[0]) == a


def test_kill_mid_step_then_resume_ends_with_the_same_weights(tmp_path, make_cfg, run_a):
    out = tmp_path / "C"
    calls, real_train = [], rl.train_groups

    def killed_in_the_fourth_step(*args, **kwargs):
        calls.append(1)
        stats = real_train(*args, **kwargs)  # the update happens (in memory) ...
        if len(calls) == 4:
            raise RuntimeError("killed mid-step")  # ... but the process dies before its checkpoint
        return stats

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rl, "train_groups", killed_in_the_fourth_step)
        with pytest.raises(RuntimeError, match="killed"):
            run_rl(make_cfg(out), progress=False)
    assert latest_checkpoint(out).name == "step_000002" and not (out / "model").exists()
    assert run_rl(make_cfg(out), resume=True, progress=False)["finished"]
    _assert_same_weights(run_a[0], out)


def test_kill_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, make_cfg, run_a):
    out = tmp_path / "D"
    import r1kit.models.checkpoint as checkpoint

    real_save = checkpoint.save_model

    def dies_after_writing_the_weights(model, tokenizer, path, *args, **kwargs):
        real_save(model, tokenizer, path, *args, **kwargs)
        if "step_000004" in str(path):
            raise RuntimeError("killed while checkpointing")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save_model", dies_after_writing_the_weights)
        with pytest.raises(RuntimeError, match="checkpointing"):
            run_rl(make_cfg(out), progress=False)
    root = out / "checkpoints"
    assert (root / ".step_000004.staging").is_dir()  # the half-written checkpoint ...
    assert latest_checkpoint(out).name == "step_000002"  # ... is not the one `latest` names
    assert run_rl(make_cfg(out), resume=True, progress=False)["finished"]
    assert not (root / ".step_000004.staging").exists()
    assert (root / "latest").read_text().strip() == "step_000004"
    _assert_same_weights(run_a[0], out)


# -- (c) an existing run directory ------------------------------------------------------------------------------


def test_same_out_without_resume_is_user_error(run_a, make_cfg):
    with pytest.raises(UserError, match="--resume"):
        run_rl(make_cfg(run_a[0]), progress=False)


def test_resume_of_a_finished_run_changes_nothing(run_a, make_cfg, tmp_path):
    import shutil

    out = tmp_path / "A2"
    shutil.copytree(run_a[0], out)
    summary = run_rl(make_cfg(out), resume=True, progress=False)
    assert summary["finished"]
    _assert_same_weights(run_a[0], out)


# -- (d) β = 0 loads no reference model ---------------------------------------------------------------------------


def test_beta_zero_loads_no_reference_model(tmp_path, make_cfg):
    def forbidden(*args, **kwargs):
        raise AssertionError("β = 0 must not build or run a reference model")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rl, "copy", types.SimpleNamespace(deepcopy=forbidden))
        mp.setattr(rl_step, "rollout_logprobs", forbidden)
        summary = run_rl(make_cfg(tmp_path / "b0", steps=2, eval_every=0, algo={"beta": 0.0}), progress=False)
    assert summary["finished"]
    state = torch.load(latest_checkpoint(tmp_path / "b0") / STATE_FILE, weights_only=False)
    assert state["ref"] is None
    assert all(r["kl"] == 0.0 for r in _metrics(tmp_path / "b0") if r["step"] > 0)


# -- (e) dynamic sampling -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_constant_reward(tmp_path_factory, make_cfg, rewards_module):
    """Dynamic sampling with a reward that is always 1: every group is zero-variance and dropped."""
    out = tmp_path_factory.mktemp("rl") / "dyn"
    cfg = make_cfg(
        out,
        steps=2,
        eval_every=0,
        rollout={"dynamic_sampling": True, "max_refill_rounds": 1},
        reward={"weights": {f"{rewards_module}:const": 1.0}},
        optim={"weight_decay": 0.1},
    )
    return out, run_rl(cfg, progress=False)


def test_dynamic_sampling_drops_flat_groups_without_crashing(run_constant_reward):
    out, summary = run_constant_reward
    assert summary["finished"]
    rows = [r for r in _metrics(out) if r["step"] > 0]
    assert len(rows) == 2
    for r in rows:
        assert r["completions_trained"] == 0
        assert r["completions_sampled"] == 8  # 2 questions × G=2, sampled in the first round and one refill
        assert r["zero_variance_share"] == 1.0 and r["reward_mean"] == 1.0
        assert r["grad_norm"] == 0.0 and r["skipped_updates"] == 0


def test_a_step_with_nothing_to_train_leaves_the_weights(run_constant_reward, base_model):
    init = load_file(str(base_model / "model.safetensors"))
    for k, v in _weights(run_constant_reward[0]).items():
        assert torch.equal(init[k], v), k


def test_dynamic_sampling_keeps_groups_that_vary(tmp_path, make_cfg):
    out = tmp_path / "dyn2"
    run_rl(
        make_cfg(out, steps=2, eval_every=0, rollout={"dynamic_sampling": True, "max_refill_rounds": 2}),
        progress=False,
    )
    for r in (r for r in _metrics(out) if r["step"] > 0):
        assert 0 < r["completions_trained"] <= 4 and r["completions_trained"] % 2 == 0
        # whatever was kept had non-zero variance: flat groups never reach the update
        assert r["completions_sampled"] >= r["completions_trained"]


# -- (f) variants and cross-field checks --------------------------------------------------------------------------


def _resolved(world: int = 1, **algo) -> RLConfig:
    return RLConfig(model="m", out="o", algo=AlgoConfig(**algo)).resolve(world)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_fills_unset_fields(variant):
    cfg = _resolved(variant=variant)
    implied = VARIANTS[variant]
    assert cfg.algo.loss_aggregation == implied["loss_aggregation"]
    assert cfg.algo.advantage_scale == implied["advantage_scale"]
    assert cfg.algo.eps_high == (implied["eps_high"] if implied["eps_high"] is not None else cfg.algo.eps_low)
    assert cfg.rollout.dynamic_sampling == implied["dynamic_sampling"]


def test_variant_rows():
    assert _resolved(variant="grpo").algo.loss_aggregation == "seq_mean"
    dr = _resolved(variant="dr_grpo").algo
    assert (dr.loss_aggregation, dr.advantage_scale, dr.eps_high) == ("constant", "none", 0.2)
    dapo = _resolved(variant="dapo")
    assert (dapo.algo.loss_aggregation, dapo.algo.advantage_scale, dapo.algo.eps_high) == (
        "token_mean",
        "std",
        0.28,
    )
    assert dapo.rollout.dynamic_sampling is True


def test_explicit_settings_beat_the_variant():
    cfg = RLConfig(
        model="m",
        out="o",
        rollout=RolloutConfig(dynamic_sampling=False),
        algo=AlgoConfig(variant="dapo", loss_aggregation="seq_mean", advantage_scale="none", eps_high=0.4),
    ).resolve()
    assert (cfg.algo.loss_aggregation, cfg.algo.advantage_scale, cfg.algo.eps_high) == (
        "seq_mean",
        "none",
        0.4,
    )
    assert cfg.rollout.dynamic_sampling is False
    assert _resolved(variant="grpo", eps_low=0.3).algo.eps_high == 0.3  # no clip-higher: ε_high = ε_low


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(algo=AlgoConfig(variant="ppo")), "variant"),
        (dict(algo=AlgoConfig(loss_aggregation="sum")), "loss_aggregation"),
        (dict(algo=AlgoConfig(advantage_scale="rank")), "advantage_scale"),
        (dict(rollout=RolloutConfig(group_size=1)), "group_size"),
        (dict(rollout=RolloutConfig(prompts_per_step=2), algo=AlgoConfig(mini_batches=4)), "mini_batches"),
        (dict(algo=AlgoConfig(mu=0)), "mu"),
        (dict(algo=AlgoConfig(micro_batch_tokens=0)), "micro_batch_tokens"),
        (dict(algo=AlgoConfig(beta=-1.0)), "beta"),
        (dict(optim=OptimConfig(schedule="step")), "schedule"),
        (dict(model=""), "model"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, words):
    with pytest.raises(UserError, match=words):
        RLConfig(**{"model": "m", "out": "o", **kwargs}).resolve()


def test_prompts_per_step_must_divide_over_ranks():
    RLConfig(model="m", out="o", rollout=RolloutConfig(prompts_per_step=4)).resolve(world=2)
    with pytest.raises(UserError, match="divisible"):
        RLConfig(model="m", out="o", rollout=RolloutConfig(prompts_per_step=3)).resolve(world=2)


# -- (g) learning-rate schedule -----------------------------------------------------------------------------------


def _lr_cfg(schedule: str, warmup: int = 2, steps: int = 12) -> RLConfig:
    return RLConfig(
        steps=steps, optim=OptimConfig(lr=1.0, warmup_steps=warmup, schedule=schedule, min_lr_ratio=0.1)
    )


def test_linear_warmup():
    cfg = _lr_cfg("constant", warmup=4)
    assert [learning_rate(s, cfg) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_constant_after_warmup():
    cfg = _lr_cfg("constant")
    assert all(learning_rate(s, cfg) == 1.0 for s in range(2, 12))


@pytest.mark.parametrize(
    "schedule, quarter",
    # at a quarter of the decay: cosine 0.1 + 0.9 · (1 + cos(π/4)) / 2 = 0.868198; linear 1 - 0.9/4 = 0.775
    [("cosine", 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))), ("linear", 1.0 - 0.9 * 0.25)],
)
def test_decay_endpoints(schedule, quarter):
    # warmup 2, steps 12 (indices 0..11): decay progress = (step - 2) / 9, reaching the floor at the last step
    cfg = _lr_cfg(schedule)
    assert learning_rate(1, cfg) == 1.0  # the end of warmup is the peak
    assert learning_rate(2, cfg) == pytest.approx(1.0)  # decay starts at the peak
    assert learning_rate(6.5, cfg) == pytest.approx(0.55)  # half way: 0.1 + 0.9/2 for both
    assert learning_rate(4.25, cfg) == pytest.approx(quarter)
    assert learning_rate(11, cfg) == pytest.approx(0.1)  # lr · min_lr_ratio at the last step
    assert learning_rate(50, cfg) == pytest.approx(0.1)  # and never below
    values = [learning_rate(s, cfg) for s in range(2, 13)]
    assert values == sorted(values, reverse=True)


def test_no_warmup_starts_at_peak():
    assert learning_rate(0, _lr_cfg("cosine", warmup=0)) == 1.0


# -- (h) the doctor in strict mode --------------------------------------------------------------------------------


def test_strict_doctor_stops_a_run_that_cannot_learn(tmp_path, make_cfg):
    # one token per completion: every completion is truncated (and none is formatted)
    cfg = make_cfg(
        tmp_path / "h",
        eval_every=0,
        rollout={"max_new_tokens": 1},
        reward={"weights": {"accuracy": 1.0, "format": 1.0}},
        doctor={"strict": True, "patience": 1},
    )
    with pytest.raises(DoctorStop, match="truncated|formatted|all-equal"):
        run_rl(cfg, progress=False)
    assert latest_checkpoint(tmp_path / "h") is None  # stopped before any checkpoint


# -- checkpoints ----------------------------------------------------------------------------------------------


def test_checkpoint_refuses_non_finite_weights(tmp_path, tokenizer, tiny_config):
    model = new_model(tiny_config, tokenizer, seed=0)
    save_checkpoint(tmp_path, 1, model, tokenizer, {"x": 1})
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        save_checkpoint(tmp_path, 2, model, tokenizer, {"x": 2})
    assert latest_checkpoint(tmp_path).name == "step_000001"
    assert not (tmp_path / "checkpoints" / "step_000002").exists()


def test_checkpoints_are_pruned_to_keep(tmp_path, tokenizer, tiny_config):
    model = new_model(tiny_config, tokenizer, seed=0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, tokenizer, {}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000002", "step_000003"]
    assert latest_checkpoint(tmp_path).name == "step_000003"
    (root / "latest").write_text("step_000009\n")  # names a checkpoint that is not complete
    assert latest_checkpoint(tmp_path) is None


# -- (i) the command ---------------------------------------------------------------------------------------------


@pytest.fixture
def cheap_ledger(monkeypatch):
    """The CLI's cost ledger without its one-second CPU benchmark."""
    import r1kit.cost.devices

    monkeypatch.setattr(r1kit.cost.devices, "cpu_peak_flops", lambda *a, **k: 1e10)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1kit: error: ") and "Traceback" not in err, err
    return lines[0]


def test_cli_rl_group_size_one_is_user_error(base_model, tmp_path, capsys):
    from r1kit.cli.main import main

    assert (
        main(["rl", "--model", str(base_model), "--out", str(tmp_path / "o"), "--rollout.group_size=1"]) == 2
    )
    assert "group_size" in _one_error_line(capsys.readouterr().err)


def test_cli_rl_unknown_key_is_user_error(base_model, tmp_path, capsys):
    from r1kit.cli.main import main

    assert main(["rl", "--model", str(base_model), "--out", str(tmp_path / "o"), "--algo.nope=1"]) == 2
    assert "nope" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("flag, words", [("--steps=0", "steps"), ("--nope=1", "nope")])
def test_cli_rl_bad_top_level_override_is_user_error(base_model, tmp_path, capsys, flag, words):
    from r1kit.cli.main import main

    assert main(["rl", "--model", str(base_model), "--out", str(tmp_path / "o"), flag]) == 2
    assert words in _one_error_line(capsys.readouterr().err)


RECIPE = """
task = "arithmetic"
steps = 1
train_problems = 32

[rollout]
prompts_per_step = 2
group_size = 2
max_new_tokens = 8

[algo]
variant = "dr_grpo"

[optim]
lr = 1e-3

[eval]
n = 4
k = 1
max_new_tokens = 8

[recipe]
notes = "a one-step smoke run: [recipe] holds notes for people and is not configuration"
"""


def test_cli_rl_with_a_recipe_runs(base_model, tmp_path, capsys, cheap_ledger, torch_threads):
    from r1kit.cli.main import main

    recipe = tmp_path / "smoke.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    code = main(
        [
            "rl",
            "--model",
            str(base_model),
            "--out",
            str(out),
            "--config",
            str(recipe),
            "--algo.beta=0",
            "--eval.n=2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "after RL" in capsys.readouterr().out
    assert (out / "model" / "config.json").is_file() and (out / "eval.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["algo"]["loss_aggregation"] == "constant"  # dr_grpo, from the recipe
    assert run["config"]["algo"]["beta"] == 0.0 and run["config"]["eval"]["n"] == 2  # flags over the recipe
    assert (out / "ledger.jsonl").is_file()
    # running into it again without --resume: one line, status 2
    assert main(["rl", "--model", str(base_model), "--out", str(out), "--config", str(recipe)]) == 2
    assert "--resume" in _one_error_line(capsys.readouterr().err)


def test_cli_strict_flag_stops_with_one_line(base_model, tmp_path, capsys, cheap_ledger, torch_threads):
    from r1kit.cli.main import main

    code = main(
        [
            "rl",
            "--model",
            str(base_model),
            "--out",
            str(tmp_path / "s"),
            "--strict",
            "--rollout.prompts_per_step=2",
            "--rollout.group_size=2",
            "--rollout.max_new_tokens=1",
            "--doctor.patience=1",
            "--eval.n=2",
            "--eval.k=1",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the progress bars of the steps that ran
    assert last.startswith("r1kit: error: step 1:") and "truncated" in last


# -- the loop's wiring into the update ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def early_stopping_model(tmp_path_factory, base_model):
    """The base model with a fifth of the vocabulary as extra stop tokens (generation_config.eos_token_id), so
    that some completions finish and some are truncated."""
    model, tokenizer = load_model(base_model)
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        *range(2, 2 + model.config.vocab_size // 5),
    ]
    path = tmp_path_factory.mktemp("stops") / "model"
    save_model(model, tokenizer, path)
    return path


def test_loop_wires_its_settings_into_the_update(tmp_path, make_cfg, early_stopping_model):
    """The update gets the configured variant, clip range, temperature and budget; the sampler's log-probs (the
    old policy of the second mini-batch) and the reference's are those of the policy at that temperature (before
    top-p); with `mask_truncated` exactly the truncated completions carry no loss."""
    from r1kit.algo.grpo import rollout_logprobs

    seen, real = [], rl_step.train_on_rollout

    def spy(model, optimizer, rollout, settings, engine):
        fresh = rollout_logprobs(model, rollout, settings.temperature)  # (N, T) before this step's update
        seen.append((settings, rollout, fresh))
        return real(model, optimizer, rollout, settings, engine)

    out = tmp_path / "wired"
    cfg = make_cfg(
        out,
        model=str(early_stopping_model),
        steps=2,
        eval_every=0,
        rollout={
            "prompts_per_step": 4,
            "temperature": 0.7,
            "top_p": 0.9,
            "max_new_tokens": 6,
            "dynamic_sampling": False,
        },
        algo={"variant": "dapo", "mini_batches": 2, "beta": 0.01, "mask_truncated": True},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rl_step, "train_on_rollout", spy)
        run_rl(cfg, progress=False)
    rows = [r for r in _metrics(out) if r["step"] > 0]
    assert len(seen) == 2
    assert any(0 < r["truncation_rate"] < 1 for r in rows)  # some finished, some truncated
    for step, ((s, rollout, fresh), m) in enumerate(zip(seen, rows)):
        assert (s.temperature, s.loss_aggregation, s.eps_low, s.eps_high) == (0.7, "token_mean", 0.2, 0.28)
        assert (s.mini_batches, s.mu, s.beta, s.max_len, s.grad_clip) == (2, 1, 0.01, 6, cfg.optim.grad_clip)
        t_len = rollout.completion_len
        real_tokens = rollout.attention_mask[:, -t_len:].bool()  # (N, T) the completions' own tokens
        assert rollout.old_logprobs is not None  # μ × mini-batches > 1: the sampler's log-probs are kept
        torch.testing.assert_close(
            rollout.old_logprobs[real_tokens], fresh[real_tokens], atol=2e-4, rtol=1e-4
        )
        if step == 0:  # the reference is the initial policy
            torch.testing.assert_close(
                rollout.ref_logprobs[real_tokens], fresh[real_tokens], atol=2e-4, rtol=1e-4
            )
        masked_rows = int((rollout.completion_mask.sum(-1) == 0).sum())
        assert masked_rows == round(m["truncation_rate"] * m["completions_sampled"])


# -- rollout engines: behaviour log-probs, TIS and the mismatch the doctor watches -------------------------------


def test_exact_sampler_reports_no_mismatch(run_a):
    """r1kit's sampler in the training precision computes what the trainer computes: mismatch ~0, weights 1."""
    for m in (r for r in _metrics(run_a[0]) if "mismatch_kl" in r):
        assert 0 <= m["mismatch_kl"] < 1e-6 and m["tis_weight"] == pytest.approx(1.0, abs=1e-4)
        assert m["tis_clip_fraction"] == 0


def test_bf16_rollouts_are_corrected_and_reported(tmp_path, make_cfg):
    """rollout.dtype = bf16: a bf16 sampler beside fp32 training; π_old comes from the trainer (the sampler is not
    exact), TIS weights differ from 1 and the mismatch is small but measured."""
    calls = []
    real = rl_step.rollout_logprobs

    def spy(model, *args, **kwargs):
        calls.append(model)
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rl_step, "rollout_logprobs", spy)
        run_rl(make_cfg(tmp_path / "bf", steps=2, eval_every=0, rollout={"dtype": "bf16"}), progress=False)
    assert len(calls) >= 4  # per step: π_old (two mini-batches) and the reference (β > 0), both trainer forwards
    steps = [m for m in _metrics(tmp_path / "bf") if "mismatch_kl" in m]
    assert all(0 < m["mismatch_kl"] < 0.01 for m in steps), steps
    assert any(m["tis_weight"] != 1.0 for m in steps)


def test_doctor_warns_when_the_engine_misses_its_weight_updates(tmp_path, make_cfg, capsys):
    """A stale engine (update_weights skipped: trl#5312) samples from the step-0 policy while the trainer moves on:
    the mismatch KL climbs past the limit and the doctor says so."""
    from r1kit.rollout import SamplerEngine

    cfg = make_cfg(tmp_path / "stale", steps=4, eval_every=0, rollout={"dtype": "bf16"}, optim={"lr": 3e-2},
                   doctor={"mismatch_limit": 1e-3, "patience": 1}, algo={"beta": 0.0})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SamplerEngine, "update_weights", lambda self, policy: None)
        run_rl(cfg, progress=True)
    steps = [m for m in _metrics(tmp_path / "stale") if "mismatch_kl" in m]
    assert steps[-1]["mismatch_kl"] > 1e-3, steps
    captured = capsys.readouterr()
    assert "rollout engine's log-probs drift" in captured.out + captured.err


# -- rollout.overlap: the next rollout sampled while this step trains ---------------------------------------------


def test_overlapped_rollouts_are_one_step_stale_and_resume_exactly(tmp_path, make_cfg):
    """Step 1 is on-policy; later steps train on completions sampled before the previous update (mismatch > 0,
    corrected by TIS), and the ledger bills the wall time once. Stopped after 3 steps and resumed from the step-2
    checkpoint, the run ends with the weights of the uninterrupted one (the prefetched rollout is checkpointed)."""
    from r1kit.cost.devices import ledger_for
    from r1kit.cost.ledger import read_ledger

    def ledger(d, stage, model_config):
        return ledger_for(d, stage, model_config=model_config)

    extra = dict(eval_every=0, rollout={"overlap": True}, algo={"mini_batches": 1, "beta": 0.0})
    whole = tmp_path / "whole"
    run_rl(make_cfg(whole, **extra), progress=False, ledger_factory=ledger)
    steps = [m for m in _metrics(whole) if "mismatch_kl" in m]
    assert steps[0]["mismatch_kl"] < 1e-6  # sampled from the weights it trains
    assert all(m["mismatch_kl"] > 1e-6 for m in steps[1:] if m["completions_trained"])  # one update behind
    records = read_ledger(whole)
    background = [r for r in records if r.get("phase") == "rollout" and "overlapped_s" in r]
    assert len(background) == len(steps) - 1
    assert all(r["generated_tokens"] > 0 for r in background)
    cut = tmp_path / "cut"
    run_rl(make_cfg(cut, **extra), progress=False, stop_after=3)
    run_rl(make_cfg(cut, **extra), resume=True, progress=False)
    _assert_same_weights(whole, cut)

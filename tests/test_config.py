"""Config loading: dataclasses from dicts, TOML and `section.key=value` overrides (pure Python, milliseconds)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest

from r1kit.config import apply_overrides, build, load_toml, to_dict
from r1kit.errors import UserError


@dataclass
class Optim:
    lr: float = 1e-3
    steps: int = 10
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    fused: bool = False


@dataclass
class Run:
    name: str = "run"
    seed: int = 0
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    extra: dict = field(default_factory=dict)
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise UserError("seed must be non-negative")


@dataclass
class Required:
    path: str


def test_build_defaults_and_nested():
    cfg = build(Run, {"name": "x", "optim": {"lr": 0.5, "steps": 3}})
    assert cfg == Run(name="x", optim=Optim(lr=0.5, steps=3))
    assert build(Run, {}) == Run()
    assert to_dict(cfg)["optim"]["steps"] == 3


def test_build_roundtrips_through_to_dict():
    cfg = Run(name="y", seed=3, tags=["a"], limit=7, extra={"k": 1}, optim=Optim(lr=2.0, fused=True))
    assert build(Run, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, name",
    [
        ({"nmae": "x"}, "'nmae'"),
        ({"optim": {"learning_rate": 1.0}}, "'optim.learning_rate'"),
    ],
)
def test_unknown_key_is_named(data, name):
    with pytest.raises(UserError, match="unknown config key") as e:
        build(Run, data)
    assert name in str(e.value)
    assert "lr" in str(e.value) or "name" in str(e.value)  # the known keys are listed


@pytest.mark.parametrize(
    "data, where",
    [
        ({"name": 3}, "name"),  # int for a string
        ({"seed": "abc"}, "seed"),  # not a number
        ({"seed": 1.5}, "seed"),  # a fraction for an int
        ({"seed": True}, "seed"),  # a bool is not a number
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"optim": {"lr": [1.0]}}, "optim.lr"),
        ({"optim": {"fused": "maybe"}}, "optim.fused"),
        ({"optim": {"fused": 2}}, "optim.fused"),
        ({"optim": {"betas": 0.9}}, "optim.betas"),  # a scalar for a list
        ({"optim": {"betas": ["a", "b"]}}, "optim.betas"),  # wrong item type
        ({"tags": "a", "limit": "many"}, "limit"),  # wrong type for an optional
        ({"extra": [1]}, "extra"),  # a list for a table
        ({"optim": 3}, "optim"),  # a scalar for a section
    ],
)
def test_wrong_type_is_a_user_error_naming_the_key(data, where):
    with pytest.raises(UserError) as e:
        build(Run, data)
    assert where in str(e.value)


def test_int_is_promoted_to_float():
    cfg = build(Run, {"optim": {"lr": 1, "betas": [1, 0]}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [1.0, 0.0] and all(isinstance(b, float) for b in cfg.optim.betas)


def test_integral_float_is_accepted_as_int():
    cfg = build(Run, {"seed": 3.0})
    assert cfg.seed == 3 and isinstance(cfg.seed, int)


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
    ],
)
def test_bool_from_strings(text, value):
    assert build(Run, {"optim": {"fused": text}}).optim.fused is value


def test_numbers_from_strings():
    cfg = build(Run, {"seed": "7", "optim": {"lr": "3e-4", "steps": "12"}})
    assert (cfg.seed, cfg.optim.lr, cfg.optim.steps) == (7, 3e-4, 12)
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.optim.steps, int)


def test_lists_from_strings_and_lists():
    assert build(Run, {"tags": "a,b,,c"}).tags == ["a", "b", "c"]
    assert build(Run, {"tags": ["x"]}).tags == ["x"]
    assert build(Run, {"tags": ""}).tags == []
    assert build(Run, {"optim": {"betas": "0.8,0.99"}}).optim.betas == [0.8, 0.99]


def test_optional_fields():
    assert build(Run, {"limit": None}).limit is None
    assert build(Run, {"limit": 5}).limit == 5
    assert build(Run, {"limit": "5"}).limit == 5


def test_post_init_errors_and_missing_fields():
    with pytest.raises(UserError, match="non-negative"):
        build(Run, {"seed": -1})
    with pytest.raises(UserError, match="path"):
        build(Required, {})


# -- overrides -------------------------------------------------------------------------------------------


def test_apply_overrides():
    data = {"name": "x", "optim": {"lr": 1.0}}
    out = apply_overrides(data, ["optim.lr=0.5", "seed=3", "--optim.steps=4", "tags=a,b", "name=p=q"])
    assert out == {"name": "p=q", "seed": "3", "tags": "a,b", "optim": {"lr": "0.5", "steps": "4"}}
    assert data == {"name": "x", "optim": {"lr": 1.0}}  # the input is left alone
    cfg = build(Run, out)
    assert (cfg.seed, cfg.tags, cfg.optim.lr, cfg.optim.steps) == (3, ["a", "b"], 0.5, 4)


def test_overrides_make_new_sections_and_later_ones_win():
    out = apply_overrides({}, ["optim.lr=1", "optim.lr=2"])
    assert out == {"optim": {"lr": "2"}}


@pytest.mark.parametrize("item", ["optim.lr", "=3", "", "seed"])
def test_bad_override_form(item):
    with pytest.raises(UserError, match="section.key=value"):
        apply_overrides({}, [item])


@pytest.mark.parametrize("item", ["optim.=1", "--=1", "optim..lr=1"])
def test_empty_key_parts_are_caught_by_build(item):
    with pytest.raises(UserError, match="unknown config key"):
        build(Run, apply_overrides({}, [item]))


def test_override_into_a_value_that_is_not_a_section():
    with pytest.raises(UserError, match="not a section"):
        apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr.x=1"])


def test_overrides_leave_deeply_nested_input_alone():
    data = {"rl": {"optim": {"lr": 1.0}}}
    before = copy.deepcopy(data)
    apply_overrides(data, ["rl.optim.lr=2"])
    assert data == before


# -- TOML ------------------------------------------------------------------------------------------------


def test_load_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('name = "t"\nseed = 2\n\n[optim]\nlr = 1\nbetas = [0.9, 0.99]\nfused = true\n')
    cfg = build(Run, apply_overrides(load_toml(path), ["optim.steps=5"]))
    assert cfg == Run(name="t", seed=2, optim=Optim(lr=1.0, steps=5, betas=[0.9, 0.99], fused=True))


def test_load_toml_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
    with pytest.raises(UserError, match="does not exist"):
        load_toml(tmp_path)  # a directory is not a config file


def test_load_toml_invalid(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optim\nlr = = 1\n")
    with pytest.raises(UserError, match="invalid TOML") as e:
        load_toml(path)
    assert "bad.toml" in str(e.value)


def test_reward_weight_overrides_become_numbers():
    from r1kit.algo.rl_config import RLConfig

    cfg = build(RLConfig, apply_overrides({}, ["--reward.weights.format=0", "--reward.weights.accuracy=2"]))
    assert cfg.reward.weights == {"accuracy": 2.0, "format": 0.0}
    with pytest.raises(UserError, match=r"reward.weights.format = 'lots' is not a number"):
        build(RLConfig, apply_overrides({}, ["--reward.weights.format=lots"]))

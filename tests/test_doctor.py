"""The run doctor (doctor.py): each rule fires after `patience` steps and not before, once; strict mode stops with
the same message as a DoctorStop (a UserError); NaN/inf is reported at once; reward hacking is caught between two
held-out evaluations; the state survives a checkpoint round trip. Pure Python."""

import json
import math

import pytest

from r1kit.algo.doctor import Doctor, DoctorStop
from r1kit.errors import UserError

HEALTHY = {
    "truncation_rate": 0.1,
    "zero_variance_share": 0.2,
    "format_rate": 0.5,
    "loss": 0.1,
    "grad_norm": 1.0,
}

RULES = [
    ("truncation", {"truncation_rate": 0.95}, {"truncation_rate": 0.94}, "truncated"),
    ("zero_variance", {"zero_variance_share": 1.0}, {"zero_variance_share": 0.9}, "all-equal rewards"),
    ("format", {"format_rate": 0.0}, {"format_rate": 0.01}, "well formatted"),
    ("tool_collapse", {"tool_use_share": 0.0}, {"tool_use_share": 0.02}, "tool use collapsed"),
    ("tool_errors", {"tool_calls_per_trajectory": 1.0, "tool_error_rate": 0.95},
     {"tool_calls_per_trajectory": 1.0, "tool_error_rate": 0.85}, "nearly every tool call fails"),
]


def _bad(overrides: dict) -> dict:
    return {**HEALTHY, **overrides}


def test_healthy_steps_say_nothing():
    doctor = Doctor(patience=1)
    for step in range(1, 20):
        assert doctor.check_step(step, HEALTHY) == []


@pytest.mark.parametrize("key, bad, almost, words", RULES)
def test_rule_fires_after_patience_steps_and_not_before(key, bad, almost, words):
    doctor = Doctor(patience=3)
    assert doctor.check_step(1, _bad(bad)) == []
    assert doctor.check_step(2, _bad(bad)) == []
    (warning,) = doctor.check_step(3, _bad(bad))
    assert words in warning and "step 3" in warning and "for 3 steps" in warning
    assert doctor.check_step(4, _bad(bad)) == []  # said once, not every step


@pytest.mark.parametrize("key, bad, almost, words", RULES)
def test_rule_just_below_its_limit_never_fires(key, bad, almost, words):
    doctor = Doctor(patience=2)
    for step in range(1, 10):
        assert doctor.check_step(step, _bad(almost)) == []


@pytest.mark.parametrize("key, bad, almost, words", RULES)
def test_a_good_step_resets_the_streak(key, bad, almost, words):
    doctor = Doctor(patience=3)
    doctor.check_step(1, _bad(bad))
    doctor.check_step(2, _bad(bad))
    assert doctor.check_step(3, HEALTHY) == []
    assert doctor.streaks[key] == 0
    assert doctor.check_step(4, _bad(bad)) == []
    assert doctor.check_step(5, _bad(bad)) == []
    assert len(doctor.check_step(6, _bad(bad))) == 1


def test_missing_metrics_are_not_failures():
    doctor = Doctor(patience=1)
    assert doctor.check_step(1, {}) == []  # format_rate absent is not "format stuck at 0"


def test_custom_limits():
    doctor = Doctor(patience=1, truncation_limit=0.5, zero_variance_limit=0.5)
    warnings = doctor.check_step(1, _bad({"truncation_rate": 0.5, "zero_variance_share": 0.6}))
    assert len(warnings) == 2 and "50%" in warnings[0]


@pytest.mark.parametrize("key, bad, almost, words", RULES)
def test_strict_raises_doctor_stop_with_the_message(key, bad, almost, words):
    doctor = Doctor(strict=True, patience=2)
    assert doctor.check_step(1, _bad(bad)) == []
    with pytest.raises(DoctorStop, match=words) as e:
        doctor.check_step(2, _bad(bad))
    assert isinstance(e.value, UserError)  # the CLI prints it on one line and exits 2
    assert "step 2" in str(e.value)


def test_strict_message_equals_the_warning():
    warning = Doctor(patience=1).check_step(1, _bad({"truncation_rate": 1.0}))[0]
    with pytest.raises(DoctorStop) as e:
        Doctor(strict=True, patience=1).check_step(1, _bad({"truncation_rate": 1.0}))
    assert str(e.value) == warning


@pytest.mark.parametrize(
    "name, value", [("loss", math.nan), ("loss", math.inf), ("grad_norm", math.nan), ("grad_norm", -math.inf)]
)
def test_non_finite_loss_or_grad_is_reported_at_once(name, value):
    doctor = Doctor(patience=100)
    (warning,) = doctor.check_step(7, {**HEALTHY, name: value})
    assert f"{name} is {value}" in warning and "skipped" in warning and "step 7" in warning
    with pytest.raises(DoctorStop, match=name):
        Doctor(strict=True, patience=100).check_step(1, {**HEALTHY, name: value})


def test_skipped_updates_are_reported():
    doctor = Doctor(patience=100)
    (warning,) = doctor.check_step(3, {**HEALTHY, "skipped_updates": 2})
    assert "2 update(s)" in warning
    assert doctor.check_step(4, {**HEALTHY, "skipped_updates": 0}) == []
    with pytest.raises(DoctorStop, match="skipped"):
        Doctor(strict=True).check_step(1, {**HEALTHY, "skipped_updates": 1})


# -- reward hacking -----------------------------------------------------------------------------------------------


def _train(doctor: Doctor, first_step: int, rewards: list[float]) -> None:
    for i, r in enumerate(rewards):
        doctor.check_step(first_step + i, {**HEALTHY, "reward_mean": r})


def test_reward_hacking_detected():
    doctor = Doctor(hacking_drop=0.05)
    _train(doctor, 1, [0.2, 0.4])
    assert doctor.check_eval(2, 0.50) == []  # the first evaluation has nothing to compare with
    assert doctor.last_eval == (pytest.approx(0.3), 0.50)
    _train(doctor, 3, [0.6, 0.8])  # mean 0.7 > 0.3
    (warning,) = doctor.check_eval(4, 0.40)  # 0.50 -> 0.40: fell by 0.10 > 0.05
    assert "reward hacking" in warning and "0.300 -> 0.700" in warning and "0.500 -> 0.400" in warning


def test_small_accuracy_drop_is_not_hacking():
    doctor = Doctor(hacking_drop=0.05)
    _train(doctor, 1, [0.2])
    doctor.check_eval(1, 0.50)
    _train(doctor, 2, [0.9])
    assert doctor.check_eval(2, 0.47) == []  # fell by 0.03 < 0.05


def test_accuracy_drop_with_falling_reward_is_not_hacking():
    doctor = Doctor(hacking_drop=0.05)
    _train(doctor, 1, [0.8])
    doctor.check_eval(1, 0.50)
    _train(doctor, 2, [0.3])
    assert doctor.check_eval(2, 0.10) == []


def test_hacking_compares_consecutive_evaluations():
    doctor = Doctor(hacking_drop=0.05)
    _train(doctor, 1, [0.1])
    doctor.check_eval(1, 0.9)
    _train(doctor, 2, [0.2])
    doctor.check_eval(2, 0.88)  # small drop: fine, and now the baseline is (0.2, 0.88)
    _train(doctor, 3, [0.3])
    assert len(doctor.check_eval(3, 0.80)) == 1  # 0.88 -> 0.80 with reward 0.2 -> 0.3


def test_hacking_strict_stops():
    doctor = Doctor(strict=True, hacking_drop=0.05)
    _train(doctor, 1, [0.1])
    doctor.check_eval(1, 0.9)
    _train(doctor, 2, [0.5])
    with pytest.raises(DoctorStop, match="reward hacking"):
        doctor.check_eval(2, 0.5)


def test_eval_without_training_steps_does_not_crash():
    doctor = Doctor()
    assert doctor.check_eval(0, 0.5) == []
    assert doctor.check_eval(0, 0.1) == []  # no reward to compare: no verdict


# -- state round trip -----------------------------------------------------------------------------------------


def test_state_round_trip_continues_streaks_and_remembers_warnings():
    doctor = Doctor(patience=3)
    doctor.check_step(1, _bad({"truncation_rate": 1.0, "format_rate": 0.0, "reward_mean": 0.25}))
    doctor.check_step(2, _bad({"truncation_rate": 1.0, "format_rate": 0.0, "reward_mean": 0.75}))
    doctor.check_eval(2, 0.6)
    _train(doctor, 3, [0.9])
    doctor.check_step(4, {**HEALTHY, "loss": math.nan})
    state = json.loads(json.dumps(doctor.state()))  # plain data (it is stored in the checkpoint)

    resumed = Doctor(patience=3)
    resumed.load(state)
    assert resumed.state() == doctor.state()
    assert resumed.last_eval == doctor.last_eval and isinstance(resumed.last_eval, tuple)
    assert resumed.rewards_since_eval == [0.9]
    # the streaks (here reset by the healthy steps 3 and 4) and the NaN warning carry over
    assert resumed.streaks == {"truncation": 0, "zero_variance": 0, "format": 0, "mismatch": 0, "timeouts": 0,
                               "tool_collapse": 0, "tool_errors": 0}
    assert resumed.warned == {"nan4"}


def test_resumed_doctor_behaves_like_the_uninterrupted_one():
    bad = _bad({"truncation_rate": 1.0, "reward_mean": 0.5})
    a = Doctor(patience=3)
    b = Doctor(patience=3)
    a.check_step(1, bad)
    a.check_step(2, bad)
    b.load(json.loads(json.dumps(a.state())))
    assert len(b.check_step(3, bad)) == 1  # the streak of 2 continued to 3
    assert len(a.check_step(3, bad)) == 1
    assert b.state() == a.state()
    assert b.check_step(4, bad) == []  # and the warning is remembered


def test_load_of_empty_last_eval():
    doctor = Doctor()
    doctor.load(Doctor().state())
    assert doctor.last_eval is None and doctor.warned == set()


def test_most_programs_timing_out_is_reported():
    doctor = Doctor(patience=2)
    slow = {**HEALTHY, "execution_timeout_rate": 0.75, "execution_crash_rate": 0.1}
    assert doctor.check_step(1, slow) == []
    warnings = doctor.check_step(2, slow)
    assert len(warnings) == 1 and "time out in the sandbox" in warnings[0]
    assert doctor.check_step(3, {**HEALTHY, "execution_timeout_rate": 0.5}) == []  # half is not most


def test_state_of_a_doctor_saved_before_the_timeout_check_loads():
    doctor = Doctor(patience=2)
    doctor.load({"streaks": {"truncation": 0, "zero_variance": 0, "format": 0}, "last_eval": None,
                 "rewards_since_eval": [], "warned": []})
    doctor.check_step(1, {**HEALTHY, "execution_timeout_rate": 1.0})
    assert doctor.streaks["timeouts"] == 1

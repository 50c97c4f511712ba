"""The `r1kit` command, in-process: a user's mistake is one line on stderr and status 2, never a traceback."""

import pytest

from r1kit.cli.main import main


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("r1kit: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "flags, mentions",
    [
        (["--k", "0"], "--k"),
        (["--n", "-3"], "--n"),
        (["--n", "ten"], "--n"),
        (["--top-p", "5"], "--top-p"),
        (["--temperature", "hot"], "--temperature"),
        (["--split", "validation"], "--split"),
    ],
)
def test_bad_flag_value_exits_2_with_one_line(flags, mentions, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "m", "--task", "arithmetic", *flags])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert mentions in _one_error_line(err)
    assert out == ""


@pytest.mark.parametrize("argv", [[], ["train"], ["eval", "--task", "arithmetic"], ["cost"]])
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err)


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    assert "--model" in capsys.readouterr().out


def test_missing_model_dir(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["eval", "--model", str(missing), "--task", "arithmetic", "--n", "2"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no-such-model" in line and "does not exist" in line


def test_model_dir_without_config(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--task", "arithmetic"]) == 2
    assert "config.json" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "task, mentions",
    [("nope", "unknown task"), ("arithmetic:bogus=1", "arithmetic"), ("arithmetic:digits=99", "digits")],
)
def test_bad_task(tmp_path, task, mentions, capsys):
    assert main(["eval", "--model", str(tmp_path), "--task", task]) == 2
    assert mentions in _one_error_line(capsys.readouterr().err)


def test_cost_paper(capsys):
    assert main(["cost", "paper"]) == 0
    out = capsys.readouterr().out
    for figure in ("101K", "$202K", "147K", "$294K"):
        assert figure in out


def test_cost_paper_at_another_price(capsys):
    assert main(["cost", "paper", "--price", "1"]) == 0
    out = capsys.readouterr().out
    assert "$147K" in out and "$294K" not in out


def test_cost_of_a_missing_run(capsys):
    assert main(["cost", "/nonexistent"]) == 2
    assert "/nonexistent" in _one_error_line(capsys.readouterr().err)


def test_cost_of_a_dir_without_ledger(tmp_path, capsys):
    assert main(["cost", str(tmp_path)]) == 2
    assert "ledger" in _one_error_line(capsys.readouterr().err)


def test_cost_probe_refreshes_the_cpu_peak(monkeypatch, capsys, tmp_path):
    from r1kit.cost import devices

    monkeypatch.setattr(devices, "DEFAULT_CACHE_DIR", tmp_path)
    monkeypatch.setattr(devices, "measure_matmul_flops", lambda *a, **k: 2.5e11)
    assert main(["cost", "probe"]) == 0
    assert "250.0 GFLOP/s" in capsys.readouterr().out


def test_eval_backend_vllm_without_vllm_is_one_line(tiny_model, tokenizer, tmp_path, capsys):
    from r1kit.models.modeling import save_model
    from r1kit.rollout import vllm_installed

    if vllm_installed():
        pytest.skip("vLLM is installed here (tests/test_vllm.py runs the backend)")
    save_model(tiny_model, tokenizer, tmp_path / "m")
    code = main(["eval", "--model", str(tmp_path / "m"), "--task", "arithmetic", "--n", "2", "--k", "1",
                 "--backend", "vllm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "make vllm-venv" in err[0]

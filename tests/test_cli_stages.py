"""`r1kit generate | sft | distill | run` in-process: flags reach the configs; a user's mistake is one line, status 2."""

import json
import random

import pytest

from r1kit.cli.main import main
from r1kit.models.modeling import new_model, save_model, train_tokenizer
from r1kit.tasks import get_task


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("r1kit: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A micro model (the 'teacher') and 20 rows of worked solutions that name it in their provenance."""
    root = tmp_path_factory.mktemp("cli-stages")
    task = get_task("arithmetic")
    rng = random.Random(0)
    problems = task.problems("train", 20, seed=3)
    texts = [task.prompt(p) + " " + task.solution(p, rng) for p in problems]
    tok = train_tokenizer(texts, 512)
    teacher = root / "teacher"
    save_model(new_model("micro", tok, seed=0), tok, teacher)
    rows = root / "rows.jsonl"
    with rows.open("w") as f:
        for p in problems:
            f.write(json.dumps({"prompt": task.prompt(p), "completion": " " + task.solution(p, rng),
                                "provenance": {"teacher": str(teacher), "task": "arithmetic"}}) + "\n")
    return {"root": root, "teacher": teacher, "rows": rows}


@pytest.mark.parametrize(
    "argv, mentions",
    [
        (["sft", "--data", "nowhere.jsonl", "--out", "x", "--student-size", "micro"], "nowhere.jsonl"),
        (["distill", "--teacher", "t", "--out", "x", "--method", "soft"], "--method"),
        (["generate", "--model", "m", "--out", "x", "--k", "0"], "--k"),
        (["run", "no-such-recipe.toml"], "no-such-recipe.toml"),
        (["sft", "--data", "d", "--out", "x", "--bogus=1"], "bogus"),
    ],
)
def test_mistakes_are_one_line(argv, mentions, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _status(argv) == 2
    assert mentions in _one_error_line(capsys.readouterr().err)


def _status(argv) -> int:
    """The exit status, whether the command returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_sft_flags_reach_the_run(assets, tmp_path, capsys):
    out = tmp_path / "sft"
    code = main(["sft", "--data", str(assets["rows"]), "--out", str(out), "--student-size", "micro", "--epochs", "1",
                 "--batch-size", "10", "--lr", "0.002", "--eval-n", "2", "--eval-k", "1", "--eval.max_new_tokens=8"])
    assert code == 0
    cfg = json.loads((out / "run.json").read_text())["config"]
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["student_size"]) == (1, 10, 0.002, "micro")
    assert cfg["tokenizer"] == "" and cfg["eval"]["n"] == 2 and cfg["eval"]["max_new_tokens"] == 8
    assert (out / "model" / "config.json").is_file()
    assert "SFT" in capsys.readouterr().out


def test_distill_logit_with_data(assets, tmp_path):
    out = tmp_path / "kd"
    code = main(["distill", "--teacher", str(assets["teacher"]), "--student-size", "micro", "--method", "logit",
                 "--data", str(assets["rows"]), "--out", str(out), "--epochs", "1", "--batch-size", "10",
                 "--eval-n", "2", "--eval-k", "1", "--eval.max_new_tokens=8"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "distill" and run["config"]["method"] == "logit" and run["steps"] == 2
    assert (out / "model" / "model.safetensors").is_file()


def test_distill_sequence_is_sft_on_the_traces(assets, tmp_path):
    """--method sequence with --data: plain SFT of a fresh student on the teacher's tokenizer (no generation)."""
    out = tmp_path / "seq"
    code = main(["distill", "--teacher", str(assets["teacher"]), "--student-size", "micro", "--method", "sequence",
                 "--data", str(assets["rows"]), "--out", str(out), "--epochs", "1", "--batch-size", "10",
                 "--eval-n", "2", "--eval-k", "1", "--eval.max_new_tokens=8"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "sft" and run["config"]["student_size"] == "micro"
    assert run["config"]["tokenizer"] == str(assets["teacher"]) and run["config"]["data"] == str(assets["rows"])
    assert not (out / "traces.jsonl").exists()

"""Trackers (reporting/trackers.py through runlog.MetricsLog): `[log] report_to`, names from the run directory,
wandb's mode, tables from JSONL lines; trackio for real on disk (its SQLite read back: scalars, tables, the final
evaluation and cost, the config; a resumed run continuing its tracker run; an RL run and a pipeline's
--log.report_to), with every connection off this machine refused; wandb offline (its run file read back)."""

import json
import socket
import struct
import sys

import pytest

from r1kit.config import LogConfig, build
from r1kit.cost.ledger import Ledger
from r1kit.errors import UserError
from r1kit.reporting import trackers
from r1kit.reporting.runlog import MetricsLog
from r1kit.reporting.trackers import run_names, table_of, wandb_mode

SAMPLES = {"question": "12+7", "answer": "19",
           "samples": [{"completion": "<think>12+7=19</think> <answer>19</answer>", "reward": 2.0, "finished": True},
                       {"completion": "<answer>18</answer>", "reward": 1.0, "finished": True}]}


# -- what needs no tracker installed ------------------------------------------------------------------------------


def test_log_config_names_trackers_and_refuses_others():
    assert LogConfig().report_to == ["tensorboard"]
    assert build(LogConfig, {"report_to": "tensorboard,trackio,wandb"}).report_to == ["tensorboard", "trackio", "wandb"]
    assert build(LogConfig, {"report_to": ""}).report_to == []
    with pytest.raises(UserError, match="unknown tracker 'mlflow'"):
        build(LogConfig, {"report_to": ["mlflow"]})
    with pytest.raises(UserError, match="twice"):
        LogConfig(report_to=["trackio", "trackio"])


def test_every_loop_config_takes_a_log_section():
    from r1kit.algo.rl_config import RLConfig
    from r1kit.loops.base import BaseConfig
    from r1kit.loops.distill import DistillConfig
    from r1kit.loops.generate import GenerateConfig
    from r1kit.loops.sft import SFTConfig

    for cls, needed in [(BaseConfig, {}), (RLConfig, {}), (GenerateConfig, {}), (SFTConfig, {"data": "d", "out": "o"}),
                        (DistillConfig, {"teacher": "t", "out": "o", "data": "d"})]:
        cfg = build(cls, {**needed, "log": {"report_to": "trackio", "project": "p"}})
        assert cfg.log == LogConfig(report_to=["trackio"], project="p", name=""), cls


def test_names_come_from_the_run_directory(tmp_path):
    assert run_names(tmp_path / "demo" / "r1-zero", LogConfig()) == ("demo", "r1-zero")
    assert run_names(tmp_path / "demo" / "r1-zero", LogConfig(project="mine", name="try-3")) == ("mine", "try-3")


def test_wandb_is_offline_unless_configured(tmp_path):
    empty = tmp_path / "netrc"
    empty.write_text("")
    assert wandb_mode({"NETRC": str(empty)}) == "offline"
    assert wandb_mode({"NETRC": str(empty), "WANDB_MODE": "disabled"}) == "disabled"
    assert wandb_mode({"NETRC": str(empty), "WANDB_API_KEY": "k" * 40}) == "online"
    logged_in = tmp_path / "netrc-logged-in"
    logged_in.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    logged_in.chmod(0o600)
    assert wandb_mode({"NETRC": str(logged_in)}) == "online"
    assert wandb_mode({"NETRC": str(logged_in), "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"


def test_a_samples_line_becomes_a_table_of_its_completions():
    columns, rows = table_of({"step": 3, **SAMPLES})
    assert columns == ["step", "question", "answer", "completion", "reward", "finished"]
    assert rows == [[3, "12+7", "19", SAMPLES["samples"][0]["completion"], 2.0, True],
                    [3, "12+7", "19", "<answer>18</answer>", 1.0, True]]
    assert table_of({"step": 1, "loss": 0.5}) == (["step", "loss"], [[1, 0.5]])


def test_no_tracker_writes_the_jsonl_alone(tmp_path):
    log = MetricsLog(tmp_path / "run", log=LogConfig(report_to=[]))
    log.log(1, {"loss": 1.0})
    log.finish(1, {"pass@1": 0.5})
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["metrics.jsonl"]


def test_a_disabled_log_opens_no_tracker(tmp_path):
    log = MetricsLog(tmp_path / "run", enabled=False, log=LogConfig(report_to=["trackio", "wandb"]))
    log.log(1, {"loss": 1.0})
    log.finish(1)
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_is_not_installed_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(UserError, match=r"pip install 'r1kit\[wandb\]'"):
        MetricsLog(tmp_path / "run", log=LogConfig(report_to=["wandb"]))


def test_tensorboard_gets_scalars_and_tables_as_text(tmp_path):
    run = tmp_path / "run"
    log = MetricsLog(run, log=LogConfig())
    log.table_log("samples.jsonl").log(2, SAMPLES)
    log.log(2, {"reward_mean": 1.5, "note": "text"})
    log.close()
    data = b"".join(p.read_bytes() for p in (run / "tb").glob("events.out.tfevents.*"))
    assert b"reward_mean" in data and b"samples/text_summary" in data and b"12+7" in data
    assert json.loads((run / "samples.jsonl").read_text())["samples"][1]["reward"] == 1.0


# -- trackio, for real, on disk -----------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every connection to anything but this machine (the Hub, a tracker's server) fails the test."""
    real_connect = socket.socket.connect
    tried = []

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            tried.append(address)
            raise OSError(f"test: no network ({address})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for name in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_DATASET_ID", "TRACKIO_BUCKET_ID", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield tried
    assert not tried, f"something tried to reach {tried}"


@pytest.fixture
def trackio_dir(tmp_path, monkeypatch, no_network):
    """trackio storing under tmp_path (TRACKIO_DIR, read when trackio is first imported, and its modules' copies)."""
    folder = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(folder))
    trackio = pytest.importorskip("trackio", reason="trackio is an optional extra: pip install 'r1kit[trackio]'")
    for name, module in list(sys.modules.items()):
        if name.startswith("trackio") and hasattr(module, "TRACKIO_DIR"):
            monkeypatch.setattr(module, "TRACKIO_DIR", folder)
    return trackio


def _trackio_logs(project: str, run: str) -> list[dict]:
    from trackio.sqlite_storage import SQLiteStorage

    return SQLiteStorage.get_logs(project, run)


def _ledger(run_dir) -> None:
    """A cost ledger with one phase: 10 s on a 1 TFLOP/s device at $3.60/h and 100 W."""
    Ledger(run_dir, "rl", "cpu", 1, 1e12, 3.6, 100.0).record("training", 10.0, trained_tokens=1000, flops=2e12)


def test_trackio_stores_scalars_tables_evaluation_and_cost(tmp_path, trackio_dir):
    run = tmp_path / "runs" / "demo" / "r1-zero"
    log = MetricsLog(run, log=LogConfig(report_to=["trackio"]), config={"optim": {"lr": 0.001}, "steps": 3})
    samples = log.table_log("samples.jsonl")
    for step in (1, 2, 3):
        log.log(step, {"reward_mean": 0.5 * step, "loss": 1.0 / step, "finished": True, "phase": "train"})
    samples.log(3, SAMPLES)
    _ledger(run)
    log.finish(3, {"pass@1": 0.25, "problems": 8})

    logs = _trackio_logs("demo", "r1-zero")
    scalars = {row["step"]: row for row in logs if "reward_mean" in row}
    assert sorted(scalars) == [1, 2, 3]
    assert [scalars[s]["reward_mean"] for s in (1, 2, 3)] == [0.5, 1.0, 1.5]
    assert scalars[2]["loss"] == 0.5
    assert not any("finished" in row or "phase" in row for row in logs)  # booleans and text stay in the JSONL
    table = next(row for row in logs if "samples" in row)
    assert table["step"] == 3 and table["samples"]["_type"] == "trackio.table"
    assert table["samples"]["_value"] == [
        {"step": 3, "question": "12+7", "answer": "19", **SAMPLES["samples"][0]},
        {"step": 3, "question": "12+7", "answer": "19", **SAMPLES["samples"][1]}]
    final = {k: v for row in logs if row["step"] == 3 for k, v in row.items()}
    assert final["eval/pass@1"] == 0.25 and final["eval/problems"] == 8
    assert final["cost/wall_s"] == 10.0 and final["cost/flops"] == 2e12
    assert final["cost/usd"] == pytest.approx(0.01) and final["cost/energy_j"] == pytest.approx(1000.0)
    assert final["cost/mfu"] == pytest.approx(0.2) and final["cost/tokens"] == 1000
    from trackio.sqlite_storage import SQLiteStorage

    config = SQLiteStorage.get_run_config("demo", "r1-zero")
    assert config["optim"] == {"lr": 0.001} and config["steps"] == 3
    assert (tmp_path / "trackio" / "demo.db").is_file()


def test_trackio_resumed_run_continues_its_run_and_a_fresh_one_starts_another(tmp_path, trackio_dir):
    from trackio.sqlite_storage import SQLiteStorage

    run = tmp_path / "proj" / "rl"
    first = MetricsLog(run, log=LogConfig(report_to=["trackio"]))
    first.log(1, {"loss": 1.0})
    first.close()  # killed after step 1
    resumed = MetricsLog(run, log=LogConfig(report_to=["trackio"]), resumed=True)
    resumed.log(2, {"loss": 0.5})
    resumed.close()
    assert len(SQLiteStorage.get_run_records("proj")) == 1
    assert [row["loss"] for row in _trackio_logs("proj", "rl")] == [1.0, 0.5]
    again = MetricsLog(run, log=LogConfig(report_to=["trackio"]))
    again.log(1, {"loss": 2.0})
    again.close()
    assert len(SQLiteStorage.get_run_records("proj")) == 2


@pytest.mark.slow
def test_an_rl_run_reports_to_trackio(tmp_path, trackio_dir, tokenizer, tiny_config, torch_threads):
    """`r1kit rl --log.report_to=trackio` on a tiny model: step metrics, held-out evaluations, sample tables, cost."""
    from r1kit.algo.rl_config import RLConfig
    from r1kit.loops.rl import run_rl
    from r1kit.models.modeling import new_model, save_model

    base = tmp_path / "base"
    save_model(new_model(tiny_config, tokenizer, seed=0), tokenizer, base)
    out = tmp_path / "runs" / "tracked" / "rl"
    cfg = build(RLConfig, {"model": str(base), "out": str(out), "steps": 2, "train_problems": 16, "eval_every": 1,
                           "checkpoint_every": 2, "rollout": {"prompts_per_step": 2, "group_size": 2,
                                                              "max_new_tokens": 8},
                           "eval": {"n": 2, "k": 1, "max_new_tokens": 8},
                           "log": {"report_to": "trackio,tensorboard"}})
    run_rl(cfg, progress=False, ledger_factory=lambda d, stage, mc: Ledger(d, stage, "cpu", 1, 1e12, 1.0, 10.0, model_config=mc))
    logs = _trackio_logs("tracked", "rl")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    by_step = {}
    for row in logs:
        by_step.setdefault(row["step"], {}).update(row)
    for line in metrics:  # every number of metrics.jsonl is in trackio at its step
        for key, value in line.items():
            if isinstance(value, float) and key != "step":
                assert by_step[line["step"]][key] == pytest.approx(value), (line["step"], key)
    assert "eval/pass@1" in by_step[0] and "eval/pass@1" in by_step[1]  # before RL, and every eval_every
    final = json.loads((out / "eval.json").read_text())["metrics"]
    assert by_step[2]["eval/pass@1"] == final["pass@1"] and by_step[2]["cost/flops"] > 0
    tables = [row for row in logs if "samples" in row]
    assert [row["step"] for row in tables] == [1, 2]
    written = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in tables[1]["samples"]["_value"]] == [s["completion"] for s in written[1]["samples"]]
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_a_pipeline_takes_log_overrides_and_changing_them_redoes_nothing(tmp_path):
    from r1kit.cli.commands import log_overrides
    from r1kit.cli.pipeline import _same_config, load_pipeline

    recipe = tmp_path / "r.toml"
    recipe.write_text('[log]\nreport_to = ["tensorboard"]\nproject = "mine"\n\n'
                      '[[stage]]\nname = "base"\nkind = "base"\nsteps = 2\n\n'
                      '[[stage]]\nname = "gen"\nkind = "generate"\nmodel = "base"\nn = 2\n'
                      '[stage.log]\nname = "traces"\n')
    assert log_overrides(["--log.report_to=trackio,wandb"]) == {"report_to": "trackio,wandb"}
    with pytest.raises(UserError, match="--log.KEY=VALUE"):
        log_overrides(["--steps=3"])
    plain = load_pipeline(recipe, tmp_path / "out")
    tracked = load_pipeline(recipe, tmp_path / "out", {"report_to": "trackio"})
    assert plain.stages[0].config["log"] == {"report_to": ["tensorboard"], "project": "mine", "name": ""}
    assert tracked.stages[0].config["log"]["report_to"] == ["trackio"]
    assert tracked.stages[1].config["log"] == {"report_to": ["trackio"], "project": "mine", "name": "traces"}
    assert _same_config(plain.stages[0].config, tracked.stages[0])
    with pytest.raises(UserError, match="unknown tracker"):
        load_pipeline(recipe, tmp_path / "out", {"report_to": "mlflow"})


# -- wandb, offline -----------------------------------------------------------------------------------------------


def _wandb_records(path) -> list:
    """The records of a .wandb run file: W&B's LevelDB-style log (7-byte file header, then 32 KiB blocks of
    chunks with a 7-byte header: crc32, length, type 1 full | 2 first | 3 middle | 4 last) of protobuf Records."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:
            break
    return records


def test_wandb_offline_stores_history_tables_and_summary(tmp_path, monkeypatch, no_network):
    wandb = pytest.importorskip("wandb", reason="wandb is an optional extra: pip install 'r1kit[wandb]'")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "netrc").write_text("")
    for name, value in {"NETRC": tmp_path / "netrc", "WANDB_CONFIG_DIR": tmp_path / "cfg",
                        "WANDB_CACHE_DIR": tmp_path / "cache", "WANDB_DATA_DIR": tmp_path / "data",
                        "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, str(value))
    run = tmp_path / "demo" / "sft"
    try:
        log = MetricsLog(run, log=LogConfig(report_to=["wandb"]), config={"lr": 0.001})
        for step in (1, 2):
            log.log(step, {"loss": 1.0 / step})
        log.table_log("samples.jsonl").log(2, SAMPLES)
        _ledger(run)
        log.finish(2, {"pass@1": 0.75})
    finally:
        wandb.teardown()
    (folder,) = (run / "wandb").glob("offline-run-*")
    run_id = (run / "wandb" / trackers.Wandb.ID_FILE).read_text().strip()
    assert folder.name.endswith(run_id)
    records = _wandb_records(folder / f"run-{run_id}.wandb")
    header = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (header.project, header.display_name) == ("demo", "sft")
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    steps = {row["_step"]: row for row in history}
    assert steps[1]["loss"] == 1.0 and steps[2]["loss"] == 0.5
    assert steps[2]["eval/pass@1"] == 0.75 and steps[2]["cost/usd"] == pytest.approx(0.01)
    assert (steps[2]["samples/_type"], steps[2]["samples/nrows"], steps[2]["samples/ncols"]) == ("table-file", 2, 6)
    (table,) = (folder / "files" / "media" / "table").glob("samples_2_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"] == ["step", "question", "answer", "completion", "reward", "finished"]
    assert [row[3] for row in content["data"]] == [s["completion"] for s in SAMPLES["samples"]]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in r.summary.update})
    assert summary["eval/pass@1"] == 0.75

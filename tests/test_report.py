"""The run report: SVG charts by hand (milliseconds), then a pipeline directory (a hand-written base stage and a
real 3-step RL stage) whose report is opened in headless Chromium, which must render its plots and tables.

Chromium is Debian's `chromium` (.ci/run installs it); without it the browser tests skip and say why."""

import json
import re
import shutil
import struct
import subprocess

import pytest

from r1kit.algo.rl_config import AlgoConfig, RLConfig, RolloutConfig
from r1kit.cli.main import main
from r1kit.config import EvalConfig
from r1kit.cost.ledger import Ledger
from r1kit.reporting.modelcard import cost_from_ledger, lineage_of, write_model_card
from r1kit.reporting.report import build_report, line_chart, nice_ticks, write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (apt-get install -y --no-install-recommends chromium)",
)


def test_nice_ticks():
    assert nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(3, 117) == [0, 50, 100, 150]
    assert nice_ticks(0.42, 0.71) == [0.4, 0.5, 0.6, 0.7, 0.8]
    flat = nice_ticks(0.5, 0.5)  # a constant series still gets a range
    assert flat[0] < 0.5 < flat[-1]


def test_line_chart_draws_every_point():
    svg = line_chart([(0, 1.0), (1, 2.0), (2, float("nan")), (3, 1.5)], "reward <mean>", "reward_mean")
    (path,) = re.findall(r'<path class="series" d="([^"]+)"', svg)
    assert path.count("M") == 1 and path.count("L") == 2  # the NaN is skipped
    assert svg.count("<circle") == 3 and "reward &lt;mean&gt;" in svg and 'data-metric="reward_mean"' in svg
    assert "no data" in line_chart([], "empty", "x")


# ---- a pipeline directory ---------------------------------------------------------------------------------

EVAL = {
    "task": "arithmetic",
    "settings": {
        "split": "test",
        "n": 50,
        "k": 4,
        "temperature": 0.6,
        "top_p": 0.95,
        "max_new_tokens": 64,
        "batch_size": 128,
        "seed": 0,
    },
    "metrics": {
        "pass@1": 0.42,
        "pass@1_ci95": 0.08,
        "pass@4": 0.7,
        "cons@4": 0.5,
        "format_rate": 0.9,
        "truncation_rate": 0.01,
        "mean_completion_tokens": 40.0,
        "problems": 50,
        "samples": 200,
    },
    "examples": [
        {
            "question": "12+30",
            "answer": "42",
            "completion": "<think>12+30=42</think> <answer>42</answer>",
            "correct": True,
        }
    ],
}


def write_base_stage(d):
    d.mkdir(parents=True)
    (d / "run.json").write_text(
        json.dumps(
            {
                "stage": "base",
                "config": {
                    "task": "arithmetic",
                    "size": "tiny",
                    "out": str(d),
                    "steps": 100,
                    "corpus": 1000,
                    "batch_size": 32,
                    "lr": 3e-3,
                    "seed": 0,
                },
            }
        )
    )
    rows = [{"step": s, "loss": 3.0 / (1 + s / 20)} for s in range(0, 100, 10)]
    rows += [{"step": 49, "eval/pass@1": 0.2}, {"step": 99, "eval/pass@1": 0.42}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "eval.json").write_text(json.dumps(EVAL))
    ledger = Ledger(d, "base", "cpu", 2, peak_flops=1e10, price_per_hour=0.04, power_w=5.0)
    ledger.record("training", 120.0, trained_tokens=10_000, flops=6e11)
    ledger.record("evaluation", 10.0, prompt_tokens=500, generated_tokens=4000, flops=2e10)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model, tokenizer):
    from r1kit.cost.devices import ledger_for
    from r1kit.loops.rl import run_rl
    from r1kit.models.modeling import save_model

    root = tmp_path_factory.mktemp("pipe") / "pipeline"
    write_base_stage(root / "base")
    save_model(tiny_model, tokenizer, root / "base")  # the base dir is the model dir
    cfg = RLConfig(
        model=str(root / "base"),
        out=str(root / "rl"),
        steps=3,
        train_problems=100,
        eval_every=2,
        rollout=RolloutConfig(prompts_per_step=2, group_size=4, max_new_tokens=16),
        algo=AlgoConfig(),
        eval=EvalConfig(n=4, k=2, max_new_tokens=16),
    )
    run_rl(cfg, progress=False, ledger_factory=lambda d, s, mc: ledger_for(d, s, model_config=mc))
    return root


def test_report_holds_charts_tables_and_lineage(pipeline):
    text = build_report(pipeline)
    assert "http://" not in text and "https://" not in text and "<script" not in text  # opens offline
    assert text.count('class="stage"') == 2  # one section per stage
    for metric in ("loss", "eval/pass@1", "reward_mean", "completion_len_mean", "kl"):
        assert f'data-metric="{metric}"' in text, metric
    for cls in ("lineage", "cost", "cost-phases", "eval", "estimate"):
        assert f'class="{cls}"' in text, cls
    assert "&lt;think&gt;12+30=42" in text  # completions are escaped, never markup
    assert "42.0% ± 8.0" in text and str(pipeline / "base") in text


def test_cli_report(pipeline, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(pipeline), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out and out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_model_card(pipeline):
    rl = pipeline / "rl"
    result = json.loads((rl / "eval.json").read_text())
    cost = cost_from_ledger(rl, upstream=[pipeline / "base"])  # the base model's cost counts too
    card = write_model_card(
        rl / "model", title="tiny R1-Zero", eval_result=result, cost_summary=cost, lineage=lineage_of(rl)
    )
    text = card.read_text()
    assert card.name == "README.md" and text.startswith("---\nlibrary_name: transformers")
    for needle in (
        "# tiny R1-Zero",
        "pass@1 (95% CI)",
        "cons@2",
        "| problems (n) x samples (k) | 4 x 2 |",
        "temperature 0.6",
        "| base | cpu x 2 |",
        "| rl | cpu x",
        "| total |",
        "**from**: " + str(pipeline / "base"),
    ):
        assert needle in text, needle


def _chromium(*args, tmp_path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
@needs_chromium
def test_chromium_renders_the_report(pipeline, tmp_path):
    report = write_report(pipeline)
    dom = _chromium("--dump-dom", report.as_uri(), tmp_path=tmp_path).stdout
    assert dom.count("<svg") >= 6 and dom.count('<path class="series"') >= 6
    assert dom.count("<table") >= 6 and "<think>" not in dom
    shot = tmp_path / "report.png"
    _chromium("--screenshot=" + str(shot), "--window-size=1200,2000", report.as_uri(), tmp_path=tmp_path)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    _chromium(
        "--screenshot=" + str(tmp_path / "blank.png"),
        "--window-size=1200,2000",
        blank.as_uri(),
        tmp_path=tmp_path,
    )
    assert _png_size(shot) == (1200, 2000)
    # a page of charts and tables compresses far worse than an empty one
    assert shot.stat().st_size > 5 * (tmp_path / "blank.png").stat().st_size


def test_model_card_states_the_formats_it_was_measured_with():
    from r1kit.reporting.modelcard import model_card

    formats = {"prompt_format": "chat", "answer_format": "boxed", "system": "",
               "instruction": "Put your final answer within \\boxed{}.", "prefill": ""}
    result = {"formats": formats, "settings": {"n": 2, "k": 1, "temperature": 0.6, "top_p": 0.95,
                                               "max_new_tokens": 8, "split": "test", "seed": 0},
              "metrics": {"pass@1": 0.5, "pass@1_ci95": 0.1, "format_rate": 1.0}}
    text = model_card(title="t", eval_result=result, cost_summary=None, lineage={"stage": "rl", "task": "arithmetic"})
    assert "chat template with the instruction \"Put your final answer within \\boxed{}.\"" in text
    assert "the final answer in the last `\\boxed{}`" in text and "<answer>" not in text
    assert ("r1kit eval --model PATH --task arithmetic --prompt-format chat --answer-format boxed "
            "--instruction 'Put your final answer within \\boxed{}.'`") in text
    raw = dict(formats, prompt_format="r1-zero-compact", answer_format="think-answer", instruction="")
    text = model_card(title="t", eval_result=dict(result, formats=raw), cost_summary=None, lineage={})
    assert "the `r1-zero-compact` template, it answers with reasoning inside `<think> </think>`" in text
    assert "recorded in the run's run.json" in model_card(title="t", eval_result=None, cost_summary=None, lineage={})

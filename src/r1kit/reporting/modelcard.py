"""Model cards: a README.md in a final model directory saying what the model scores and what it cost to train.

Hugging Face reads README.md as the model card (YAML front matter, then Markdown). r1kit's card holds the
evaluation as the R1 paper reports it (pass@1 over k samples with its 95% CI, cons@k, the sampling settings; see
../shared/r1-reference.md §6), the training cost per stage from the ledger (device-hours, dollars, energy) and
the lineage (what it was trained from, on what, with which settings). Pure Python.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r1kit.cost.ledger import read_ledger, summarize

CARD_FILE = "README.md"


def lineage_of(run_dir: str | Path) -> dict[str, Any]:
    """The lineage of a run from its run.json: stage, what it started from, what it wrote, task, key settings."""
    run_dir = Path(run_dir)
    data = json.loads((run_dir / "run.json").read_text())
    cfg, stage = data.get("config", {}), data.get("stage", "?")
    out: dict[str, Any] = {"stage": stage, "task": cfg.get("task", "?")}
    if stage == "rl":
        r, a, o = cfg.get("rollout", {}), cfg.get("algo", {}), cfg.get("optim", {})
        out.update(
            {
                "from": cfg.get("model"),
                "to": str(Path(cfg.get("out", run_dir)) / "model"),
                "algorithm": f"{a.get('variant', 'grpo')} (loss {a.get('loss_aggregation')}, advantages "
                f"{a.get('advantage_scale')})",
                "steps": cfg.get("steps"),
                "prompts per step x G": f"{r.get('prompts_per_step')} x {r.get('group_size')}",
                "max new tokens": r.get("max_new_tokens"),
                "temperature": r.get("temperature"),
                "lr": o.get("lr"),
                "beta (KL)": a.get("beta"),
                "mu x mini-batches": f"{a.get('mu')} x {a.get('mini_batches')}",
                "reward weights": cfg.get("reward", {}).get("weights"),
                "seed": cfg.get("seed"),
            }
        )
    elif stage == "base":
        out.update(
            {
                "from": f"scratch ({cfg.get('size')} Llama, trained tokenizer)",
                "to": cfg.get("out", str(run_dir)),
                "steps": cfg.get("steps"),
                "corpus (worked solutions)": cfg.get("corpus"),
                "batch size": cfg.get("batch_size"),
                "lr": cfg.get("lr"),
                "seed": cfg.get("seed"),
            }
        )
    else:
        out.update({k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool)) and v != ""})
    return {k: v for k, v in out.items() if v is not None}


def cost_from_ledger(run_dir: str | Path, upstream: list[str | Path] = ()) -> dict[str, Any]:
    """`ledger.summarize` of every ledger under run_dir, plus each stage's devices ("cpu x 2", "H800 x 8").

    `upstream`: directories of earlier stages (e.g. the base model an RL run started from) whose ledgers count
    too, where they have one, so that a card states what the whole lineage cost.
    """
    records = []
    for d in [*upstream, run_dir]:
        if (Path(d) / "ledger.jsonl").is_file() or Path(d) == Path(run_dir):
            records += read_ledger(d)
    out = summarize(records)
    out["devices"] = {}
    for r in records:
        out["devices"].setdefault(r["stage"], f"{r.get('device_kind')} x {r.get('device_count')}")
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def format_usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if x >= 1 else f"${x:.4f}" if x >= 1e-4 else "< $0.0001" if x > 0 else "$0"


def eval_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) pairs of an evaluation result, as the paper reports them."""
    m, s = result["metrics"], result["settings"]
    k = s["k"]
    ci = m.get("pass@1_ci95")
    ci_text = "" if ci is None or math.isnan(ci) else f" ± {100 * ci:.1f}"
    return [
        ("pass@1 (95% CI)", f"{100 * m['pass@1']:.1f}%{ci_text}"),
        (f"cons@{k}", _pct(m.get(f"cons@{k}"))),
        (f"pass@{k}", _pct(m.get(f"pass@{k}"))),
        ("format rate", _pct(m.get("format_rate"))),
        ("truncated", _pct(m.get("truncation_rate"))),
        ("mean completion tokens", f"{m.get('mean_completion_tokens', float('nan')):.1f}"),
        ("problems (n) x samples (k)", f"{m.get('problems', s['n'])} x {k}"),
        (
            "settings",
            f"{result.get('task', '?')} / {s['split']} split, temperature {s['temperature']}, "
            f"top-p {s['top_p']}, max {s['max_new_tokens']} new tokens, seed {s['seed']}",
        ),
    ]


def cost_rows(cost: Mapping[str, Any]) -> list[list[str]]:
    """One row per stage and a total: devices, wall, device-hours, MFU, energy (kWh) and dollars."""

    def row(name: str, t: Mapping[str, Any], devices: str) -> list[str]:
        usd = format_usd(t.get("usd"))
        kwh = "-" if t.get("energy_j") is None else f"{t['energy_j'] / 3.6e6:.4g}"
        return [
            name,
            devices,
            f"{t['wall_s'] / 3600:.3g}",
            f"{t['device_hours']:.4g}",
            _pct(t.get("mfu")),
            kwh,
            usd,
        ]

    devices = cost.get("devices", {})
    rows = [row(stage, t, devices.get(stage, "")) for stage, t in cost["stages"].items()]
    if len(rows) > 1:
        rows.append(row("total", cost["total"], ""))
    return rows


COST_HEADER = ["stage", "devices", "wall h", "device-h", "MFU", "energy kWh", "$"]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows])


_ANSWERS = {
    "think-answer": "reasoning inside `<think> </think>`, then the answer inside `<answer> </answer>` (R1-Zero)",
    "think-boxed": "reasoning that ends with `</think>`, then the final answer in `\\boxed{}` (R1)",
    "boxed": "the final answer in the last `\\boxed{}`",
    "gsm8k": "the final answer on a last line `#### N` (GSM8K)",
}


def _format_sentence(formats: Mapping) -> str:
    """How the model was prompted and how it answers, from an eval result's resolved formats."""
    if not formats:  # not evaluated: the formats are in the run's run.json
        return "Its prompt and answer formats are recorded in the run's run.json."
    fmt = formats.get("answer_format")
    prompt = formats.get("prompt_format")
    shown = {"chat": "its tokenizer's chat template", None: "the task's raw template"}.get(
        prompt, f"the `{prompt}` template" if prompt and "{question}" not in prompt else "a literal template")
    instruction = f' with the instruction "{formats["instruction"]}"' if formats.get("instruction") else ""
    return f"Prompted with {shown}{instruction}, it answers with {_ANSWERS.get(fmt, fmt)}."


def _format_flags(formats: Mapping) -> str:
    """The `r1kit eval` flags that reproduce the formats the card's numbers were measured with."""
    flags = ""
    for key, flag in (("prompt_format", "--prompt-format"), ("answer_format", "--answer-format"),
                      ("system", "--system"), ("instruction", "--instruction")):
        value = formats.get(key)
        if value:
            flags += f" {flag} {shlex.quote(value)}"
    return flags


def model_card(
    *, title: str, eval_result: Mapping | None, cost_summary: Mapping | None, lineage: Mapping[str, Any]
) -> str:
    """The card's Markdown text (see `write_model_card`)."""
    task = lineage.get("task", "")
    formats = (eval_result or {}).get("formats") or {}
    parts = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [r1kit, reasoning" + (", grpo" if lineage.get("stage") == "rl" else "") + "]",
        "---",
        "",
        f"# {title}",
        "",
        f"Trained with r1kit ({lineage.get('stage', '?')} stage) on the `{task}` task. {_format_sentence(formats)}",
        "",
        "## Evaluation",
        "",
    ]
    if eval_result:
        parts += [
            "k samples per held-out problem; pass@1 is the mean correctness over the k samples (as the "
            "DeepSeek-R1 paper reports it), cons@k the majority vote.",
            "",
            _md_table(["metric", "value"], [list(r) for r in eval_rows(eval_result)]),
        ]
    else:
        parts.append("Not evaluated.")
    parts += ["", "## What training cost", ""]
    if cost_summary and cost_summary.get("stages"):
        parts += [
            "From the run's ledger (ledger.jsonl): device-hours = wall time x devices; dollars at the ledger's "
            "price per device-hour; energy from NVML where available, else device power x time (an estimate).",
            "",
            _md_table(COST_HEADER, cost_rows(cost_summary)),
        ]
    else:
        parts.append("No ledger was recorded.")
    parts += ["", "## Lineage", ""]
    parts += [f"- **{k}**: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in lineage.items()]
    parts += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        "```",
        "",
        "Evaluate it as the paper does: `r1kit eval --model PATH --task " + (task or "TASK") + _format_flags(formats)
        + "`.",
        "",
    ]
    return "\n".join(parts)


def write_model_card(
    model_dir: str | Path,
    *,
    title: str,
    eval_result: dict | None,
    cost_summary: dict | None,
    lineage: dict,
) -> Path:
    """Write MODEL_DIR/README.md: evaluation (pass@1 ± CI, cons@k, n, k, settings), training cost by stage
    (device-hours, $, energy; `cost_from_ledger(run_dir)`), and lineage (`lineage_of(run_dir)`)."""
    path = Path(model_dir) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CARD_FILE}.tmp")
    tmp.write_text(
        model_card(title=title, eval_result=eval_result, cost_summary=cost_summary, lineage=lineage)
    )
    tmp.replace(path)
    return path

#!/usr/bin/env bash
# Is `make demo` reproducible from a fresh clone? Two fresh clones of this repository's HEAD, each building its
# .venv from the locks (requirements/) and running `make demo`, one after the other; then every model's weights,
# every held-out evaluation and the metric columns of the closing summary table are compared (wall times and
# device-hours differ run to run and are left out). Exit 0 when all are identical.
#
#   bench/repro_demo.sh [WORKDIR]     # default /tmp/r1kit-repro; about twice `make demo` plus two venv builds
#
# The digits depend on torch's thread count: run both clones with the same OMP_NUM_THREADS (unset: all cores).
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=${1:-/tmp/r1kit-repro}
commit=$(git -C "$repo" rev-parse HEAD)
mkdir -p "$work"
for side in a b; do
    rm -rf "$work/$side"
    git clone -q "$repo" "$work/$side"
    git -C "$work/$side" checkout -q "$commit"
    echo "clone $side at $commit: make demo (log: $work/$side/demo.log)"
    (cd "$work/$side" && make demo > demo.log 2>&1)
done
"$work/a/.venv/bin/python" - "$work/a" "$work/b" <<'EOF'
import hashlib, json, re, sys
from pathlib import Path

a, b = (Path(p) for p in sys.argv[1:3])


def weights(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "runs/demo").rglob("model.safetensors")) if "checkpoints" not in p.parts}


TIMINGS = ("seconds", "tokens_per_s")  # of the evaluation's own run: they differ run to run


def evals(root):
    files = [p for p in sorted((root / "runs/demo/eval").glob("*.json")) if p.name not in ("stage.json", "done.json")]
    return {p.name: {k: v for k, v in json.loads(p.read_text())["metrics"].items() if k not in TIMINGS} for p in files}


def table(root):
    """The closing summary table's rows, stage to pass@k (wall, device-hours and dollars left out)."""
    text = (root / "demo.log").read_text()
    rows = [line for line in text[text.rindex("every model on the same held-out set"):].splitlines() if "|" in line]
    return [[cell.strip() for cell in re.split(r"\s*\|\s*", row.strip(" |"))][:7] for row in rows]


same = True
for name, get in (("weights", weights), ("evaluations", evals), ("summary table", table)):
    left, right = get(a), get(b)
    ok = left == right and bool(left)
    same &= ok
    print(f"{name}: {'identical' if ok else 'DIFFERENT'} ({len(left)} entries)")
for row in table(a):
    print(" | ".join(row))
sys.exit(0 if same else 1)
EOF

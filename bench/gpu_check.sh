#!/bin/bash
# GPU check (BENCHMARKS.md, "GPU check"): install r1kit from this working tree, then bench/gpu_check.py writes one
# JSON of what r1kit does on this GPU. About 8 minutes on one H200; every part has its own timeout.
#
#   make gpu-wheels                  # here, where pip reaches an index: r1kit's dependencies the GPU image lacks
#   bench/gpu_check.sh [OUT.json]    # there (default bench/results/gpu_check.json; scratch in runs/gpu_check)
#
# The GPU machine's python3 already holds CUDA torch, transformers, tokenizers, safetensors, tensorboard, tqdm,
# accelerate, peft and pytest; math-verify (with latex2sympy2_extended and antlr4-python3-runtime) travels as
# wheels in wheels/ (carry it: it is git-ignored). Nothing is fetched there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu_check.json}
WORK=${GPU_CHECK_WORK:-runs/gpu_check}
PY=${PYTHON:-python3}
SITE=/tmp/r1kit-site
mkdir -p "$WORK/logs"
start=$(date +%s)

{
    # 1. the carried wheels, into a folder of their own (the image's environment is left as it is)
    if compgen -G "wheels/*.whl" > /dev/null; then
        timeout 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" wheels/*.whl
        wheels_rc=$?
    else
        echo "gpu_check: no wheels/*.whl (run make gpu-wheels first): math-verify will be missing"
        wheels_rc=1
    fi
    # 2. r1kit itself, editable, no dependencies, no build isolation (which would fetch setuptools); if this
    #    fails, PYTHONPATH=src below still finds it and gpu_check.py runs it as `python3 -m r1kit`
    timeout 30 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
    r1kit_rc=$?
} > "$WORK/logs/install.log" 2>&1

export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
"$PY" - "$WORK/install.json" "$wheels_rc" "$r1kit_rc" "$(( $(date +%s) - start ))" "$WORK/logs/install.log" <<'PYEOF'
import glob, json, sys
path, wheels_rc, r1kit_rc, seconds, log = sys.argv[1:]
tail = open(log, errors="replace").read().splitlines()[-20:]
json.dump({"ok": wheels_rc == "0", "wheels_rc": int(wheels_rc), "editable_rc": int(r1kit_rc),
           "seconds": int(seconds), "wheels": sorted(p.split("/")[-1] for p in glob.glob("wheels/*.whl")),
           "log_tail": "\n".join(tail)}, open(path, "w"), indent=1)
PYEOF

# 3.-5. pytest -m cuda, the small base + 30 R1-Zero steps, the Qwen-shaped timings; the JSON after every part.
# gpu_check.py keeps to a 420 s deadline itself; the outer timeout only guards against a hang outside its parts.
timeout 450 "$PY" bench/gpu_check.py --out "$OUT" --work "$WORK" --install-json "$WORK/install.json"

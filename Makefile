# The two quick-start commands:  make train  (set up, train on digits)   make test  (set up, run the tests)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/digits

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup train test test-fast lint lce-env
setup: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

train: setup
	$(PY) train.py --config configs/digits.py --workdir $(WORKDIR)

test: setup lce-env  # the LCE environment (about 40 s) so that tests/test_lce.py runs too
	$(PY) -m ruff check .
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest tests

test-fast: setup  # everything but the tests marked slow: under 5 minutes on a 2-core CPU
	$(PY) -m ruff check .
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -m "not slow" tests

lint: setup
	$(PY) -m ruff check .

# Larq Compute Engine (TFLite with binary ops for ARM): its own venv (README, "ARM").
LCE_VENV := .venv-lce
lce-env: $(LCE_VENV)/.installed
$(LCE_VENV)/.installed: requirements-lce.txt
	$(PYTHON) -m venv $(LCE_VENV)
	$(LCE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LCE_VENV)/bin/python -m pip install --quiet -r requirements-lce.txt
	touch $@

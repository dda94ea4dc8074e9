# The two quick-start commands:  make train  (set up, train on digits)   make test  (set up, run the tests)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/digits

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup train test lint
setup: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

train: setup
	$(PY) train.py --config configs/digits.py --workdir $(WORKDIR)

test: setup
	$(PY) -m ruff check .
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest tests

lint: setup
	$(PY) -m ruff check .

# Two commands on a fresh machine:  `make demo` (the embedded default) and `make test`.
# Each creates a local virtualenv (.venv) and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch 2.13.0 is on these machines' disk; override TORCH_SPEC elsewhere.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# OpenMP threads spinning at barriers slow torch down badly on small shared machines
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-slow bench install clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m sdpo_lightning.demo

test: $(STAMP)
	$(PY) -m pytest --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

clean:
	rm -rf runs lightning_logs .pytest_cache

# Two commands on a fresh machine:  `make demo` (the embedded default) and `make test`.
# Each creates a local virtualenv (.venv) and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch 2.13.0 is on these machines' disk; override TORCH_SPEC elsewhere.
TORCH_SPEC ?= torch==2.13.0
# e.g. https://download.pytorch.org/whl/cu126 for that CUDA build (an extra index for torch only)
TORCH_INDEX ?=
# Exact versions of everything else (requirements/lock.sh regenerates it; docs/dependencies.md)
CONSTRAINTS := requirements/constraints.txt
PIP_INSTALL = -m pip install -q --disable-pip-version-check
STAMP := $(VENV)/.installed
# OpenMP threads spinning at barriers slow torch down badly on small shared machines
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-slow test-latest lock bench install clean

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) -c $(CONSTRAINTS) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) $(PIP_INSTALL) -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m sdpo_lightning.demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# Drift check, reporting only (not blocking, not run by .ci/run): a separate venv (.venv-latest)
# with TORCH_SPEC and the newest releases of the direct dependencies (no constraints, --upgrade),
# the suite run there and a summary printed (versions against the pin, failures). Exits 0 even
# when tests fail. LATEST_ARGS selects tests, e.g. LATEST_ARGS=tests/unit.
test-latest:
	PYTHON="$(PYTHON)" TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" requirements/test_latest.sh $(LATEST_ARGS)

# Re-resolve requirements/constraints.txt in a scratch venv (then run `make test` and commit it)
lock:
	PYTHON="$(PYTHON)" TORCH_SPEC="$(TORCH_SPEC)" requirements/lock.sh

clean:
	rm -rf runs lightning_logs .pytest_cache

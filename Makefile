# distml: `make demo` sets up and runs the quickstart job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup browser demo test test-fast bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0  # pinned first: the CPU build, not GBs of CUDA wheels
	$(PY) -m pip install -q -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/distml run jobs/quickstart.yaml

# The report's browser test needs Debian's Chromium; installed when missing and we may (root).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	   >/dev/null) || echo "make: no chromium; the headless-browser report test will be skipped"; }

test: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench-quick: $(STAMP)
	$(PY) -m benchmarks b7 --quick

clean:
	rm -rf $(VENV) runs .pytest_cache

# Two commands do all the set-up: `make run` and `make test` (each bootstraps .venv).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
ADDRESS ?= localhost

.PHONY: run test test-all lint bench clean-venv browser data

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

run: $(STAMP) data
	@echo "Explorer at http://$(ADDRESS):$(PORT)"
	$(PY) -m explorer.app.serve --server.headless true --server.port $(PORT) \
		--server.address $(ADDRESS) --browser.gatherUsageStats false

# Debian's chromium for the end-to-end browser test (Playwright's own download needs the internet).
# Best effort: without apt-get, or if the install fails, the test skips and says why.
CHROMIUM := /usr/bin/chromium
APT_LOG := $(or $(TMPDIR),/tmp)/explorer-apt-chromium.log
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "warning: $(CHROMIUM) missing and no apt-get here; the browser test will skip"; \
	else \
		echo "Installing Debian's chromium for the browser test (log: $(APT_LOG))"; \
		if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			>$(APT_LOG) 2>&1; then :; \
		else echo "warning: installing chromium failed (see $(APT_LOG)); the browser test will skip"; fi; \
	fi

# Debian's Fashion-MNIST (about 31 MB: 70,000 images in /usr/share/datasets/fashion-mnist/), the data set the
# page opens on. Best effort: without it the page opens on the embedded digits and those tests skip.
FASHION := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
APT_DATA_LOG := $(or $(TMPDIR),/tmp)/explorer-apt-fashion-mnist.log
data:
	@if [ -f $(FASHION) ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "note: Fashion-MNIST missing and no apt-get here; the page opens on digits"; \
	else \
		echo "Installing Debian's dataset-fashion-mnist (log: $(APT_DATA_LOG))"; \
		if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
			>$(APT_DATA_LOG) 2>&1; then :; \
		else echo "note: installing dataset-fashion-mnist failed (see $(APT_DATA_LOG)); the page opens on digits"; fi; \
	fi

test: $(STAMP) browser data lint
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP) browser data lint
	$(PY) -m pytest -q

# style (ruff) and the layer contracts (import-linter, configured in pyproject.toml): a layer imports only the
# layers below it, no module cycles within a layer, and the page's modules never import torch themselves; and
# the types (mypy, configured in pyproject.toml)
lint: $(STAMP)
	$(PY) -m ruff check explorer tests bench app.py
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m mypy

clean-venv:
	rm -rf $(VENV)

# Every table of docs/RESULTS.md, from the explorer's own runs (about 16 minutes cold on 2 cores).
bench: $(STAMP)
	$(PY) bench/run_all.py

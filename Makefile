# Two commands do all the set-up: `make run` and `make test` (each bootstraps .venv).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
ADDRESS ?= localhost

.PHONY: run test test-all lint bench clean-venv

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

run: $(STAMP)
	@echo "Explorer at http://$(ADDRESS):$(PORT)"
	$(PY) -m streamlit run app.py --server.headless true --server.port $(PORT) \
		--server.address $(ADDRESS) --browser.gatherUsageStats false

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check explorer tests bench app.py

clean-venv:
	rm -rf $(VENV)

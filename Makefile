# Quick start: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: demo test test-large lint clean

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not large"

test-large: $(STAMP)
	$(PY) -m pytest -q -m large

demo: $(STAMP)
	$(PY) datasets/make_synthetic.py --out $(DEMO)/data --items 400 --seed 0
	$(PY) datasets/convert_manifest.py --manifest $(DEMO)/data/manifest.jsonl \
	    --out $(DEMO)/shards

clean:
	rm -rf runs .pytest_cache

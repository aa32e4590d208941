# Sentinel: every target creates .venv and installs the project first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo
PYTEST := $(BIN)/python -m pytest

.PHONY: install demo test test-slow bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --dir $(DEMO)

test: lint
	$(PYTEST) -m "not slow" -q

test-slow: $(STAMP)
	$(PYTEST) -m slow -q

bench: $(STAMP)
	$(BIN)/python bench/eventlog.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/queuedir.py

lint: $(STAMP)
	$(BIN)/ruff check sentinel_daemon tests bench scripts events/golden
	$(BIN)/mypy sentinel_daemon

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Sentinel: every target creates .venv and installs the project first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo
PYTEST := $(BIN)/python -m pytest

.PHONY: install demo test test-slow test-faults bench lint clean report-check ops-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,dask]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --dir $(DEMO)

test: lint
	$(PYTEST) -m "not slow" -q

test-slow: $(STAMP)
	$(PYTEST) -m slow -q

# The fault suite at full scale (kill -9 torture, worker faults, poisoned jobs...); prints the
# fault table at the end. SENTINEL_FAULTS_SEED=N replays a seed. `make test` runs it short.
test-faults: $(STAMP)
	SENTINEL_FAULTS_SCALE=full $(PYTEST) tests/faults -m faults -q

bench: $(STAMP)
	$(BIN)/python bench/eventlog.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/queuedir.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/dask.py

# The demo job's report, rewritten by this code, copied ALONE (index.html, nothing beside it)
# into another folder and opened in headless Chromium: every image must render.
# Needs Chromium: apt-get install chromium.
report-check: $(STAMP)
	test -f $(DEMO)/state/jobs/*/job.yaml || $(BIN)/python scripts/demo.py --dir $(DEMO)
	for job in $(DEMO)/state/jobs/*/; do \
	  $(BIN)/sentinel report --force --state-dir $(DEMO)/state "$$(basename "$$job")" || exit 1; done
	$(BIN)/python scripts/check_report.py $(DEMO)/state/jobs/*/report/index.html --screenshot $(DEMO)/report.png

# Alert rules, their promtool tests and a live scrape of a real daemon (installs promtool
# into .venv/bin if it is missing: ops/install-promtool.sh).
$(BIN)/promtool: | $(STAMP)
	sh ops/install-promtool.sh $@

ops-check: $(STAMP) $(BIN)/promtool
	$(BIN)/promtool check rules ops/prometheus/sentinel-rules.yml
	$(BIN)/promtool test rules ops/prometheus/sentinel-rules.test.yml
	$(BIN)/promtool check config ops/prometheus/prometheus.example.yml
	$(BIN)/python scripts/ops_check.py --promtool $(BIN)/promtool

lint: $(STAMP)
	$(BIN)/ruff check sentinel_daemon tests bench scripts events/golden
	$(BIN)/ruff format --check sentinel_daemon tests bench scripts events/golden
	$(BIN)/mypy sentinel_daemon

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache .hypothesis

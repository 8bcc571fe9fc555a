# Two commands on a fresh machine with Python 3.11 and make:
#   make demo   creates .venv, installs rowpilot, runs the demo job on the bundled sample
#   make test   installs the dev extras, runs lint, types and every test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# The demo runs real work on the bundled local model: no API key, no download.
demo: $(VENV)/.installed
	mkdir -p demo-output
	$(BIN)/rowpilot run examples/demo/label.toml
	$(BIN)/rowpilot run examples/demo/embed.toml

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

# Branch coverage, CLI subprocesses and xdist workers included; the threshold only ever
# rises. Two workers on two cores: the CLI tests now run in-process, so the suite is bound
# by CPU, not by waiting on subprocesses, and more workers only contend; each file stays
# on one worker, so a module fixture (an example run) runs once. The 15 slowest tests are
# printed so that a test growing slow is seen in CI.
PYTEST_WORKERS ?= 2
test: lint
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile \
		--durations=15
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --skip-covered --fail-under=92

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .rowpilot demo-output

# Two commands a new user needs: `make dev` starts the stack, `make test` runs every test.
# Each creates .venv and installs the project on first use (and again when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: dev test unit e2e lint bench compare clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

dev: $(VENV)/.installed          ## redis, web, worker, beat, flower with reload (Procfile)
	honcho start

test: $(VENV)/.installed         ## unit tests, then e2e against real Redis/PostgreSQL/processes
	pytest

unit: $(VENV)/.installed         ## the fast suite only
	pytest -m "not e2e"

e2e: $(VENV)/.installed
	pytest -m e2e

lint: $(VENV)/.installed
	ruff check . && ruff format --check . && mypy stack app

clean:
	rm -rf $(VENV) .stack

# overfitting-suite: `make run` on a fresh machine, `make test` to check it. `make help` lists all.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OVERFIT := $(BIN)/overfit
STUDY ?= overfitting
ARGS ?=
MARK ?= not slow
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup setup-ray run ui server report test test-full bench lint clean

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: STUDY=$(STUDY) (run, report)  ARGS='...' (extra options for overfit run; its --set ones reach the report too)"
	@echo "  another store: MLFLOW_TRACKING_URI=... make run (reaches run, report and ui alike)"

setup: $(STAMP) ## Create .venv and install the suite with its dev tools (quick when up to date)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup-ray: setup ## Add the optional Ray extra (overfit run --executor ray)
	$(BIN)/python -m pip install --quiet -e '.[ray]'

run: setup ## Run a study (default: the headline overfitting study), then write its report
	@status=0; $(OVERFIT) run experiments/$(STUDY).yaml $(ARGS) || status=$$?; \
	sets=$$(echo '$(ARGS)' | grep -oE -- '--set[ =][^ ]+' | tr '\n' ' '); \
	if [ $$status -le 1 ]; then $(OVERFIT) report $(STUDY) $$sets || status=$$?; else exit $$status; fi; \
	echo; echo "report:  reports/$(STUDY)/index.html  (open it in a browser)"; \
	echo "runs:    make ui  (prints the study's address: its runs with their final accuracies; Views -> cells: mean over seeds)"; \
	exit $$status

ui: setup ## Serve the MLflow UI over the local store on http://127.0.0.1:5000; prints each study's address
	$(OVERFIT) ui

server: setup ## Serve a tracking server on http://127.0.0.1:5000 over the local store (for several invocations or machines)
	$(OVERFIT) server

report: setup ## Write reports/<study>/ from what MLflow holds (STUDY=name)
	$(OVERFIT) report $(STUDY)

test: setup ## Fast test suite (offline; a few minutes on 2 cores)
	SUITE_OFFLINE=1 $(BIN)/pytest -m "$(MARK)"

test-full: setup ## Every test, the slow real-data checks included
	SUITE_OFFLINE=1 $(BIN)/pytest -m "slow or not slow"

bench: setup ## The performance record (about 30 min): prints a table, writes bench/results/*.json
	SUITE_OFFLINE=1 $(BIN)/python bench/bench.py

lint: setup ## ruff (lint + format check) and mypy
	$(BIN)/ruff check suite tests bench
	$(BIN)/ruff format --check suite tests bench
	$(BIN)/mypy

clean: ## Remove generated reports, bench results, test artifacts, caches and .venv (keeps mlflow.db, mlartifacts/)
	find reports -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/results test-artifacts *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Quick start: `make run` serves the committed models on PORT (default 8000);
# `make test` sets up everything the tests need and runs them.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
HOST ?= 0.0.0.0
BIN := $(VENV)/bin

.PHONY: run test lint typecheck train-landmark ablation-landmark export-landmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Serving install: no torch (pyproject's base dependencies only).
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Tests train tiny models, so they need the training extra too.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@ $(VENV)/.serve

run: $(VENV)/.serve
	$(BIN)/uvicorn --factory service.main:create_app --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Reproduce the committed landmark model (tens of minutes on two CPU cores).
train-landmark: $(VENV)/.dev
	$(BIN)/python -m models.landmark.train --out runs/landmark-v1

ablation-landmark: $(VENV)/.dev
	$(BIN)/python -m models.landmark.ablation --out runs/ablation

export-landmark: $(VENV)/.dev
	$(BIN)/python -m models.landmark.export --checkpoint runs/landmark-v1/best.pt --version 1 \
		--history runs/landmark-v1/history.json --ablation runs/ablation/ablation.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

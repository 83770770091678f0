# make run  — install into .venv and run the whole funnel on the embedded synthetic dataset
# make test — install into .venv (with dev extras) and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_ARGS ?=

.PHONY: install install-dev run test lint bench-sasrec clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# CPU wheel first: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install torch==2.13.0

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e ".[dev,llm]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/thinkrec run --config configs/synthetic.yaml --with-llm $(RUN_ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest tests

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

bench-sasrec: $(VENV)/.installed
	$(BIN)/python benchmarks/sasrec_beauty.py

clean:
	rm -rf runs .pytest_cache

# make run     — install into .venv and run the funnel on the embedded synthetic dataset (no LLM stage; ≈ 5 min)
# make test    — install into .venv (with dev extras) and run the test suite
# make run-llm — the same run plus stage 4, the GR2 LLM re-ranker (Gemma 3 270M on CPU)
# make serve   — serve the demo run (runs/synthetic) at http://127.0.0.1:8000/
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_ARGS ?=

.PHONY: install install-dev run run-llm serve test lint bench-sasrec clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# CPU wheel first: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install torch==2.13.0

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e ".[dev,llm,serve]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/thinkrec run --config configs/synthetic.yaml $(RUN_ARGS)

run-llm: $(VENV)/.installed
	$(BIN)/thinkrec run --config configs/synthetic.yaml --with-llm $(RUN_ARGS)

serve: $(VENV)/.installed
	@test -f runs/synthetic/funnel.json || $(BIN)/thinkrec run --config configs/synthetic.yaml
	$(BIN)/thinkrec serve --run runs/synthetic $(SERVE_ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest tests

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

bench-sasrec: $(VENV)/.installed
	$(BIN)/python benchmarks/sasrec_beauty.py

clean:
	rm -rf runs .pytest_cache

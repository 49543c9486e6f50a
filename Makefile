# Two commands do everything on a fresh machine: `make run` (the default pipeline) and `make test` (the tests).
# Both create the virtual environment .venv and install the pinned packages on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast setup dry-run rulegraph clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/snakemake --profile profiles/default

dry-run: $(STAMP)
	$(BIN)/snakemake --profile profiles/default -n

# Two test processes, each module whole in one of them, the longest modules first (tests/conftest.py).
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# The unit tests only: no Snakemake subprocess, no training beyond a few steps (docs/development.md).
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# The rule graph picture in README.md, from the workflow itself.
rulegraph: $(STAMP)
	$(BIN)/python docs/rulegraph.py

clean:
	rm -rf results logs .snakemake

# The two commands of the README:  `make study`  and  `make test`.
# Both create .venv on first use: torch==2.13.0 FIRST (any other torch pulls a multi-GB CUDA build),
# then this package with its dev extra.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml

.PHONY: study test smoke bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

study: $(BIN)/.installed
	$(BIN)/safepretrain study $(CONFIG)

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

smoke: $(BIN)/.installed
	$(BIN)/safepretrain study configs/smoke.yaml

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache

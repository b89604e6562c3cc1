# The two commands of the README:  `make study`  and  `make test`.
# Both create .venv on first use: torch==2.13.0 FIRST (any other torch pulls a multi-GB CUDA build),
# then this package with its dev extra.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml

.PHONY: study test browser smoke bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

study: $(BIN)/.installed
	$(BIN)/safepretrain study $(CONFIG)

test: $(BIN)/.installed browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Headless Chromium for the report's browser test (Debian's package); the test skips, saying why, without it.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	    (sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	    echo "note: chromium could not be installed; the HTML report's browser test will be skipped" )

smoke: $(BIN)/.installed
	$(BIN)/safepretrain study configs/smoke.yaml

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache

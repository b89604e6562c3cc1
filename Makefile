# The two commands of the README:  `make study`  and  `make test`.
# Both create .venv on first use, with the tested torch installed FIRST and passed again with each later install so
# that nothing moves it (any other torch here pulls a multi-GB CUDA build). The pin is this recipe's, not the
# package's: pyproject.toml asks only for a torch range, so an environment with its own torch keeps it.
# `make study` installs the runtime alone; `make test` adds the dev, cluster (ray) and clients extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
TORCH ?= torch==2.13.0

.PHONY: study test browser smoke bench clean

$(BIN)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e . '$(TORCH)'
	touch $@

$(BIN)/.dev: $(BIN)/.runtime
	$(BIN)/pip install --quiet -e '.[dev,cluster,clients]' '$(TORCH)'
	touch $@

study: $(BIN)/.runtime
	$(BIN)/safepretrain study $(CONFIG)

test: $(BIN)/.dev browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Headless Chromium for the report's browser test (Debian's package); the test skips, saying why, without it.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	    (sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	    echo "note: chromium could not be installed; the HTML report's browser test will be skipped" )

smoke: $(BIN)/.runtime
	$(BIN)/safepretrain study configs/smoke.yaml

bench: $(BIN)/.runtime
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache

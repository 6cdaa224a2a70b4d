# Two entry points for a fresh machine: `make demo IMAGES=DIR` and `make test`.
# Both create the virtual environment .venv on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
IMAGES ?= ../shared/data/hyperkvasir-lower-gi

.PHONY: venv demo test clean

$(BIN)/endodoc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/endodoc

demo: venv
	$(BIN)/endodoc db upgrade
	$(BIN)/endodoc demo --images $(IMAGES)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)

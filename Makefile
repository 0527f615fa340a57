# Two commands on a fresh machine; each sets up what it needs on first use:
#   make study   # the whole study, embedded default (snakemake all --cores 1 --resources gpu=1)
#   make test    # the tests on two workers (python -m pytest -n 2)
# Also: make paper (the paper profile on a GPU), make rehearsal (its offline rehearsal),
# make install (only the environment). PYTHON=python3.11 picks the interpreter.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: study test paper rehearsal install

study: $(INSTALLED)
	$(BIN)/snakemake all --cores 1 --resources gpu=1

test: $(INSTALLED)
	$(BIN)/python -m pytest -n 2

paper: $(INSTALLED)
	$(BIN)/snakemake all --cores 8 --resources gpu=1 --configfile config/paper.yaml

rehearsal: $(INSTALLED)
	$(BIN)/python tools/paper_rehearsal.py --out $(or $(OUT),/tmp/qure-rehearsal)

install: $(INSTALLED)

# Re-installed when the project's requirements change. torch is pinned exactly, so pip
# takes a local CPU wheel where one is available instead of the CUDA build.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Entry points for users and CI. Everything runs inside .venv (created on first use).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= cpu

.PHONY: help install test test-slow demo reproduce clean-venv

help:
	@echo "make demo     - train the cpu-preset BadNets model on CIFAR-10 (or load the committed one), run Burn, print ACC/ASR/RA"
	@echo "make test     - the fast test suite"
	@echo "make test-slow - the slow tests too"

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,notebooks]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

test-slow: install
	$(PY) -m pytest -q --runslow tests

demo: install
	$(VENV)/bin/burn attack --attack badnets --dataset cifar10 --preset $(PRESET)
	$(VENV)/bin/burn defend --attack badnets --dataset cifar10 --preset $(PRESET)

clean-venv:
	rm -rf $(VENV)

# Entry points for users and CI. Everything runs inside .venv (created on first use).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= cpu

.PHONY: help install test test-cluster test-slow demo reproduce regime gpu-data clean-venv

help:
	@echo "make demo      - load the committed cpu-preset BadNets model, measure its ACC/ASR/RA, print its"
	@echo "                 committed Burn run (under 2 min from committed results; a stage that is not"
	@echo "                 committed is computed: about 15 min of training, 20 of DeepFool, 10 of Burn here)"
	@echo "make test      - the fast test suite (about 7 min on 2 cores; plus the venv install on a fresh clone)"
	@echo "make test-cluster - burn sweep on a real one-node Slurm (as root: apt-get installs Debian's"
	@echo "                 slurm-wlm, slurmdbd, mariadb-server, munge; daemons in a temporary folder)"
	@echo "make test-slow - the slow tests too (every committed model.pt reproduces its none.json)"
	@echo "make reproduce PRESET=cpu - every notebook into notebooks/executed/<preset>/ (about 2 min cached)"
	@echo "make regime    - the regime study table and figure from the committed results (add RUN=1 to compute)"

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,notebooks]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

test-cluster: install
	BURN_TEST_SLURM=1 $(PY) -m pytest -q -s tests/cluster

test-slow: install
	$(PY) -m pytest -q --runslow tests

demo: install
	$(VENV)/bin/burn attack --attack badnets --dataset cifar10 --preset $(PRESET)
	$(VENV)/bin/burn defend --attack badnets --dataset cifar10 --preset $(PRESET)

reproduce: install
	$(VENV)/bin/burn reproduce --preset $(PRESET)

regime: install
	$(VENV)/bin/burn regime $(if $(RUN),--run,)

gpu-data:  # what experiments/gpu/run.sh needs on a GPU lease, in an ignored folder that travels
	mkdir -p .gpu-data/triggers
	cp ../shared/data/cifar10-jpeg.tar.gz .gpu-data/
	cp ../shared/triggers/* .gpu-data/triggers/
	echo "$$(git rev-parse HEAD) $$(git status --porcelain --untracked-files=no | grep -q . && echo 1 || echo 0)" > .gpu-data/commit

clean-venv:
	rm -rf $(VENV)

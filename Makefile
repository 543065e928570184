# Entry points for users and CI. Everything runs inside .venv (created on first use).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= cpu

NOTEBOOKS := table1_boundary_distance fig1_feature_similarity fig2_adversarial_labels \
	fig5_filtering fig6_unlearning_budget table2_ablation fig4_defense_tradeoff

.PHONY: help install test test-slow demo reproduce regime clean-venv

help:
	@echo "make demo     - train the cpu-preset BadNets model on CIFAR-10 (or load the committed one), run Burn, print ACC/ASR/RA"
	@echo "make test     - the fast test suite"
	@echo "make test-slow - the slow tests too"
	@echo "make reproduce PRESET=cpu - run every notebook with papermill into notebooks/executed/<preset>/"
	@echo "make regime   - the regime study table and figure from the committed results (add RUN=1 to compute)"

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

reproduce: install
	mkdir -p notebooks/executed/$(PRESET)
	@start=$$(date +%s); for nb in $(NOTEBOOKS); do \
		echo "== $$nb ($(PRESET))"; t0=$$(date +%s); \
		$(VENV)/bin/papermill notebooks/$$nb.ipynb notebooks/executed/$(PRESET)/$$nb.ipynb \
			-p preset $(PRESET) --progress-bar || exit 1; \
		echo "   $$nb: $$(( $$(date +%s) - t0 )) s"; \
	done; \
	$(VENV)/bin/burn report --preset $(PRESET); \
	echo "reproduce ($(PRESET)): $$(( $$(date +%s) - start )) s in all"

regime: install
	$(VENV)/bin/burn regime $(if $(RUN),--run,)

clean-venv:
	rm -rf $(VENV)

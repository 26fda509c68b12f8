# Thin aliases over the `mtlrepro` CLI. Every target creates .venv when it is missing.
#   make table4                      ETR-NLP Table 4 (needs DATA_ROOT or MTLREPRO_DATA)
#   make table4 PROFILE=tiny         the whole pipeline on generated data, minutes on a CPU
#   make test                        the test-suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PAPER  ?= etr_nlp
PROFILE ?= full
SEEDS  ?=
# DATA_ROOT: the CLI reads $MTLREPRO_DATA itself (the tiny profile refuses --data-root)
DATA_ROOT ?=
DEVICE ?=
RUN_ARGS := --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(if $(DEVICE),--device $(DEVICE))

.PHONY: help venv test test-fast fault-table bench audit tables status leaderboard clean-venv
help:
	@sed -n '1,5p' Makefile

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not slow"

# the fault suite, with what each case showed the user and left on disk, as results/fault_table.md
fault-table: venv
	MTLREPRO_FAULT_TABLE=results/fault_table.md $(PY) -m pytest tests/faults -q

bench: venv
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-autosave --benchmark-storage=results/benchmarks

audit: venv
	$(PY) -m mtlrepro audit

tables: venv
	$(PY) -m mtlrepro tables

# make tableN -> run + diff + report of $(PAPER)/tableN (table3a, table_s1 ... work too)
table%: venv
	$(PY) -m mtlrepro reproduce $(PAPER)/table$* $(RUN_ARGS)

# make figureN -> the sweep and plot of $(PAPER)/figureN
figure%: venv
	$(PY) -m mtlrepro reproduce $(PAPER)/figure$* $(RUN_ARGS)

# the whole reproduction: every table's status, every report + results/README.md, the cross-paper leaderboard
status: venv
	$(PY) -m mtlrepro status --profile $(PROFILE)

leaderboard: venv
	$(PY) -m mtlrepro report --all --profile $(PROFILE)
	$(PY) -m mtlrepro leaderboard --all --profile $(PROFILE)

clean-venv:
	rm -rf $(VENV)

# prunebench: the user interface. Thin on purpose: each target calls one Python entry point.
# Run `make help` for the list.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-stamp
KCONFIG_CONFIG ?= .config
export KCONFIG_CONFIG

# MATRIX, COMPARE and RERUN_FAILED count only when given on make's command line
# (make continue MATRIX=name). Variables of these generic names in the environment (a CI
# matrix, a shell profile) are ignored with a note, so they never pick a matrix or retry failed
# runs behind the user's back. Values reach the CLI as single-quoted arguments, unexpanded:
# never as shell or make text. unexport: make would expand them to put them in the environment.
unexport MATRIX COMPARE RERUN_FAILED
cli_var = $(if $(filter command line,$(origin $(1))),$(value $(1)))
quote = '$(subst ','\'',$(1))'
ignored_env = $(foreach v,$(1),$(if $(filter environment,$(origin $(v))),$(info note: $(v) in \
	the environment is ignored; give it on make's command line: make $@ $(v)=...)))
rerun_arg = $(if $(call cli_var,RERUN_FAILED),--rerun-failed=$(call quote,$(call cli_var,RERUN_FAILED)))
matrix_arg = $(if $(call cli_var,MATRIX),--matrix $(call quote,$(call cli_var,MATRIX)))

DEFCONFIGS := $(sort $(notdir $(wildcard defconfigs/*)))
DEFCONFIG_TARGETS := $(addprefix defconfig-,$(DEFCONFIGS))
DEMO_CONFIG := .config.demo

.PHONY: help setup menuconfig oldconfig olddefconfig savedefconfig defconfig list-defconfigs \
	check-config test-matrix test-matrix-dry-run continue status report check test lint bench demo \
	gpu-check gpu-wheels docs clean mrproper $(DEFCONFIG_TARGETS)

help:
	@echo "prunebench: compare optimizers with built-in pruning on a Kconfig-defined matrix"
	@echo ""
	@echo "Start here:"
	@echo "  demo                  set up, run the CPU demo matrix on embedded MNIST, write its report"
	@echo "  check                 set up, then run the test suite"
	@echo ""
	@echo "Configuration (.config, via kconfiglib):"
	@echo "  menuconfig            edit .config in a curses menu (needs a terminal)"
	@echo "  defconfig-NAME        write .config from defconfigs/NAME (see below)"
	@echo "  defconfig             same as defconfig-demo"
	@echo "  oldconfig             ask only for options new since .config was written"
	@echo "  olddefconfig          give new options their defaults, without asking"
	@echo "  savedefconfig         write the minimal form of .config to ./defconfig"
	@echo "  check-config          validate .config and show how many runs it plans"
	@echo "  list-defconfigs       list the defconfig names"
	@echo ""
	@echo "Running:"
	@echo "  test-matrix           run every planned run of .config (skips finished runs,"
	@echo "                        resumes unfinished ones); RERUN_FAILED=1 retries failed runs;"
	@echo "                        with the Slurm executor: submit them as one job array"
	@echo "  test-matrix-dry-run   print the planned runs, their state and an estimated duration"
	@echo "  continue              resume the newest matrix as it was planned"
	@echo "                        (MATRIX=name for another one)"
	@echo "  status                one line per run of the newest matrix: its state and, for"
	@echo "                        Slurm, its array task and scheduler state (MATRIX=name)"
	@echo "  report                write results/<matrix>/report.md and plots for the newest"
	@echo "                        matrix (MATRIX=name; COMPARE=\"a b\" compares two matrices)"
	@echo ""
	@echo "Development:"
	@echo "  setup                 create $(VENV) and install the project (idempotent)"
	@echo "  test                  run the tests (without setup)"
	@echo "  lint                  ruff"
	@echo "  bench                 run the benchmarks (see docs/benchmarks.md)"
	@echo "  gpu-wheels            collect the wheels gpu-check needs into wheelhouse/ (registry)"
	@echo "  gpu-check             prove the CUDA path on a GPU machine in minutes, installing"
	@echo "                        from wheelhouse/ only (GPU_CHECK_OUT=file.json; exit 3: no GPU)"
	@echo "  docs                  regenerate docs/kconfig.md from the Kconfig help texts"
	@echo "  clean                 remove caches and build leftovers"
	@echo "  mrproper              clean + remove .config and $(VENV); results/ and data/ only"
	@echo "                        with REMOVE_RESULTS=1 / REMOVE_DATA=1"
	@echo ""
	@echo "Defconfigs:"
	@for d in $(DEFCONFIGS); do echo "  defconfig-$$d"; done

# ---------------------------------------------------------------------------------------------
# setup: a virtualenv that reuses a system-wide torch where one exists (GPU machines), so the
# project never downloads a second multi-GB CUDA build there.

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# ---------------------------------------------------------------------------------------------
# configuration

menuconfig: $(SETUP_STAMP)
	@$(PY) -m lib.cli menuconfig

oldconfig: $(SETUP_STAMP)
	@$(PY) -m lib.cli oldconfig

olddefconfig: $(SETUP_STAMP)
	@$(PY) -m lib.cli olddefconfig

savedefconfig: $(SETUP_STAMP)
	@$(PY) -m lib.cli savedefconfig --output $(or $(DEFCONFIG_OUT),defconfig)

check-config: $(SETUP_STAMP)
	@$(PY) -m lib.cli check-config

list-defconfigs:
	@for d in $(DEFCONFIGS); do echo "$$d"; done

defconfig: defconfig-demo

# Explicit targets for every file in defconfigs/ (so shells tab-complete them); the pattern
# rule catches unknown names and lets the CLI list the known ones.
apply_defconfig = @$(PY) -m lib.cli defconfig $(patsubst defconfig-%,%,$@)
$(DEFCONFIG_TARGETS): $(SETUP_STAMP)
	$(apply_defconfig)
defconfig-%: $(SETUP_STAMP)
	$(apply_defconfig)

# ---------------------------------------------------------------------------------------------
# running and reporting

test-matrix: $(SETUP_STAMP)
	@$(call ignored_env,RERUN_FAILED)$(PY) -m lib.cli test-matrix $(rerun_arg)

test-matrix-dry-run: $(SETUP_STAMP)
	@$(PY) -m lib.cli dry-run

continue: $(SETUP_STAMP)
	@$(call ignored_env,MATRIX RERUN_FAILED)$(PY) -m lib.cli continue $(matrix_arg) $(rerun_arg)

status: $(SETUP_STAMP)
	@$(call ignored_env,MATRIX)$(PY) -m lib.cli status $(matrix_arg)

report: $(SETUP_STAMP)
	$(if $(call cli_var,COMPARE),$(if $(filter-out 2,$(words $(call cli_var,COMPARE))),$(error \
	COMPARE="$(call cli_var,COMPARE)": give two matrix names, e.g. make report COMPARE="demo mymatrix")))
	@$(call ignored_env,MATRIX COMPARE)$(PY) -m scripts.report $(matrix_arg) \
		$(if $(call cli_var,COMPARE),--compare $(foreach m,$(call cli_var,COMPARE),$(call quote,$(m))))

# The demo keeps its own configuration file, so it never overwrites the user's .config.
# `exec`: make passes a SIGTERM on to its own child only, so the runner must be that child and
# not a shell around it, or `kill <make>` would leave it training (bash execs a lone command
# itself; exec keeps it so whatever the shell; tests/test_make.py checks it).
demo: $(SETUP_STAMP)
	@KCONFIG_CONFIG=$(DEMO_CONFIG) exec $(PY) -m lib.cli defconfig demo
	@KCONFIG_CONFIG=$(DEMO_CONFIG) exec $(PY) -m lib.cli test-matrix
	@exec $(PY) -m scripts.report --matrix demo

# ---------------------------------------------------------------------------------------------
# development

check: $(SETUP_STAMP)
	$(PY) -m pytest

test:
	$(PY) -m pytest

lint: $(SETUP_STAMP)
	$(PY) -m ruff check .

bench: $(SETUP_STAMP)
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# gpu-check runs on a bare GPU machine: torch preinstalled, no package registry, no .venv.
# It uses .venv where one exists, else $(PYTHON) (the machine's own torch), and installs what
# else it needs from wheelhouse/ (make gpu-wheels, run where the registry is reachable) into
# $(GPU_SITE) with pip --no-index. No GPU: one line and exit 3 before anything is installed.
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_SITE := build/gpu-site
gpu_out_arg = $(if $(call cli_var,GPU_CHECK_OUT),--out $(call quote,$(call cli_var,GPU_CHECK_OUT)))

gpu-wheels: $(SETUP_STAMP)
	@$(PY) benchmarks/gpu_wheels.py collect

gpu-check:
	@$(GPU_PY) benchmarks/gpu_check.py preflight
	@$(GPU_PY) benchmarks/gpu_wheels.py install --target $(GPU_SITE)
	@PYTHONPATH=$(CURDIR)/$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} exec $(GPU_PY) \
		benchmarks/gpu_check.py run $(gpu_out_arg)

docs: $(SETUP_STAMP)
	@$(PY) -m lib.cli docs

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache defconfig
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

mrproper: clean
	rm -rf $(VENV) .config .config.old $(DEMO_CONFIG) $(DEMO_CONFIG).old
	$(if $(REMOVE_RESULTS),find results -mindepth 1 -not -name README.md -delete,@echo "results/ kept (REMOVE_RESULTS=1 removes it)")
	$(if $(REMOVE_DATA),rm -rf data,@echo "data/ kept (REMOVE_DATA=1 removes it)")

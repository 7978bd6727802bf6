# prunebench: the user interface. Thin on purpose: each target calls one Python entry point.
# Run `make help` for the list.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
KCONFIG_CONFIG ?= .config
DEMO_CONFIG := .config.demo

# Values a user gives make (command line, environment) reach the programs as single-quoted
# arguments; what make itself would read as make or shell text is refused in one line before
# anything runs: a newline (make would run each line as a command of its own, and `make -i`
# would go on after the first fails) in any of them or in a goal, a `$` in the paths make
# expands itself.
define newline


endef
quote = '$(subst ','\'',$(1))'
user_vars := PYTHON VENV PY KCONFIG_CONFIG DEMO_CONFIG DEFCONFIG_OUT MATRIX COMPARE RERUN_FAILED \
	REMOVE_RESULTS REMOVE_DATA GPU_CHECK_OUT
expanded_vars := PYTHON VENV PY KCONFIG_CONFIG DEMO_CONFIG
$(foreach v,$(user_vars),$(if $(findstring $(newline),$(value $(v))),$(error \
	$(v) contains a newline: give it on one line)))
$(foreach v,$(expanded_vars),$(if $(findstring $$,$(value $(v))),$(error \
	$(v)=$(value $(v)) contains '$$': give a path without it)))
$(if $(findstring $(newline),$(MAKECMDGOALS)),$(error a target name contains a newline))

PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-stamp
export KCONFIG_CONFIG
py = $(call quote,$(PY))

# MATRIX, COMPARE, RERUN_FAILED, DEFCONFIG_OUT, REMOVE_RESULTS and REMOVE_DATA count only
# when given on make's command line (make continue MATRIX=name). Variables of these generic
# names in the environment (a CI matrix, a shell profile), or assigned by a MAKEFLAGS in the
# environment (make cannot tell those from the command line itself), are ignored with a note,
# so they never pick a matrix, retry failed runs or delete results behind the user's back.
# Values reach the CLI as single-quoted arguments, unexpanded: never as shell or make text.
# unexport: make would expand them to put them in the environment.
unexport MATRIX COMPARE RERUN_FAILED DEFCONFIG_OUT REMOVE_RESULTS REMOVE_DATA GPU_CHECK_OUT
env_makeflags_vars := $(if $(filter 0,$(MAKELEVEL)),$(foreach w,$(shell printenv MAKEFLAGS),$(if \
	$(findstring =,$(w)),$(firstword $(subst =, ,$(w))))))
from_env = $(or $(filter environment,$(origin $(1))),$(filter $(1),$(env_makeflags_vars)))
cli_var = $(if $(call from_env,$(1)),,$(if $(filter command line,$(origin $(1))),$(value $(1))))
ignored_env = $(foreach v,$(1),$(if $(call from_env,$(v)),$(info note: $(v) in \
	the environment is ignored; give it on make's command line: make $@ $(v)=...)))
rerun_arg = $(if $(call cli_var,RERUN_FAILED),--rerun-failed=$(call quote,$(call cli_var,RERUN_FAILED)))
matrix_arg = $(if $(call cli_var,MATRIX),--matrix $(call quote,$(call cli_var,MATRIX)))

DEFCONFIGS := $(sort $(notdir $(wildcard defconfigs/*)))
DEFCONFIG_TARGETS := $(addprefix defconfig-,$(DEFCONFIGS))

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
	@echo '  setup                 create '$(call quote,$(VENV))' and install the project (idempotent)'
	@echo "  test                  run the tests (without setup)"
	@echo "  lint                  ruff"
	@echo "  bench                 run the benchmarks (see docs/benchmarks.md)"
	@echo "  gpu-wheels            collect the wheels gpu-check needs into wheelhouse/ (registry)"
	@echo "  gpu-check             prove the CUDA path on a GPU machine in minutes, installing"
	@echo "                        from wheelhouse/ only (GPU_CHECK_OUT=file.json; exit 3: no GPU)"
	@echo "  docs                  regenerate docs/kconfig.md from the Kconfig help texts"
	@echo "  clean                 remove caches and build leftovers"
	@echo '  mrproper              clean + remove .config and '$(call quote,$(VENV))'; results/ and data/ only'
	@echo "                        with REMOVE_RESULTS=1 / REMOVE_DATA=1 on the command line"
	@echo ""
	@echo "Defconfigs:"
	@for d in $(DEFCONFIGS); do echo "  defconfig-$$d"; done

# ---------------------------------------------------------------------------------------------
# setup: a virtualenv that reuses a system-wide torch where one exists (GPU machines), so the
# project never downloads a second multi-GB CUDA build there.

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml
	@test -x $(py) || $(call quote,$(PYTHON)) -m venv --system-site-packages $(call quote,$(VENV))
	$(py) -m pip install --quiet --upgrade pip
	$(py) -m pip install --quiet -e '.[dev]'
	@touch $@

# ---------------------------------------------------------------------------------------------
# configuration

menuconfig: $(SETUP_STAMP)
	@$(py) -m lib.cli menuconfig

oldconfig: $(SETUP_STAMP)
	@$(py) -m lib.cli oldconfig

olddefconfig: $(SETUP_STAMP)
	@$(py) -m lib.cli olddefconfig

savedefconfig: $(SETUP_STAMP)
	@$(call ignored_env,DEFCONFIG_OUT)$(py) -m lib.cli savedefconfig --output $(call quote,$(or $(call cli_var,DEFCONFIG_OUT),defconfig))

check-config: $(SETUP_STAMP)
	@$(py) -m lib.cli check-config

list-defconfigs:
	@for d in $(DEFCONFIGS); do echo "$$d"; done

defconfig: defconfig-demo

# Explicit targets for every file in defconfigs/ (so shells tab-complete them); the pattern
# rule catches unknown names and lets the CLI list the known ones.
apply_defconfig = @$(py) -m lib.cli defconfig $(call quote,$(patsubst defconfig-%,%,$@))
$(DEFCONFIG_TARGETS): $(SETUP_STAMP)
	$(apply_defconfig)
defconfig-%: $(SETUP_STAMP)
	$(apply_defconfig)

# ---------------------------------------------------------------------------------------------
# running and reporting

test-matrix: $(SETUP_STAMP)
	@$(call ignored_env,RERUN_FAILED)$(py) -m lib.cli test-matrix $(rerun_arg)

test-matrix-dry-run: $(SETUP_STAMP)
	@$(py) -m lib.cli dry-run

continue: $(SETUP_STAMP)
	@$(call ignored_env,MATRIX RERUN_FAILED)$(py) -m lib.cli continue $(matrix_arg) $(rerun_arg)

status: $(SETUP_STAMP)
	@$(call ignored_env,MATRIX)$(py) -m lib.cli status $(matrix_arg)

report: $(SETUP_STAMP)
	$(if $(call cli_var,COMPARE),$(if $(filter-out 2,$(words $(call cli_var,COMPARE))),$(error \
	COMPARE="$(call cli_var,COMPARE)": give two matrix names, e.g. make report COMPARE="demo mymatrix")))
	@$(call ignored_env,MATRIX COMPARE)$(py) -m scripts.report $(matrix_arg) \
		$(if $(call cli_var,COMPARE),--compare $(foreach m,$(call cli_var,COMPARE),$(call quote,$(m))))

# The demo keeps its own configuration file, so it never overwrites the user's .config.
# `exec`: make passes a SIGTERM on to its own child only, so the runner must be that child and
# not a shell around it, or `kill <make>` would leave it training (bash execs a lone command
# itself; exec keeps it so whatever the shell; tests/test_make.py checks it).
demo: $(SETUP_STAMP)
	@KCONFIG_CONFIG=$(call quote,$(DEMO_CONFIG)) exec $(py) -m lib.cli defconfig demo
	@KCONFIG_CONFIG=$(call quote,$(DEMO_CONFIG)) exec $(py) -m lib.cli test-matrix
	@exec $(py) -m scripts.report --matrix demo

# ---------------------------------------------------------------------------------------------
# development

check: $(SETUP_STAMP)
	$(py) -m pytest

test:
	$(py) -m pytest

lint: $(SETUP_STAMP)
	$(py) -m ruff check .

bench: $(SETUP_STAMP)
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b"; $(py) $$b; done

# gpu-check runs on a bare GPU machine: torch preinstalled, no package registry, no .venv.
# It uses .venv where one exists, else $(PYTHON) (the machine's own torch), and installs what
# else it needs from wheelhouse/ (make gpu-wheels, run where the registry is reachable) into
# $(GPU_SITE) with pip --no-index. No GPU: one line and exit 3 before anything is installed.
GPU_PY := $(call quote,$(if $(wildcard $(PY)),$(PY),$(PYTHON)))
GPU_SITE := build/gpu-site
gpu_out_arg = $(if $(call cli_var,GPU_CHECK_OUT),--out $(call quote,$(call cli_var,GPU_CHECK_OUT)))

gpu-wheels: $(SETUP_STAMP)
	@$(py) benchmarks/gpu_wheels.py collect

gpu-check:
	@$(GPU_PY) benchmarks/gpu_check.py preflight
	@$(GPU_PY) benchmarks/gpu_wheels.py install --target $(GPU_SITE)
	@PYTHONPATH=$(call quote,$(CURDIR)/$(GPU_SITE))$${PYTHONPATH:+:$$PYTHONPATH} exec $(GPU_PY) \
		benchmarks/gpu_check.py run $(gpu_out_arg)

docs: $(SETUP_STAMP)
	@$(py) -m lib.cli docs

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache defconfig
	find . -name __pycache__ -type d -not -path $(call quote,./$(VENV)/*) -prune -exec rm -rf {} +

# REMOVE_RESULTS / REMOVE_DATA delete what no command recreates: only an explicit yes given on
# make's command line counts (the yes words of RERUN_FAILED: 1, y, yes, true, on); its no words
# (0, n, no, false, off) or an empty value keep them; anything else is refused before anything
# is removed.
yes_words := 1 y Y yes Yes YES true True TRUE on On ON
no_words := 0 n N no No NO false False FALSE off Off OFF
flag_yes = $(filter $(yes_words),$(call cli_var,$(1)))
ifneq ($(filter mrproper,$(MAKECMDGOALS)),)
$(foreach v,REMOVE_RESULTS REMOVE_DATA,$(if $(or $(filter-out $(yes_words) $(no_words),$(call \
	cli_var,$(v))),$(filter-out 0 1,$(words $(call cli_var,$(v))))),$(error $(v)="$(call \
	cli_var,$(v))" is neither yes nor no; accepted: \
	1/y/yes/true/on removes, 0/n/no/false/off/empty keeps)))
endif

mrproper: clean
	rm -rf $(call quote,$(VENV)) .config .config.old $(call quote,$(DEMO_CONFIG)) \
		$(call quote,$(DEMO_CONFIG).old)
	$(call ignored_env,REMOVE_RESULTS REMOVE_DATA)$(if $(call flag_yes,REMOVE_RESULTS),find \
		results -mindepth 1 -not -name README.md -delete,@echo "results/ kept (make mrproper \
		REMOVE_RESULTS=1 removes it)")
	$(if $(call flag_yes,REMOVE_DATA),rm -rf data,@echo "data/ kept (make mrproper \
		REMOVE_DATA=1 removes it)")

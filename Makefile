# nst-ablation: `make demo` runs one transfer, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The report's pair: read from ../shared/data when it exists (CI, this workspace), else downloaded.
export ABLATION_DATA_DIR ?= $(abspath $(wildcard ../shared/data))
DEMO_ARGS ?=
# make sweep: EXPERIMENT=table1|table2|all|readings|optimizers|conditions, SIZE=content width px, ITER=iterations,
# SEEDS=0,1,2, WEIGHTS=torchvision|random|..., CONDITIONS=base,style5000 (files of conf/condition/),
# LAUNCHER=basic|joblib|slurm (N_JOBS for joblib), SWEEP_ARGS=more overrides. It prints its cost before it starts.
EXPERIMENT ?= all
SIZE ?=
ITER ?=
SEEDS ?=
CONDITIONS ?=
WEIGHTS ?=
LAUNCHER ?= basic
N_JOBS ?= 2
SWEEP_ARGS ?=
SWEEP ?=

comma := ,
space := $(subst ,, )
.PHONY: help install demo test lint ui server sweep report tune bench slurm-up slurm-down
help:  ## every target with what it does
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 22

install: $(VENV)/.installed  ## the virtual environment in .venv (torch, hydra, mlflow, ...)
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install  ## one transfer of the report's pair at 256 px, 300 iterations, pretrained VGG19
	$(PY) -m ablation.run images.width=256 run.iterations=300 $(DEMO_ARGS)

test: install  ## the whole suite (CPU, seeded random weights, images <= 64 px)
	$(PY) -m pytest -q tests

sweep: install  ## the experiment's variants x seeds; jobs with a FINISHED run of the same fingerprint are skipped
	$(PY) -m ablation.run -m experiment=$(EXPERIMENT) hydra/launcher=$(LAUNCHER) \
		$(if $(SIZE),images.width=$(SIZE)) $(if $(ITER),run.iterations=$(ITER)) $(if $(SEEDS),run.seed=$(SEEDS)) \
		$(if $(WEIGHTS),weights=$(WEIGHTS)) $(if $(CONDITIONS),condition=$(CONDITIONS)) \
		$(if $(filter joblib,$(LAUNCHER)),hydra.launcher.n_jobs=$(N_JOBS)) $(SWEEP_ARGS)

# make tune: one Optuna study per variant (VARIANTS=original,vgg16 ...; default every file of conf/variant), TRIALS each
VARIANTS ?= $(subst $(space),$(comma),$(sort $(basename $(notdir $(wildcard conf/variant/*.yaml)))))
TRIALS ?= 20
tune: install  ## tune content/style/TV weights per variant to minimise the judge's total (experiment=tune)
	for v in $(subst $(comma), ,$(VARIANTS)); do \
		$(PY) -m ablation.run -m experiment=tune variant=$$v hydra.sweeper.n_trials=$(TRIALS) \
			$(if $(SIZE),images.width=$(SIZE)) $(if $(ITER),run.iterations=$(ITER)) \
			$(if $(WEIGHTS),weights=$(WEIGHTS)) $(SWEEP_ARGS) || exit 1; \
	done

report: install  ## reports/<sweep>/report.md from the latest sweep (or SWEEP=<sweep id>)
	$(PY) -m ablation.report $(if $(SWEEP),--sweep $(SWEEP))

lint: install  ## ruff check and format check (the engine boundary included)
	$(PY) -m ruff check ablation hydra_plugins tests && $(PY) -m ruff format --check ablation hydra_plugins tests

ui: install  ## MLflow UI on the project's store, bound to 127.0.0.1
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host 127.0.0.1 --port 5000

SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
STORE_DIR ?= $(CURDIR)/runs
# STORE_URI: the server's backend store, e.g. postgresql://USER:PASSWORD@HOST:5432/mlflow (docs/cluster.md)
STORE_URI ?= sqlite:///$(STORE_DIR)/mlflow.db
server: install  ## MLflow tracking server on the project's store; set MLFLOW_TRACKING_URI=http://$(SERVER_HOST):$(SERVER_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server \
		--backend-store-uri $(STORE_URI) --artifacts-destination $(STORE_DIR)/artifacts \
		--host $(SERVER_HOST) --port $(SERVER_PORT) --workers 1

BENCH_ARGS ?=
bench: install  ## the benchmark: engine vs baselines, machine peaks, targets (reports/bench/bench.md); BENCH_ARGS=--quick
	$(PY) -m ablation.bench $(BENCH_ARGS)

slurm-up:  ## a one-node SLURM on this machine (installs slurm-wlm + munge if missing; root or sudo), then sinfo idle
	.ci/slurm up

slurm-down:  ## stop the one-node SLURM of make slurm-up (by its pid files)
	.ci/slurm down

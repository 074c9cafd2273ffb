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
.PHONY: help install demo test test-fast test-cuda lint ui server sweep report tune bench check-cuda bench-cuda memory-cuda slurm-up slurm-down postgres-up postgres-down
help:  ## every target with what it does
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 22

install: $(VENV)/.installed  ## the virtual environment in .venv (torch, hydra, mlflow, ...)
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install  ## one transfer of the report's pair at 256 px, 300 iterations, pretrained VGG19
	$(PY) -m ablation.run images.width=256 run.iterations=300 $(DEMO_ARGS)

# pytest-xdist workers, each running one test module at a time (its module fixtures run once), in the order
# tests/conftest.py gives. The suite is CPU-bound (docs/layout.md, The tests); one worker more than cores fills the
# waits inside the process-starting tests (a server coming up, SLURM scheduling a job, a 10 s outage).
TEST_WORKERS ?= 3
FAST_WORKERS ?= 2
XDIST = --dist loadscope --no-loadscope-reorder
# PYTEST_ARGS: more pytest options, e.g. -v to name each failing test as it happens (a run cut short by a time
# limit prints no messages: pytest gives them at the end) or -x to stop at the first
PYTEST_ARGS ?=
test: install  ## the whole suite (CPU, seeded random weights, images <= 64 px), on TEST_WORKERS=3 workers
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(XDIST) --durations=15 $(PYTEST_ARGS) tests

test-fast: install  ## the tests that start no process (no sweep, server, make or SLURM): the edit-test loop
	$(PY) -m pytest -q -n $(FAST_WORKERS) $(XDIST) -m "not slow" $(PYTEST_ARGS) tests

sweep: install  ## the experiment's variants x seeds; jobs with a FINISHED run of the same fingerprint are skipped
	$(PY) -m ablation.run -m experiment=$(EXPERIMENT) hydra/launcher=$(LAUNCHER) \
		$(if $(SIZE),images.width=$(SIZE)) $(if $(ITER),run.iterations=$(ITER)) $(if $(SEEDS),run.seed=$(SEEDS)) \
		$(if $(WEIGHTS),weights=$(WEIGHTS)) $(if $(CONDITIONS),condition=$(CONDITIONS)) \
		$(if $(filter joblib,$(LAUNCHER)),hydra.launcher.n_jobs=$(N_JOBS)) $(SWEEP_ARGS)

# make tune: one Optuna study per variant (VARIANTS=original,vgg16 ...; default every file of conf/variant), TRIALS each;
# STUDY_STORAGE=sqlite:///$(CURDIR)/runs/optuna.db or postgresql://USER@HOST:5432/optuna keeps the studies, so a
# killed tuner's re-run continues its study (docs/cluster.md, Tuning)
STUDY_STORAGE ?=
VARIANTS ?= $(subst $(space),$(comma),$(sort $(basename $(notdir $(wildcard conf/variant/*.yaml)))))
TRIALS ?= 20
tune: install  ## tune content/style/TV weights per variant to minimise the judge's total (experiment=tune)
	for v in $(subst $(comma), ,$(VARIANTS)); do \
		$(PY) -m ablation.run -m experiment=tune variant=$$v hydra.sweeper.n_trials=$(TRIALS) \
			$(if $(SIZE),images.width=$(SIZE)) $(if $(ITER),run.iterations=$(ITER)) \
			$(if $(WEIGHTS),weights=$(WEIGHTS)) $(if $(STUDY_STORAGE),hydra.sweeper.storage=$(STUDY_STORAGE)) \
			$(SWEEP_ARGS) || exit 1; \
	done

report: install  ## reports/<sweep>/report.md from the latest sweep (or SWEEP=<sweep id>)
	$(PY) -m ablation.report $(if $(SWEEP),--sweep $(SWEEP))

lint: install  ## ruff check and format check (the engine boundary included)
	$(PY) -m ruff check ablation hydra_plugins tests && $(PY) -m ruff format --check ablation hydra_plugins tests

ui: install  ## MLflow UI on the project's store, bound to 127.0.0.1
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host 127.0.0.1 --port 5000

SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
SERVER_WORKERS ?= 1
STORE_DIR ?= $(CURDIR)/runs
# STORE_URI: the server's backend store, e.g. postgresql://USER@HOST:5432/mlflow with the password in ~/.pgpass
# (docs/cluster.md); SERVER_WORKERS > 1 only on PostgreSQL. SERVER_AUTH=1: only its users get in (MLflow's
# basic-auth app; the admin's password from MLFLOW_AUTH_ADMIN_PASSWORD or $(STORE_DIR)/auth/admin-password).
# SERVER_ARGS: more of `python -m ablation.store.server --help` (--dry-run prints the mlflow command).
STORE_URI ?= sqlite:///$(STORE_DIR)/mlflow.db
SERVER_AUTH ?=
SERVER_ARGS ?=
server: install  ## MLflow tracking server on the project's store; set MLFLOW_TRACKING_URI=http://$(SERVER_HOST):$(SERVER_PORT)
	$(PY) -m ablation.store.server --store-dir '$(STORE_DIR)' --store-uri '$(STORE_URI)' \
		--host $(SERVER_HOST) --port $(SERVER_PORT) --workers $(SERVER_WORKERS) $(if $(SERVER_AUTH),--auth) $(SERVER_ARGS)

postgres-up:  ## a private PostgreSQL on 127.0.0.1:55432 (installs Debian's postgresql if missing), then its URI
	.ci/postgres up

postgres-down:  ## stop the PostgreSQL of make postgres-up (by its pid)
	.ci/postgres down

BENCH_ARGS ?=
bench: install  ## the benchmark: engine vs baselines, machine peaks, targets (reports/bench/bench.md); BENCH_ARGS=--quick
	$(PY) -m ablation.bench $(BENCH_ARGS)

# The suite hides the GPUs (its numbers are CPU numbers: tests/conftest.py); ABLATION_TEST_CUDA=1 shows them to tests/cuda
test-cuda: install  ## the GPU's own tests (tests/cuda): the engine and a run on CUDA; they skip without a GPU
	ABLATION_TEST_CUDA=1 $(PY) -m pytest -q -v $(PYTEST_ARGS) tests/cuda

# What a CUDA machine can tell that this project's CPUs cannot, most telling first, each stage's results kept if a
# time limit stops the rest (bench.partial.json, memory.partial.json; -v names failing tests as they happen). make -k:
# a stage that fails does not cost the GPU's time the stages after it; the status is non-zero if any failed.
check-cuda: install  ## on a CUDA machine: make test-cuda, the CUDA bench of original (--profile), its memory table, make test
	$(MAKE) -k test-cuda bench-cuda memory-cuda test PYTEST_ARGS=-v
bench-cuda: install  ## the CUDA bench of original with its profile (a stage of check-cuda)
	$(PY) -m ablation.bench --device cuda --variants original --profile
memory-cuda: install  ## the memory table on CUDA (a stage of check-cuda)
	$(PY) -m ablation.bench --memory --device cuda

slurm-up:  ## a one-node SLURM on this machine (installs slurm-wlm + munge if missing; root or sudo), then sinfo idle
	.ci/slurm up

slurm-down:  ## stop the one-node SLURM of make slurm-up (by its pid files)
	.ci/slurm down

# nst-ablation: `make demo` runs one transfer, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The report's pair: read from ../shared/data when it exists (CI, this workspace), else downloaded.
export ABLATION_DATA_DIR ?= $(abspath $(wildcard ../shared/data))
DEMO_ARGS ?=
BENCH_ARGS ?=

.PHONY: install demo test lint ui bench
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install  ## one transfer of the report's pair at 256 px, 300 iterations, pretrained VGG19
	$(PY) -m ablation.run images.width=256 run.iterations=300 $(DEMO_ARGS)

test: install  ## the whole suite (CPU, seeded random weights, images <= 64 px)
	$(PY) -m pytest -q tests

bench: install  ## engine vs a plain baseline loop and the machine's peak -> reports/bench/ (BENCH_ARGS=--quick)
	$(PY) -m ablation.bench $(BENCH_ARGS)

lint: install
	$(PY) -m ruff check ablation tests && $(PY) -m ruff format --check ablation tests

ui: install  ## MLflow UI on the project's store, bound to 127.0.0.1
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host 127.0.0.1 --port 5000

# Two commands matter: `make run` (whole default workflow) and `make test` (test suite).
# Both create the virtual environment in .venv on first use, with the exact versions of
# requirements/constraints.txt (the library's own ranges are in pyproject.toml).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all

CONSTRAINTS := requirements/constraints.txt
EXTRAS := workflow,sd,peers,dev,docs

.PHONY: env run test test-slow test-cluster test-wheel bench gpu-check lint dryrun config-docs docs docs-check clean-env

$(BIN)/snakemake: pyproject.toml $(CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	@touch $@

# The environment alone (make run and make test create it too).
env: $(BIN)/snakemake

run: $(BIN)/snakemake
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

test: $(BIN)/snakemake
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/snakemake
	$(BIN)/python -m pytest -q -m slow

# A real single-node SLURM cluster (Debian's slurm + munge, started as root without systemd) runs the
# jobs of the tiny test config (data, training, Alg. 2) through profiles/slurm; see tests/cluster/. Installs the
# packages when missing.
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
test-cluster: $(BIN)/snakemake
	@if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then \
	  echo "installing $(SLURM_PACKAGES)"; \
	  timeout 600 apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends $(SLURM_PACKAGES) >/dev/null; \
	fi
	DFCORE_TEST_CLUSTER=1 timeout 1200 $(BIN)/python -m pytest -q -m cluster -p no:cacheprovider tests/cluster

bench: $(BIN)/snakemake
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# On a machine with a GPU: the gpu tests, the GPU-sized benchmarks and config/test.yaml with device: auto against
# a CPU run, everything under results/gpu-check/ (benchmarks/gpu_check.py, docs/benchmarks.md). 8 minutes at most.
# Without CUDA it skips those steps and says so. The python of .venv when there is one (no install here: a GPU
# machine may have no network), else python3; pass options with GPU_CHECK_ARGS="--cpu-workflow DIR ...".
GPU_CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	timeout 480 $(GPU_CHECK_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

dryrun: $(BIN)/snakemake
	$(BIN)/snakemake -n --cores 1 --configfile config/config.yaml

lint: $(BIN)/snakemake
	$(BIN)/snakemake --lint --configfile config/config.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check dfcore tests benchmarks workflow/scripts docs/check_site.py docs/_ext
	$(BIN)/ruff format --check dfcore tests benchmarks workflow/scripts docs/check_site.py docs/_ext
	$(BIN)/mypy

# The built wheel in a fresh venv with the core dependencies only (no workflow, sd or peers extras):
# import dfcore, run the README's Python tour, and check that snakemake is not installed (tests/test_packaging.py).
test-wheel: $(BIN)/snakemake
	DFCORE_TEST_WHEEL=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_packaging.py

# The documentation site (mkdocs.yml, docs/) into site/, warnings as errors.
docs: $(BIN)/snakemake
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Every page of the built site loads in headless Chromium (Debian's chromium; installed when missing) and
# no link is broken (docs/check_site.py serves site/ on 127.0.0.1; tests/test_docs_site.py tests the checker).
docs-check: docs
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing chromium"; \
	  timeout 600 apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends chromium >/dev/null; \
	fi
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_docs_site.py
	$(BIN)/python docs/check_site.py site

# config/README.md is generated from workflow/schemas/config.schema.yaml (tests/test_config.py checks it is current).
config-docs: $(BIN)/snakemake
	$(BIN)/python -m dfcore.config --readme > config/README.md

clean-env:
	rm -rf $(VENV)

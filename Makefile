# fashion-lenet — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEBIAN_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
RAW    := data/FashionMNIST/raw
DATA_STAMP := $(RAW)/.verified
SWEEP  ?= $(lastword $(sort $(wildcard multirun/20*/*)))
# seconds apt-get waits for a package lock that another apt/dpkg holds, then fails
APT_LOCK_WAIT ?= 300
APT_WAIT := -o DPkg::Lock::Timeout=$(APT_LOCK_WAIT)
# pytest-xdist workers for make test, each running whole test modules (a module's fixtures are built once)
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install data train test test-cluster bench gpu-check study distill-study report tensorboard lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: $(STAMP) data ## create .venv, install the project with its test tools, get the data

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

data: $(DATA_STAMP) ## put Fashion-MNIST in data/ (Debian package, else torchvision's download) and verify it

# verified once, and again when a data file changes (each check imports torch: 8 s on 2 cores)
$(DATA_STAMP): $(STAMP) $(wildcard $(RAW)/*-ubyte)
	@if ! $(PY) -m fashion_lenet.training.data --check >/dev/null 2>&1 && [ ! -f $(DEBIAN_DATA) ] && command -v apt-get >/dev/null; then \
		echo "installing the Debian package dataset-fashion-mnist (waits up to $(APT_LOCK_WAIT) s for another apt/dpkg to finish)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		($$SUDO apt-get $(APT_WAIT) update -qq && $$SUDO apt-get $(APT_WAIT) install -y -qq dataset-fashion-mnist) \
			|| echo "apt-get failed; falling back to torchvision's download"; \
	fi
	$(PY) -m fashion_lenet.training.data
	touch $@

train: install ## train the 15-epoch baseline (python train.py); overrides: make train ARGS="model=bn_pre"
	$(PY) train.py $(ARGS)

test: install ## the test suite but the Slurm cluster's (real data, tiny limits, 2 workers): 5.5-7 min on 2 cores
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope -m "not cluster" $(ARGS)

test-cluster: install ## the sweeps against a real one-node Slurm cluster (starts it; needs root and apt-get)
	$(PY) -m pytest -m cluster $(ARGS)

bench: install ## seconds per epoch: naive pipeline vs this project's (python -m fashion_lenet.analysis.bench)
	$(PY) -m fashion_lenet.analysis.bench $(ARGS)

gpu-check: install ## on a GPU machine: GPU tests, repeatability, bench, imports, the 12-job study 4 ways (scripts/gpu_check.sh)
	PY=$(PY) scripts/gpu_check.sh

study: install ## run the seed study (4 techniques x 3 lr x 3 seeds), then its report into results/seed_study
	$(PY) train.py -m experiment=seed_study hydra.sweep.dir=multirun/seed_study $(ARGS); status=$$?; \
	$(PY) -m fashion_lenet.analysis.report multirun/seed_study --out results/seed_study --notes results/seed_study/conclusion.md; \
	exit $$status

distill-study: install ## 10 recipe LeNet-5s as a teacher ensemble, a distillation search, 3 students: results/lenet5_*
	$(PY) train.py -m experiment=lenet5_teacher hydra/launcher=fused hydra.sweep.dir=multirun/lenet5_teacher
	$(PY) -m fashion_lenet.analysis.report multirun/lenet5_teacher --out results/lenet5_ensemble \
		--against results/lenet5_recipe/jobs.csv
	$(PY) -m fashion_lenet.analysis.ensemble multirun/lenet5_teacher --out results/lenet5_ensemble
	$(PY) train.py -m experiment=lenet5_distill_search hydra/launcher=fused hydra.sweep.dir=multirun/lenet5_distill_search
	$(PY) -m fashion_lenet.analysis.report multirun/lenet5_distill_search --out results/lenet5_distill_search
	$(PY) train.py -m experiment=lenet5_student hydra/launcher=fused hydra.sweep.dir=multirun/lenet5_student
	$(PY) -m fashion_lenet.analysis.report multirun/lenet5_student --out results/lenet5_student \
		--against results/lenet5_recipe/jobs.csv --against results/lenet5_ensemble/jobs.csv \
		--notes results/lenet5_student/notes.md

report: install ## report of a sweep: make report SWEEP=multirun/<date>/<time> (default: the newest)
	$(PY) -m fashion_lenet.analysis.report $(SWEEP) --out reports/$(notdir $(SWEEP))

tensorboard: install ## TensorBoard on the newest sweep (http://localhost:6006); any folder: make tensorboard SWEEP=outputs
	$(VENV)/bin/tensorboard --logdir $(or $(SWEEP),outputs) --port 6006

lint: install ## ruff over the code
	$(VENV)/bin/ruff check src tests train.py

clean: ## remove outputs, sweeps, reports and caches (keeps .venv and data/)
	rm -rf outputs lightning_logs reports .pytest_cache .ruff_cache
	find multirun -mindepth 1 ! -name README.md -exec rm -rf {} +
	find . -name __pycache__ -not -path "./$(VENV)/*" -exec rm -rf {} +

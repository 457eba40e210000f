# Hark: every set-up step lives here, so a fresh clone needs nothing installed by hand.
#   make run    create .venv, install the server, serve the bundled model on 127.0.0.1:50051
#   make test   create .venv, install everything the suite needs, run the whole suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help

.PHONY: help
help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

# openwakeword ships the pretrained backbone's ONNX files (training/hark_training/backbone.py); --no-deps: its deps pull in tflite.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	$(BIN)/python -m pip install --quiet --no-deps openwakeword==0.5.1
	@touch $@ $(SERVE_STAMP)

.PHONY: system-deps
system-deps:  ## Debian packages the data pipeline and tests use (espeak-ng, prometheus + promtool)
	@command -v espeak-ng >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		echo "installing espeak-ng and prometheus (Debian)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends espeak-ng prometheus >/dev/null; }

.PHONY: install
install: $(SERVE_STAMP)  ## Create .venv with the server and client

.PHONY: dev
dev: $(DEV_STAMP) system-deps  ## Create .venv with training, test and lint tools

.PHONY: run
run: $(SERVE_STAMP)  ## Serve the bundled model on 127.0.0.1:50051
	$(BIN)/hark serve

.PHONY: test
test: $(DEV_STAMP) system-deps  ## Run the whole test suite
	$(BIN)/python -m pytest -q

.PHONY: lint
lint: $(DEV_STAMP)  ## ruff and mypy
	$(BIN)/ruff check service training tests proto
	$(BIN)/ruff format --check service training tests proto
	$(BIN)/mypy service/hark training/hark_training

.PHONY: bench
bench: $(DEV_STAMP) system-deps  ## Streams per server core vs raw onnxruntime and a naive server (minutes; not in make test)
	$(BIN)/python loadtest/bench.py $(BENCH_ARGS)

.PHONY: bench-quick
bench-quick: $(DEV_STAMP) system-deps  ## The benchmark's quick mode (under 2 minutes)
	$(BIN)/python loadtest/bench.py --quick $(BENCH_ARGS)

.PHONY: profile
profile: $(DEV_STAMP) system-deps  ## py-spy profile of the server under 90 streams of the bundled model (top costs per chunk)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python loadtest/profile.py --no-gate

SOAK_SECONDS ?= 600
FUZZ_SECONDS ?= 600
MEMORY_MINUTES ?= 10

.PHONY: soak
soak: $(DEV_STAMP)  ## Soak a real server: load, disconnects, hostile clients, reloads (10 min; SOAK_SECONDS=60)
	$(BIN)/python -m loadtest.soak --duration $(SOAK_SECONDS)

.PHONY: fuzz
fuzz: $(DEV_STAMP)  ## Fuzz request handling with atheris (10 min; FUZZ_SECONDS=60); crashes in loadtest/.cache/fuzz/
	mkdir -p loadtest/.cache/fuzz
	$(BIN)/python -m tests.fuzz.fuzz_requests -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=loadtest/.cache/fuzz/

.PHONY: memory
memory: $(DEV_STAMP) system-deps  ## Server RSS over time under 40 real-time streams (10 min; MEMORY_MINUTES=2)
	$(BIN)/python loadtest/memory.py --minutes $(MEMORY_MINUTES)

.PHONY: bench-peers
bench-peers:  ## Venvs for the peers make bench adds: MLServer (pins protobuf 6), openWakeWord (no tflite)
	$(PYTHON) -m venv loadtest/.venv-mlserver
	loadtest/.venv-mlserver/bin/pip install --quiet mlserver onnxruntime
	$(PYTHON) -m venv loadtest/.venv-oww
	loadtest/.venv-oww/bin/pip install --quiet --no-deps openwakeword==0.5.1
	loadtest/.venv-oww/bin/pip install --quiet onnxruntime scipy scikit-learn tqdm numpy

.PHONY: proto
proto: $(DEV_STAMP)  ## Regenerate the stubs in service/hark/v1 from proto/
	$(BIN)/python proto/generate.py

.PHONY: model
model: $(DEV_STAMP) system-deps  ## Rebuild the data set, train and publish the bundled model (about 25 min)
	$(BIN)/hark data build --out data/keywords
	$(BIN)/hark train --config training/configs/keywords.toml --data data/keywords/manifest.csv --out runs/keywords
	$(BIN)/hark export runs/keywords --store model_store --name keywords

.PHONY: clean
clean:  ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

.PHONY: percussion
percussion: $(DEV_STAMP)  ## Rebuild the bundled sound-event model (model_store/percussion) from Debian's hydrogen-drumkits
	@test -d /usr/share/hydrogen/data/drumkits || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends hydrogen-drumkits >/dev/null; }
	$(BIN)/hark data drums --out data/drums
	$(BIN)/hark train --config training/configs/percussion.toml --quiet
	$(BIN)/hark export runs/percussion --store model_store --name percussion --quiet
	$(BIN)/hark eval percussion --store model_store --events data/drums/scenes/test

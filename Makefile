# tokenscale — every target sets itself up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all setup prometheus test test-timing lint unit demo crds manifests check-generated bench image-check clean

all: test

# A virtual environment in the repository. torch is pinned and installed first so
# that the `server` extra finds it satisfied and never pulls a CUDA build. The base package is
# only the operator; the extras add the simulator (sim), the local loop (demo), the batching
# server (server) and the test tools (dev).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[server,sim,demo,dev]"
	touch $(STAMP)

setup: $(STAMP) prometheus

# Debian's Prometheus: the tests and the demo run the real server as a child process.
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's prometheus (tests and the demo run the real server)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
			|| echo "NOTE: apt-get could not install prometheus; tests that need it are skipped."; \
	else \
		echo "NOTE: prometheus/promtool not found. Install them (Debian/Ubuntu: sudo apt-get install prometheus);"; \
		echo "      tests that need a real Prometheus are skipped until then."; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check operator server tests bench
	$(BIN)/lint-imports

test: setup lint
	$(BIN)/python -m pytest -m "not timing" $(PYTEST_ARGS)

# Checks that measure speed or capacity (calibrate run twice, 1,000 services fresh within a bound):
# their verdict depends on the machine's other load, so they run on a quiet machine, on demand.
test-timing: setup
	$(BIN)/python -m pytest -m timing $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not prometheus and not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/tokenscale demo

# Generated files: regenerate, then `make test` checks them for drift.
crds: $(STAMP)
	$(BIN)/tokenscale crd > crds/tokenscale.io_inferenceservices.yaml
	cp crds/tokenscale.io_inferenceservices.yaml charts/tokenscale/files/crds/
	$(BIN)/tokenscale crd --reference > docs/configuration.md

manifests: crds
	$(BIN)/tokenscale render-install > manifests/install.yaml

bench: setup
	$(BIN)/python bench/server_throughput.py
	$(BIN)/python bench/operator_scale.py
	$(BIN)/tokenscale bench autoscaling

# Both images built with Debian's buildah (chroot isolation) on a Debian base made by debootstrap;
# then the server image answers one completion with the tiny model. Not part of `make test`: it
# takes minutes and needs root (apt-get installs buildah and debootstrap if missing) and network
# access to Debian's mirror and PyPI. See docs/server.md.
image-check:
	PYTHON="$$(test -x $(BIN)/python && echo $(BIN)/python || echo $(PYTHON))" bash scripts/image-check.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

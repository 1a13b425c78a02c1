# wif — see README.md. `make demo` runs the whole thing; `make test` runs every test.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT  := $(CURDIR)
CACHE ?= $(ROOT)/.cache
export CARGO_TARGET_DIR ?= $(ROOT)/target
export GOCACHE ?= $(CACHE)/go/build
export GOMODCACHE ?= $(CACHE)/go/mod
export GOTOOLCHAIN := local
export CARGO_TERM_COLOR ?= never

WIF := $(CARGO_TARGET_DIR)/debug/wif
WIF_RELEASE := $(CARGO_TARGET_DIR)/release/wif

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## build and run the whole chain locally, printing each step
	@scripts/demo.sh

.PHONY: test
test: lint unit e2e ## everything CI runs: fmt, clippy, unit tests, end-to-end tests

.PHONY: lint
lint: ## cargo fmt --check and clippy -D warnings
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

VENV := $(CACHE)/venv
export WIF_PYTHON ?= $(VENV)/bin/python

.PHONY: venv
venv: $(VENV)/.installed ## Python virtualenv with azure-identity (the real SDK the emulator is checked against)
$(VENV)/.installed: requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

.PHONY: unit
unit: venv ## unit, property, HTTP-level and emulator tests (incl. Python azure-identity)
	cargo test --workspace --exclude wif-e2e

.PHONY: build
build: ## debug build of the wif binary
	cargo build -p wif

.PHONY: release
release: ## optimised build of the wif binary
	cargo build --release -p wif

.PHONY: controlplane
controlplane: ## build (or reuse) the Go test control plane
	@e2e/controlplane/build.sh >/dev/null

.PHONY: e2e
e2e: build controlplane ## end-to-end tests through a real kube-apiserver
	WIF_BIN=$(WIF) WIF_CONTROLPLANE_BIN=$$(e2e/controlplane/build.sh) \
	  cargo test -p wif-e2e -- --test-threads=2

.PHONY: bench
bench: ## benchmarks (loopback only, bounded in time); figures in bench/results/*.json
	scripts/bench-webhook.sh
	cargo bench -p wif-webhook --bench mutate -- --noplot
	cargo bench -p wif-exchange --bench exchange -- --noplot
	cargo run --release -p wif-exchange --example bench_exchange

.PHONY: fuzz
fuzz: ## fuzz the admission decoder + mutation for FUZZ_SECONDS (default 60)
	scripts/fuzz.sh $${FUZZ_SECONDS:-60}

.PHONY: clean
clean: ## remove build outputs (keeps downloaded modules)
	cargo clean

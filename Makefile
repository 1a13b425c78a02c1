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
demo: venv venv-az ## build and run the whole chain locally, printing each step
	@scripts/demo.sh

.PHONY: test
test: lint deny unit e2e ## everything CI runs: fmt, clippy, cargo-deny, unit tests, end-to-end tests

.PHONY: lint
lint: ## cargo fmt --check and clippy -D warnings
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

.PHONY: deny
deny: ## cargo-deny: licences, duplicate versions, sources (advisories need a network database: not run)
	@command -v cargo-deny >/dev/null || cargo install cargo-deny --locked
	cargo deny check licenses bans sources

VENV := $(CACHE)/venv
export WIF_PYTHON ?= $(VENV)/bin/python

.PHONY: venv
venv: $(VENV)/.installed ## Python virtualenv with azure-identity, azure-mgmt-msi, msgraph-sdk (checked against the emulator)
$(VENV)/.installed: requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

VENV_AZ := $(CACHE)/venv-az
export WIF_AZ ?= $(VENV_AZ)/bin/az

.PHONY: venv-az
venv-az: $(VENV_AZ)/.installed ## azure-cli in its own virtualenv (the tests and the demo point az at the emulator)
$(VENV_AZ)/.installed: requirements-az.txt
	python3 -m venv $(VENV_AZ)
	$(VENV_AZ)/bin/pip install --quiet --disable-pip-version-check -r requirements-az.txt
	touch $@

.PHONY: unit
unit: venv venv-az helm ## unit, property, HTTP-level and emulator tests, incl. those needing Python (azure-identity, the SDKs, az) or helm
	cargo test --workspace --exclude wif-e2e -- --include-ignored
	cargo test -p wif-exchange --features azure_core --test azure_core

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
e2e: node-deps build controlplane venv ## end-to-end tests through a real kube-apiserver (Python azure-identity included) and a real node (as root)
	images=$$(scripts/images.sh | tail -1); \
	WIF_BIN=$(WIF) WIF_CONTROLPLANE_BIN=$$(e2e/controlplane/build.sh) WIF_E2E_IMAGES=$$images \
	  cargo test -p wif-e2e -- --include-ignored --test-threads=2

.PHONY: images
images: ## OCI archives for the test node (wif as the Dockerfile builds it, pause, test client); prints their directory
	@scripts/images.sh | tail -1

.PHONY: node-deps
node-deps: ## Debian packages the test node needs (containerd, runc, CNI plugins, nftables), if missing
	@scripts/node-deps.sh

.PHONY: bench
bench: bench-controller bench-memory ## benchmarks (loopback only, bounded in time); figures in bench/results/*.json
	scripts/bench-webhook.sh
	cargo bench -p wif-webhook --bench mutate -- --noplot
	cargo bench -p wif-exchange --bench exchange -- --noplot
	cargo run --release -p wif-exchange --example bench_exchange

.PHONY: bench-controller
bench-controller: release controlplane ## controller: BENCH_BINDINGS (1000) over BENCH_IDENTITIES (50), 50 ms + 5 % 429; BENCH_STEADY_SECONDS (300); then the same through one pool (key pool)
	WIF_BIN=$(WIF_RELEASE) WIF_CONTROLPLANE_BIN=$$(e2e/controlplane/build.sh) \
	  cargo run --release -p wif-e2e --example bench_controller -- \
	  --bindings $${BENCH_BINDINGS:-1000} --identities $${BENCH_IDENTITIES:-50} \
	  --steady-seconds $${BENCH_STEADY_SECONDS:-300} \
	  --out $${BENCH_OUT:-bench/results/controller.json}
	WIF_BIN=$(WIF_RELEASE) WIF_CONTROLPLANE_BIN=$$(e2e/controlplane/build.sh) \
	  cargo run --release -p wif-e2e --example bench_controller -- --pool \
	  --bindings $${BENCH_BINDINGS:-1000} --identities $${BENCH_IDENTITIES:-50} \
	  --steady-seconds $${BENCH_POOL_STEADY_SECONDS:-60} \
	  --out $${BENCH_OUT:-bench/results/controller.json}

.PHONY: bench-burst
bench-burst: release controlplane ## 2000 labelled pods by 50 clients through kube-apiserver: no webhook, a do-nothing webhook, wif HTTP/1.1, wif HTTP/2
	cargo build --release -p wif-webhook --example bench_tls
	WIF_BIN=$(WIF_RELEASE) WIF_CONTROLPLANE_BIN=$$(e2e/controlplane/build.sh) \
	  WIF_BENCH_TLS=$(CARGO_TARGET_DIR)/release/examples/bench_tls \
	  cargo run --release -p wif-e2e --example bench_burst -- \
	  --pods $${BENCH_PODS:-2000} --clients $${BENCH_CLIENTS:-50} --out bench/results/burst.json

.PHONY: bench-memory
bench-memory: release controlplane ## webhook RSS and ready time with 0, 10,000 and 100,000 ServiceAccounts
	WIF_BIN=$(WIF_RELEASE) WIF_CONTROLPLANE_BIN=$$(e2e/controlplane/build.sh) \
	  cargo run --release -p wif-e2e --example bench_memory -- \
	  --counts $${BENCH_SA_COUNTS:-0,10000,100000} --out bench/results/memory.json

.PHONY: fuzz
fuzz: ## every fuzz target (admission, assertion, emulator_requests) for FUZZ_SECONDS each (default 60)
	scripts/fuzz.sh $${FUZZ_SECONDS:-60}

.PHONY: clean
clean: ## remove build outputs (keeps downloaded modules)
	cargo clean

.PHONY: tools
tools: controlplane helm ## the Go-built tools the tests use (control plane, helm), cached by version

.PHONY: go-clean
go-clean: ## delete Go's build and module caches (GBs; the built tools are kept)
	go clean -cache -modcache

# --- packaging: Helm chart, rendered manifests, CRDs, image ----------------------------------

export HELM_VERSION ?= v3.19.5
HELM_VALUES := --set azure.tenantId=00000000-0000-0000-0000-000000000000 \
  --set controller.clientId=11111111-1111-1111-1111-111111111111

.PHONY: helm
helm: ## build (or reuse) helm $(HELM_VERSION) from its Go module into .cache/bin
	@scripts/install-helm.sh >/dev/null

.PHONY: crds
crds: build ## regenerate charts/wif/crds/ with `wif crd`
	WIF_BIN=$(WIF) scripts/crds.sh

.PHONY: manifests
manifests: helm ## render manifests/wif.yaml from the chart's default values
	scripts/manifests.sh

.PHONY: check-manifests
check-manifests: helm build ## fail when charts/wif/crds/ or manifests/ differ from what the sources generate
	WIF_BIN=$(WIF) scripts/crds.sh --check
	scripts/manifests.sh --check

.PHONY: chart-lint
chart-lint: helm ## helm lint --strict (every cert mode)
	@helm=$$(scripts/install-helm.sh); for mode in selfManaged certManager; do \
	  $$helm lint charts/wif --strict --quiet $(HELM_VALUES) --set certs.mode=$$mode; done

.PHONY: static
static: ## the static x86_64-unknown-linux-musl binary the Dockerfile builds
	scripts/build-static.sh

.PHONY: docker-lint
docker-lint: ## hadolint and consistency checks of the Dockerfile (no Docker engine needed)
	scripts/check-dockerfile.sh

.PHONY: packaging
packaging: check-manifests chart-lint docker-lint static ## everything CI checks about packaging

test: packaging
e2e: helm

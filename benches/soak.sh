#!/usr/bin/env bash
# Bounded soak under faults: the whole gateway on loopback (Envoy with the
# release filter, the control plane minting managed keys, maas-limiter on
# Redis for the global limits, the inference server with SmolLM2) under
# mixed traffic from 7 keys (plain completions, complete streams, streams
# the client drops after 1-3 events), with limits small enough that 429s are
# common, while the limiter, Redis, the control plane and the inference
# server are each killed (SIGKILL) and restarted on their ports on a
# schedule. Then four ledgers are compared with the clients' own record:
# the audit log, the filter's metrics, the inference server's token
# counters (read before each of its kills) and the limiter's counters in
# Redis (read before each Redis kill). See benches/examples/soak.rs and
# benches/src/soak/.
#
# Prints a Markdown table; exits 1 when a target is missed (a window charged
# past its limit, a lost or doubled charge, a request admitted while its
# limiter was down), with the reasons on stderr.
#
# Usage: ./benches/soak.sh   (`make bench` runs it; ~3.5 min)
# Knobs (environment): SOAK_SECONDS=150 (traffic; the fault schedule is fixed
#   at 20-108 s unless SOAK_SCALE stretches both) SOAK_SCALE=1.0
#   SOAK_REQUESTS=5000 SOAK_DIR=target/soak SKIP_BUILD=1
# Output: the table on stdout and in $SOAK_DIR/report.md; the audit log,
#   the clients' record (sent.tsv), the fault timeline (faults.tsv), Envoy's
#   stats and every process's log beside it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

CARGO=${CARGO:-cargo}
export SOAK_DIR=${SOAK_DIR:-$ROOT/target/soak}
# Exported: testkit's harness in the soak starts these.
export MAAS_ENVOY=${MAAS_ENVOY:-$ROOT/.cache/envoy/1.40.0/envoy/_bin/envoy}
export MAAS_FILTER_WASM=${MAAS_FILTER_WASM:-$ROOT/target/wasm32-wasip1/release/maas_filter.wasm}
export MAAS_INFERENCE_SERVER=${MAAS_INFERENCE_SERVER:-$ROOT/target/serve/inference-server}
export MAAS_CONTROL_PLANE=${MAAS_CONTROL_PLANE:-$ROOT/target/serve/maas-control-plane}
export MAAS_LIMITER=${MAAS_LIMITER:-$ROOT/target/serve/maas-limiter}
export MAAS_REDIS_SERVER=${MAAS_REDIS_SERVER:-$ROOT/.cache/redis/7.0.15/bin/redis-server}
export MAAS_MODEL_DIR=${MAAS_MODEL_DIR:-$ROOT/.cache/models}
SOAK=$ROOT/target/release/examples/soak

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'soak.sh: %s\n' "$*" >&2; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  [ -x "$MAAS_ENVOY" ] || ./scripts/fetch-envoy.sh
  [ -x "$MAAS_REDIS_SERVER" ] || ./scripts/redis.sh
  [ -f "$MAAS_MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf" ] || ./scripts/fetch-model.sh
  say "$CARGO build --profile serve --locked -p maas-inference-server -p maas-control-plane -p maas-limiter"
  "$CARGO" build --profile serve --locked -p maas-inference-server -p maas-control-plane -p maas-limiter
  say "$CARGO build --release --locked --target wasm32-wasip1 -p maas-filter"
  "$CARGO" build --release --locked --target wasm32-wasip1 -p maas-filter
  say "$CARGO build --release --locked -p maas-benches --example soak"
  "$CARGO" build --release --locked -p maas-benches --example soak
fi
for file in "$SOAK" "$MAAS_ENVOY" "$MAAS_FILTER_WASM" "$MAAS_INFERENCE_SERVER" "$MAAS_CONTROL_PLANE" \
  "$MAAS_LIMITER" "$MAAS_REDIS_SERVER" "$MAAS_MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"; do
  [ -f "$file" ] || die "missing $file (run without SKIP_BUILD=1, or make setup wasm server)"
done

# The soak owns every process it starts (they die with it); it clears
# $SOAK_DIR itself.
printf '%s, %s; `%s`\n\n' "$(date -u +%Y-%m-%dT%H:%MZ)" \
  "$(nproc --all) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1))" \
  "./benches/soak.sh"
"$SOAK"

#!/usr/bin/env bash
# The inference server under streaming load: prefill rate (~200-token prompt),
# decode rate of one stream, and aggregate throughput at 1, 4, 8 and 16
# concurrent streams, all in one run against the `serve` build, then the same
# suite against llama.cpp's llama-server (built once by scripts/llama-cpp.sh,
# ~11 min, cached; PEER=none skips it) and the comparison with ratios; for
# every format: the embedded SmolLM2-135M-Instruct Q4_1, its Q4_K_M, Q5_K_M,
# Q6_K and Q8_0 requantizations (scripts/reference-models.sh) and Gemma 3
# 270M Q4_K_M (MAAS_BENCH_MODELS="a.gguf b.gguf" picks others), ending with
# one table of every format; and, on our server alone, the cost of
# constrained decoding (json_schema streams against plain ones). Prints a
# markdown report (also written to target/inference-bench/report.md);
# BENCHMARKS.md records the latest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
"$ROOT/scripts/fetch-model.sh"
if [ -z "${MAAS_BENCH_MODELS:-}" ]; then
  reference=$("$ROOT/scripts/reference-models.sh" | tail -n 1)
  models="$ROOT/.cache/models"
  MAAS_BENCH_MODELS="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
  for format in Q4_K_M Q5_K_M Q6_K Q8_0; do
    MAAS_BENCH_MODELS+=" $reference/SmolLM2-135M-Instruct.$format.gguf"
  done
  MAAS_BENCH_MODELS+=" $models/gemma-3-270m-q4_k_m.gguf"
fi
export MAAS_BENCH_MODELS
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  "$CARGO" build --profile serve --locked -p maas-inference-server -p maas-benches --example inference-bench
fi
export MAAS_INFERENCE_SERVER=${MAAS_INFERENCE_SERVER:-$ROOT/target/serve/inference-server}
if [ "${PEER:-llama.cpp}" = llama.cpp ]; then
  MAAS_LLAMA_SERVER=$("$ROOT/scripts/llama-cpp.sh" | tail -n 1)
  export MAAS_LLAMA_SERVER
fi
mkdir -p target/inference-bench
echo "==> inference bench ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
"$ROOT/target/serve/examples/inference-bench" | tee target/inference-bench/report.md

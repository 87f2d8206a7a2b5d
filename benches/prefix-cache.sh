#!/usr/bin/env bash
# Issue 18's "shared system prompt" workload: time to first token when 8
# concurrent clients send one common ~1,500-token prefix and a short distinct
# question each (raw-text streamed /v1/completions, 16 tokens, temperature 0;
# a cold warm-up with the prefix alone, then 3 rounds), on our server with its
# prefix cache, ours with --no-prefix-caching, and llama.cpp's llama-server
# with -np 8 and its prompt cache (built once by scripts/llama-cpp.sh, ~11
# min, cached; PEER=none skips it), each started fresh on a loopback port on
# the same model file and cores. Ratios: no cache / cache (target ≥ 5×) and
# llama-server / ours with the cache. The embedded SmolLM2-135M-Instruct
# Q4_1 unless MAAS_BENCH_MODELS="a.gguf b.gguf"; MAAS_PREFIX_BENCH_ONLY=llama
# (or cache, no-cache, comma-separated) runs only those setups; SKIP_BUILD=1
# uses the binaries already built. Prints a markdown report (also written to
# target/inference-bench/prefix-cache.md; the servers' logs beside it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
"$ROOT/scripts/fetch-model.sh"
export MAAS_BENCH_MODELS=${MAAS_BENCH_MODELS:-$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  "$CARGO" build --profile serve --locked -p maas-inference-server -p maas-benches --example prefix-cache-bench
fi
export MAAS_INFERENCE_SERVER=${MAAS_INFERENCE_SERVER:-$ROOT/target/serve/inference-server}
if [ "${PEER:-llama.cpp}" = llama.cpp ]; then
  MAAS_LLAMA_SERVER=$("$ROOT/scripts/llama-cpp.sh" | tail -n 1)
  export MAAS_LLAMA_SERVER
fi
mkdir -p target/inference-bench
echo "==> prefix-cache bench ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))" >&2
"$ROOT/target/serve/examples/prefix-cache-bench"

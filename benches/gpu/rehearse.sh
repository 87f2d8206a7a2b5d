#!/usr/bin/env bash
# Here, without a GPU: plays the device calls that pack.sh prints, on this
# machine, with stand-ins, so a broken script shows before a GPU session
# spends its minutes on it.
#   - each call sees only the stage folder its `carry` names (hard-linked
#     copies), and the calls share the work folder, as a warm machine's /tmp;
#   - the CUDA build runs against the link stubs scripts/build-cuda.sh made
#     (named by their sonames here), which load but must never be called:
#     DEVICE=candle-cpu (the device code path on candle's CPU backend) stands
#     in for cuda, and stage 1 only lists the PTX instead of loading it;
#   - the transformers peer runs only where torch is installed (then on the
#     CPU), and records that it was skipped otherwise.
# Results in target/gpu-rehearsal/out2/results.md. About a minute on 2 cores
# (STREAMS, CPU_STREAMS, MAX_TOKENS override the small defaults).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
R=$ROOT/target/gpu-rehearsal
[ -f target/gpu-pack/stage1/SHA256SUMS ] || { echo "nothing packed: run benches/gpu/pack.sh first" >&2; exit 1; }
lib=$(ls -d .cache/cuda/*/nvidia/cu13/lib 2>/dev/null | head -n 1)
[ -f "$lib/.stubs-complete" ] || { echo "no link stubs in .cache/cuda: make server-cuda makes them" >&2; exit 1; }
rm -rf "$R"
mkdir -p "$R/stubs" "$R/call1" "$R/call2"
for pair in cuda:libcuda.so.1 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 curand:libcurand.so.10 \
  nvrtc:libnvrtc.so.13; do
  ln -s "$ROOT/$lib/lib${pair%%:*}.so" "$R/stubs/${pair#*:}"
done
ln -s "$ROOT/$lib/libcudart.so.13" "$R/stubs/"
cp -al target/gpu-pack/stage1 "$R/call1/"
if grep -q '1 call' target/gpu-pack/stage1/pack.txt; then
  cp -al target/gpu-pack/stage2 "$R/call1/" # one call carries both
else
  cp -al target/gpu-pack/stage2 "$R/call2/"
fi
export WORK=$R/machine-tmp EXTRA_LD_PATH=$R/stubs PTX_PROBE=list DEVICE=candle-cpu KV_MEMORY=1GiB
export STREAMS=${STREAMS:-"1 2"} CPU_STREAMS=${CPU_STREAMS:-"1 2"} MAX_TOKENS=${MAX_TOKENS:-32}
export THREADS=${THREADS:-$(nproc)} PORT=${PORT:-18000}
if grep -q '1 call' target/gpu-pack/stage1/pack.txt; then
  echo "==> the one call: run.sh" >&2
  PACK=$R/call1 OUT=$R/out2 bash benches/gpu/run.sh >"$R/console.txt" 2>&1
else
  echo "==> call 1: stage1.sh (carries stage1/ only)" >&2
  PACK=$R/call1 OUT=$R/out1 bash benches/gpu/stage1.sh >"$R/console.txt" 2>&1
  echo "==> call 2: run.sh (carries stage2/ only)" >&2
  PACK=$R/call2 OUT=$R/out2 bash benches/gpu/run.sh >>"$R/console.txt" 2>&1
fi
echo "==> what came back: $(ls "$R/out2" | tr '\n' ' ')" >&2
echo "$R/out2/results.md"

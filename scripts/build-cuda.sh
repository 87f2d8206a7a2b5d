#!/usr/bin/env bash
# Builds the inference server with `--features cuda` into target/cuda/serve/.
#
# * nvcc comes from scripts/cuda-toolkit.sh (pinned PyPI wheels, cached).
# * candle's kernels are compiled for CUDA_COMPUTE_CAP (default 90: H100 and
#   H200); set it for other GPUs (80 for A100, 89 for L4/L40S). That step
#   takes over 15 minutes on 2 cores; target/cuda caches it.
# * cudarc links the driver and CUDA's math libraries by name. Building needs
#   only their link interface, so this script generates link stubs (the
#   symbols cudarc's object code references, each library under its real
#   soname) into the toolkit's lib/stubs, the place a CUDA toolkit keeps its
#   own. At run time the real libraries must be on the loader path: the
#   driver's libcuda.so.1, and libcublas.so.13, libcublasLt.so.13,
#   libcurand.so.10, libnvrtc.so.13 from a CUDA 13 install (or the PyPI
#   wheels nvidia-cublas, nvidia-curand, nvidia-cuda-nvrtc with
#   LD_LIBRARY_PATH pointing at their lib/ folders).
# * The PTX the binary embeds must load on the oldest driver we support: the
#   R580 branch (CUDA 13.0), which takes PTX ISA `.version` 9.0 at most. The
#   build fails, naming the offending version, if any embedded PTX is newer
#   (MAX_PTX_VERSION overrides the ceiling for a newer fleet).
# Not part of `make test`: the default build and every test run without it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
toolkit=$(./scripts/cuda-toolkit.sh | tail -n 1)
export PATH="$toolkit/bin:$PATH"
export CUDA_ROOT="$toolkit"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
target="$root/target/cuda"
build=(cargo build --profile serve --locked -p maas-inference-server --features cuda --target-dir "$target")

echo "==> compiling the library (candle's CUDA kernels for sm_$CUDA_COMPUTE_CAP: over 15 minutes on 2 cores the first time)" >&2
"${build[@]}" --lib

# cudarc's build script searches the toolkit's lib/ (it exists from the
# start; a stubs/ folder made later would not be seen without rerunning it).
stubs="$toolkit/lib"
# The release profile's LTO leaves the dependencies as LLVM bitcode, which
# binutils cannot read; the linker's own list of what it could not resolve
# is the exact set of symbols the stubs must define.
# The stubs hold for the cudarc and candle versions they were made for.
# Our own code may call more of the driver (cuMemGetInfo for
# --kv-cache-memory N%): a link that then fails on an undefined symbol
# makes them again below.
stamp=$(grep -A1 -E '^name = "(cudarc|candle-[a-z]+)"' Cargo.lock | sha256sum | cut -c1-16)
make_stubs() {
  echo "==> finding the CUDA symbols the binary links" >&2
  # The CUDA runtime is in the wheels; only its unversioned link name is not.
  ln -sf libcudart.so.13 "$stubs/libcudart.so"
  # Empty libraries first: without them the linker stops at `-lcuda`
  # before it lists any symbol.
  for lib in nvrtc cublasLt cublas curand cuda; do
    echo >"$stubs/empty.c"
    gcc -shared -fPIC -o "$stubs/lib$lib.so" "$stubs/empty.c"
  done
  rm -f "$stubs/empty.c"
  log="$target/link-attempt.log"
  # lld stops listing after 20 errors unless told otherwise; the flag goes
  # to this one link only (`cargo rustc`), so nothing else rebuilds.
  cargo rustc --profile serve --locked -p maas-inference-server --features cuda \
    --target-dir "$target" --bin inference-server -- -C link-arg=-Wl,--error-limit=0 \
    >"$log" 2>&1 || true
  symbols=$({ grep -oE "undefined (reference to|symbol:) .?[A-Za-z0-9_]+" "$log" || true; } |
    sed -E "s/^undefined (reference to .|symbol: )//" | sort -u)
  if [ -z "$symbols" ] && ! grep -q "Finished" "$log"; then
    echo "the build failed for another reason than missing CUDA libraries:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  echo "==> generating link stubs into $stubs" >&2
  # library, soname, symbol pattern (first match wins: cublasLt before cublas)
  while read -r lib soname pattern; do
    src="$stubs/$lib.c"
    : >"$src"
    for sym in $(grep -E "$pattern" <<<"$symbols" || true); do
      echo "void $sym(void) {}" >>"$src"
    done
    symbols=$(grep -vE "$pattern" <<<"$symbols" || true)
    gcc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/lib$lib.so" "$src"
    echo "    lib$lib.so ($soname): $(wc -l <"$src") symbols" >&2
  done <<'EOF'
nvrtc libnvrtc.so.13 ^nvrtc
cublasLt libcublasLt.so.13 ^cublasLt
cublas libcublas.so.13 ^cublas
curand libcurand.so.10 ^curand
cuda libcuda.so.1 ^cu
EOF
  if [ -n "$symbols" ]; then
    echo "unresolved symbols outside the CUDA libraries: $symbols" >&2
    exit 1
  fi
  echo "$stamp" >"$stubs/.stubs-complete"
}
if [ "$(cat "$stubs/.stubs-complete" 2>/dev/null)" != "$stamp" ]; then
  make_stubs
fi

echo "==> linking inference-server with CUDA" >&2
link_log="$target/link.log"
# A pipeline, not a process substitution: tee has written all of the log
# by the time grep reads it.
if ! "${build[@]}" 2>&1 | tee "$link_log" >&2; then
  grep -q "undefined symbol" "$link_log" || exit 1
  echo "==> the binary links CUDA symbols the stubs lack: making them again" >&2
  make_stubs
  "${build[@]}"
fi
binary="$target/serve/inference-server"

./scripts/ptx-check.sh "$binary" >&2
echo "$binary"

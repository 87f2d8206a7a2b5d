# Sourced by stage1.sh and run.sh (GPU machine): paths, logging, the CUDA
# library search. Not executable on its own.

GPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$GPU_DIR/../.." && pwd)
# What pack.sh made here, carried to the GPU machine by `run`'s carry list.
PACK=${PACK:-$ROOT/target/gpu-pack}
# Outside the repository copy: a warm machine keeps /tmp between the two
# calls, while the repository copy is laid anew for each call.
W=${WORK:-/tmp/maas}
OUT=${OUT:-/tmp/out}
T0=${T0:-$(date +%s)}
# The driver's JIT cache (~/.nv/ComputeCache) keeps what stage 1's PTX probe
# compiled for the server's first request: room for all of it (the binary
# embeds 10.5 MB of PTX).
export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
export T0
say() { echo "[$(basename "$0" .sh) $(($(date +%s) - T0))s] $*"; }

# The Python that has torch on the GPU machine (a plain python3 elsewhere).
PY=python3
[ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3

# find_cuda_libs: prints a LD_LIBRARY_PATH for the binary: one folder per
# library it links (cuBLAS and cuBLASLt come together), the driver's
# libcuda.so.1, then EXTRA_LD_PATH (link stubs for a rehearsal without a
# GPU). The CUDA 13 libraries live in the torch venv's nvidia wheels there:
# that folder is searched first (fast); the broad search over /opt, /usr and
# /usr/local only for what it lacks. Stub folders are never taken.
find_cuda_libs() {
  local libs=(libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13)
  local names=() site found="" missing=0 d lib dirs=() ld=""
  for lib in "${libs[@]}"; do names+=(-o -name "$lib"); done
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
  if [ -n "$site" ] && [ -d "$site/nvidia" ]; then
    found=$(find "$site/nvidia" -path '*/stubs' -prune -o \( -false "${names[@]}" \) -print 2>/dev/null | sort || true)
  fi
  for lib in "${libs[@]}"; do grep -q "/$lib\$" <<<"$found" || missing=1; done
  if [ "$missing" = 1 ]; then
    found+=$'\n'$(timeout 30 find /opt /usr /usr/local -path '*/stubs' -prune -o \( -false "${names[@]}" \) -print \
      2>/dev/null | sort || true)
  fi
  for lib in "${libs[@]}"; do
    d=$(grep "/$lib\$" <<<"$found" | head -n 1 | xargs -r dirname || true)
    echo "  $lib: ${d:-NOT FOUND}" >&2
    if [ -n "$d" ]; then dirs+=("$d"); fi
  done
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
    if [ -e "$d/libcuda.so.1" ]; then dirs+=("$d"); fi
  done
  d=$(ldconfig -p 2>/dev/null | grep -m1 'libcuda\.so\.1 ' | sed 's/.*=> //' | xargs -r dirname || true)
  echo "  libcuda.so.1 (ldconfig): ${d:-none}" >&2
  if [ -n "$d" ]; then dirs+=("$d"); fi
  if [ -n "${EXTRA_LD_PATH:-}" ]; then dirs+=("$EXTRA_LD_PATH"); fi
  for d in "${dirs[@]}"; do case ":$ld:" in *":$d:"*) ;; *) ld="${ld:+$ld:}$d" ;; esac; done
  echo "$ld"
}

# gpu_present: whether an NVIDIA GPU answers here (else: a rehearsal).
gpu_present() { command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi -L >/dev/null 2>&1; }

#!/usr/bin/env bash
# GPU machine, call 1 of 2 (see benches/gpu/pack.sh, which prints the exact
# calls). The model and the binary together exceed what one `run` call
# carries (64 MiB, the repository included), so this call brings the binary
# and the first part of the model, and the next call (run.sh) the rest. It
# parks everything in /tmp/maas, which a warm machine keeps between calls,
# and spends its time on what needs no model:
#   - unpacks and checksums the CUDA build of inference-server;
#   - describes the machine (GPU, driver, CUDA libraries, glibc, cores);
#   - finds the CUDA 13 libraries and checks that the binary resolves them;
#   - loads every PTX module the binary embeds through the driver
#     (ptxprobe.py): the verdict for the R580 driver, and the JIT's results
#     land in the driver's cache, so the server's first request is quick.
# Writes $OUT/stage1.txt. Hard cap STAGE1_CAP seconds (default 120).
set -euo pipefail
if [ -z "${_STAGE1_CAPPED:-}" ]; then
  _STAGE1_CAPPED=1 exec timeout -k 5 "${STAGE1_CAP:-120}" bash "$0" "$@"
fi
source "$(dirname "$0")/common.sh"
S1=$PACK/stage1
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/stage1.txt") 2>&1

say "on $(hostname) $(date -u +%FT%TZ); work folder $W"
[ -f "$S1/SHA256SUMS" ] || { say "no $S1/SHA256SUMS: carry target/gpu-pack/stage1 (made by benches/gpu/pack.sh)"; exit 1; }
cat "$S1/pack.txt" 2>/dev/null || true
rm -f "$W/stage1.done"
cp -f "$S1/SHA256SUMS" "$S1/pack.txt" "$W"/
# A warm machine may hold parts of an earlier pack: start clean.
rm -f "$W"/model.gguf.part-* "$W/model.gguf"
if compgen -G "$S1/model.gguf.part-*" >/dev/null; then cp -f "$S1"/model.gguf.part-* "$W"/; fi

say "unpacking the binary"
if command -v xz >/dev/null; then
  xz -dc "$S1/inference-server.xz" >"$W/inference-server"
else # the image is not ours: Python's lzma does the same
  "$PY" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' \
    "$S1/inference-server.xz" "$W/inference-server"
fi
chmod +x "$W/inference-server"
(cd "$W" && grep ' inference-server$' SHA256SUMS | sha256sum --check -) || { say "BINARY CHECKSUM MISMATCH"; exit 1; }

echo "== machine"
if gpu_present; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
else
  echo "no GPU answers here (nvidia-smi missing or failing): a rehearsal"
fi
echo "cores: $(nproc); $(ldd --version | head -n 1); python: $PY ($("$PY" --version 2>&1))"
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1 | tail -n 1 || true
command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not on PATH"

echo "== CUDA libraries"
LD=$(find_cuda_libs)
echo "$LD" >"$W/ld-path"
echo "LD_LIBRARY_PATH=$LD"
LD_LIBRARY_PATH="$LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$W/inference-server" >"$W/ldd.txt" 2>&1 || true
grep -E 'cu|nvrtc|not found' "$W/ldd.txt" || true
if grep -q "not found" "$W/ldd.txt"; then say "ldd: SOME LIBRARIES NOT FOUND: the server cannot start (see above)"; fi

echo "== PTX"
# PTX_PROBE=auto loads the modules where a GPU answers, else only lists them.
mode=${PTX_PROBE:-auto}
[ "$mode" = auto ] && { gpu_present && mode=load || mode=list; }
probe=("$GPU_DIR/ptxprobe.py" --binary "$W/inference-server")
[ "$mode" = list ] && probe+=(--extract-only)
probe+=("$GPU_DIR"/probe/*.ptx)
if LD_LIBRARY_PATH="$LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout 90 "$PY" "${probe[@]}" >"$W/ptxprobe.txt" 2>&1; then
  say "PTX probe ($mode): ok"
else
  say "PTX probe ($mode): FAILED (exit $?)"
fi
cat "$W/ptxprobe.txt"

date +%s >"$W/stage1.done"
say "stage 1 done: $(ls "$W" | tr '\n' ' ')"

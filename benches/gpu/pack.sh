#!/usr/bin/env bash
# Here, on the CPU machine: packs what the GPU bench needs into
# target/gpu-pack/ (ignored by git, carried by the device tool's `run`) and
# prints the exact `run` calls for the session that is lent a GPU machine.
# Builds nothing: the CUDA build comes from `make server-cuda`.
#
# What travels, and why in two calls: one `run` call carries at most 64 MiB,
# the repository's own files included. The binary packs to ~7 MiB with
# `xz -9`, but the bench model (SmolLM2-135M-Instruct Q4_1, the one every
# CPU figure in BENCHMARKS.md uses) is 94 MiB and compresses by under 9 %
# (xz -9 or zstd -19: 86 MiB), so the model is split between two calls on the
# same warm machine: stage1/ (binary + first part) then stage2/ (the rest +
# the gguf wheel the transformers peer reads GGUF with). When everything fits
# in one call (a smaller MODEL=), it says so and prints one call.
#
#   benches/gpu/pack.sh                 # BIN=, MODEL= override the defaults
#
# The one network access: the pinned `gguf` wheel from PyPI through pip, once
# into .cache/downloads (GGUF_WHEEL=/path/to.whl uses a copy you have;
# PEER=none packs without it and the GPU run then skips the peer).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BIN=${BIN:-target/cuda/serve/inference-server}
MODEL=${MODEL:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PACK=target/gpu-pack
LIMIT=$((64 * 1024 * 1024))
# Room left in each call for files added to the repository after packing.
MARGIN=$((2 * 1024 * 1024))
GGUF_WHEEL_FILE=gguf-0.19.0-py3-none-any.whl
GGUF_WHEEL_SHA256=70bcd10edfe697fb2dad6e40af2234b9d8ece9a41a99761405121ebda1c3c1cd

[ -f "$BIN" ] || { echo "no $BIN: build it first with \`make server-cuda\` (scripts/build-cuda.sh; over 15 min on 2 cores the first time)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "no $MODEL: \`make model\` fetches it" >&2; exit 1; }
git check-ignore -q "$PACK" || { echo "$PACK is not ignored by git: it must not travel as a tracked file" >&2; exit 1; }
# The build checks this too; a binary from before that check must not travel.
./scripts/ptx-check.sh "$BIN" >&2
newer=$(find inference-server/src inference-server/cuda inference-server/build.rs inference-server/Cargo.toml \
  kernels/src Cargo.lock -newer "$BIN" -type f 2>/dev/null | head -n 5 || true)
if [ -n "$newer" ]; then
  echo "WARNING: sources changed since $BIN was built (make server-cuda rebuilds it):" >&2
  echo "$newer" | sed 's/^/    /' >&2
fi

mkdir -p "$PACK/cache"
bin_sha=$(sha256sum "$BIN" | cut -d' ' -f1)
if [ "$(cat "$PACK/cache/inference-server.sha256" 2>/dev/null)" != "$bin_sha" ]; then
  echo "==> xz -9 $BIN ($(($(stat -c %s "$BIN") / 1048576)) MiB; about a minute)" >&2
  xz -9 -T0 -c "$BIN" >"$PACK/cache/inference-server.xz.tmp"
  mv "$PACK/cache/inference-server.xz.tmp" "$PACK/cache/inference-server.xz"
  echo "$bin_sha" >"$PACK/cache/inference-server.sha256"
fi
model_sha=$(sha256sum "$MODEL" | cut -d' ' -f1)

wheel=""
if [ "${PEER:-hf}" != none ]; then
  if [ -n "${GGUF_WHEEL:-}" ]; then
    wheel=$GGUF_WHEEL
    [ "$(sha256sum "$wheel" | cut -d' ' -f1)" = "$GGUF_WHEEL_SHA256" ] || {
      echo "$wheel: sha256 is not the pinned $GGUF_WHEEL_SHA256" >&2
      exit 1
    }
  else
    # shellcheck source=../../scripts/wheel.sh
    . scripts/wheel.sh
    wheel=$(fetch_wheel "$GGUF_WHEEL_FILE" "$GGUF_WHEEL_SHA256" \
      "$GGUF_WHEEL_FILE (the transformers peer reads GGUF through it)" gguf==0.19.0)
  fi
fi

# What travels besides the carried folders: tracked files and untracked
# files git does not ignore (as they are now: benches/gpu/ itself included).
tree=$(git ls-files -z --cached --others --exclude-standard |
  python3 -c 'import os,sys; print(sum(os.lstat(p).st_size for p in sys.stdin.read().split("\0") if p and os.path.lexists(p)))')
room=$((LIMIT - tree - MARGIN))
size() { stat -c %s "$1"; }
bin_xz=$(size "$PACK/cache/inference-server.xz")
model=$(size "$MODEL")
whl=0
[ -n "$wheel" ] && whl=$(size "$wheel")
small=$((64 * 1024)) # SHA256SUMS, pack.txt
rm -rf "$PACK/stage1" "$PACK/stage2"
mkdir -p "$PACK/stage1" "$PACK/stage2"
ln -f "$PACK/cache/inference-server.xz" "$PACK/stage1/" 2>/dev/null || cp "$PACK/cache/inference-server.xz" "$PACK/stage1/"
[ -n "$wheel" ] && cp "$wheel" "$PACK/stage2/"
if [ $((bin_xz + model + whl + 2 * small)) -le "$room" ]; then
  calls=1
  ln -f "$MODEL" "$PACK/stage1/model.gguf.part-00" 2>/dev/null || cp "$MODEL" "$PACK/stage1/model.gguf.part-00"
else
  calls=2
  # Even margins: stage 1 = binary + part 1, stage 2 = part 2 + wheel.
  part1=$(((model + whl - bin_xz) / 2))
  if [ $((bin_xz + part1 + small)) -gt "$room" ] || [ $((model - part1 + whl + small)) -gt "$room" ]; then
    echo "does not fit in two calls: binary $bin_xz + model $model + wheel $whl bytes, $room bytes a call" \
      "(the repository's own files take $tree)" >&2
    exit 1
  fi
  head -c "$part1" "$MODEL" >"$PACK/stage1/model.gguf.part-00"
  tail -c +$((part1 + 1)) "$MODEL" >"$PACK/stage2/model.gguf.part-01"
fi
commit=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain --untracked-files=no -- inference-server kernels Cargo.lock | wc -l)
for s in stage1 stage2; do
  printf '%s  %s\n' "$model_sha" model.gguf "$bin_sha" inference-server >"$PACK/$s/SHA256SUMS"
  [ -n "$wheel" ] && printf '%s  %s\n' "$GGUF_WHEEL_SHA256" "$(basename "$wheel")" >>"$PACK/$s/SHA256SUMS"
  cat >"$PACK/$s/pack.txt" <<EOF
pack: $(date -u +%FT%TZ), $calls call(s); repository at $commit ($dirty files of inference-server/, kernels/, Cargo.lock modified)
binary: $BIN built $(date -u -r "$BIN" +%FT%TZ), sha256 ${bin_sha:0:16}; ${newer:+NOT }newer than the sources${newer:+ (touched after it: $(echo $newer | cut -c1-160))}
model: $(basename "$MODEL"), $model bytes, sha256 ${model_sha:0:16}
EOF
done
# The parts must give back the model (the GPU side checks the same sum).
if [ "$(cat "$PACK"/stage*/model.gguf.part-* | sha256sum | cut -d' ' -f1)" != "$model_sha" ]; then
  echo "the model's parts do not add up to $MODEL" >&2
  exit 1
fi
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
s1=$(du -cb "$PACK/stage1" | tail -n 1 | cut -f1)
s2=$(du -cb "$PACK/stage2" | tail -n 1 | cut -f1)
echo "==> packed into $PACK: stage1 $(mib "$s1"), stage2 $(mib "$s2"); the repository's own files $(mib "$tree"); 64 MiB a call" >&2

# The exact device calls (each command well under run's 2,000 characters).
if [ "$calls" = 1 ]; then
  cat <<EOF
GPU bench: one device call (run tool):
  command:   bash benches/gpu/run.sh
  carry:     ["target/gpu-pack/stage1", "target/gpu-pack/stage2"]
  timeout_s: 330
EOF
else
  cat <<EOF
GPU bench: two device calls on the same machine (run tool). Make call 2 AT ONCE when call 1
returns: the machine is kept only ~30 s after a call, and call 2 needs what call 1 left in /tmp/maas.
  call 1 (~1 min after the machine's start: binary, model part 1, machine report, PTX load):
    command:   bash benches/gpu/stage1.sh
    carry:     ["target/gpu-pack/stage1"]
    timeout_s: 150
  call 2 (~5 min: the bench; results in \$OUT/results.md, logs beside it):
    command:   bash benches/gpu/run.sh
    carry:     ["target/gpu-pack/stage2"]
    timeout_s: 330
If call 2 says stage 1 is not on the machine, the machine was released in between: repeat both.
EOF
fi

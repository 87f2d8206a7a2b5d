#!/usr/bin/env bash
# GPU machine, call 2 of 2 (or the only call, when pack.sh fitted everything
# into one): the inference server's CUDA build under streaming load, the same
# workload on a Hugging Face transformers peer, then the CPU path, all on
# this machine. benches/gpu/pack.sh prints the exact `run` calls.
#
#   1. model: stage 1's part(s) in /tmp/maas + this call's part(s), checksummed;
#      the binary stage 1 unpacked, checksummed again (no stage 1 on this
#      machine: runs it now if its files came along, else stops and says so);
#   2. the server with --device $DEVICE, warmed up (the first request loads
#      the PTX modules), then STREAMS concurrent streams: decode tokens/s
#      (aggregate and per stream), TTFT p50/p99, GPU utilisation and memory
#      (nvidia-smi every 200 ms, per round), the server's /metrics after;
#   3. peer_hf.py: transformers + torch (bf16) on the same GGUF, same streams;
#   4. the server with --device cpu at CPU_STREAMS (our quantized kernels on
#      this machine's cores, for scale).
# Everything goes to $OUT: results.md (the figures), run.log (this console),
# the server logs, peer.log, metrics-cuda.txt; at most 8 files come back.
# Hard cap: BUDGET seconds (default 300) for the whole call; each phase gets
# what is left minus what the later phases need, and a round that would not
# fit is marked skipped rather than cut short.
#
# Rehearsal without a GPU (pack.sh first; link stubs for the CUDA libraries,
# see BENCHMARKS.md):
#   DEVICE=candle-cpu STREAMS="1 2" CPU_STREAMS="1 2" MAX_TOKENS=16 KV_MEMORY=1GiB \
#   THREADS=2 PORT=18000 WORK=/tmp/maas-rehearsal OUT=/tmp/gpu-rehearsal \
#   EXTRA_LD_PATH=/tmp/gpu-stubs bash benches/gpu/run.sh
#
# No `set -e`: a phase that fails (a server that does not start on the GPU,
# a peer that cannot load the GGUF) is recorded in results.md and the later
# phases still run, so one call brings back all it can.
set -uo pipefail
if [ -z "${_RUN_CAPPED:-}" ]; then
  _RUN_CAPPED=1 exec timeout -k 5 "$((${BUDGET:-300} + 10))" bash "$0" "$@"
fi
source "$(dirname "$0")/common.sh"
DEVICE=${DEVICE:-cuda}
STREAMS=${STREAMS:-"1 8 32 64 128"}
CPU_STREAMS=${CPU_STREAMS:-"1 8"}   # CPU_STREAMS=none skips the CPU phase
PEER=${PEER:-hf}                    # PEER=none skips the transformers peer
MAX_TOKENS=${MAX_TOKENS:-256}
KV_MEMORY=${KV_MEMORY:-8GiB}
THREADS=${THREADS:-$(nproc)}
PORT=${PORT:-8000}
BUDGET=${BUDGET:-300}
PEER_SECS=${PEER_SECS:-100}
CPU_SECS=${CPU_SECS:-40}
MD="$OUT/results.md"
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/run.log") 2>&1
el() { echo $(($(date +%s) - T0)); }
left() { echo $((BUDGET - $(el))); }
cap() { local c=$1 l; l=$(left); [ "$l" -lt "$c" ] && c=$l; [ "$c" -lt 1 ] && c=1; echo "$c"; }
SERVER_PID=""
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}
trap stop_server EXIT
trap 'say "terminated"; stop_server; exit 143' TERM INT
md() { printf '%s\n' "$@" >>"$MD"; }
GPU=0
gpu_present && GPU=1
say "start on $(hostname): DEVICE=$DEVICE STREAMS='$STREAMS' PEER=$PEER CPU_STREAMS='$CPU_STREAMS' MAX_TOKENS=$MAX_TOKENS budget ${BUDGET}s"

# 1. stage 1's products, then the model.
if [ ! -f "$W/stage1.done" ]; then
  if [ -f "$PACK/stage1/SHA256SUMS" ]; then
    say "stage 1 has not run on this machine and its files came along: running it now"
    STAGE1_CAP=$(cap 120) bash "$GPU_DIR/stage1.sh" || { say "stage 1 failed; stopping"; exit 1; }
  else
    say "STAGE 1 IS NOT ON THIS MACHINE: it was released between the two calls (a warm machine is kept ~30 s)."
    say "Run call 1 (bash benches/gpu/stage1.sh) again and call 2 at once after it; nothing was measured."
    echo "stage 1 missing on this machine: nothing measured" >"$MD"
    exit 1
  fi
fi
S2=$PACK/stage2
[ -f "$S2/SHA256SUMS" ] && ! cmp -s "$S2/SHA256SUMS" "$W/SHA256SUMS" && {
  say "stage 2's pack differs from stage 1's (SHA256SUMS): run pack.sh once and use both of its stages; stopping"
  echo "stage 1 and stage 2 come from different packs: nothing measured" >"$MD"
  exit 1
}
if compgen -G "$S2/model.gguf.part-*" >/dev/null; then cp -f "$S2"/model.gguf.part-* "$W"/; fi
say "assembling the model from $(cd "$W" && ls model.gguf.part-* | tr '\n' ' ')"
cat "$W"/model.gguf.part-* >"$W/model.gguf"
if ! (cd "$W" && grep -E ' (model\.gguf|inference-server)$' SHA256SUMS | sha256sum --check -); then
  say "CHECKSUM MISMATCH (a part missing or from another pack?); stopping"
  echo "model or binary checksum mismatch: nothing measured" >"$MD"
  exit 1
fi
LD=$(cat "$W/ld-path")
export LD_LIBRARY_PATH="$LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

SERVER_ARGS=(--model "$W/model.gguf" --model-id smollm2-135m-instruct --host 127.0.0.1 --port "$PORT"
  --max-running 128 --max-queued 512 --max-batch-tokens 4096 --prefill-chunk 256
  --kv-cache-memory "$KV_MEMORY" --threads "$THREADS" --shutdown-grace-secs 2)
{
  echo "# inference-server GPU bench, $(date -u +%FT%TZ), $(hostname)"
  echo
  echo '```'
  if [ "$GPU" = 1 ]; then
    timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  else
    echo "NO GPU: a rehearsal; DEVICE=$DEVICE stands in for cuda"
  fi
  echo "cores: $(nproc); $(ldd --version | head -n 1)"
  cat "$W/pack.txt"
  echo '```'
  echo
  echo "Workload: N concurrent streamed chat completions, each its own prompt ('Write a long story about"
  echo "<topic>. (Request <round>-<i>.)', ~45 tokens with the chat template), exactly $MAX_TOKENS tokens each"
  echo "(ignore_eos, temperature 0), after warm-up rounds (8 tokens; 1, 4 and the most streams). Server: \`inference-server"
  echo "--device D ${SERVER_ARGS[*]}\` (prefix caching on, its default)."
  echo
  echo "Columns (benches/gpu/bench.py): aggregate = all tokens / round wall (prefill included); steady decode"
  echo "= tokens arriving while every stream decodes, per second; per-stream = (tokens - 1) / (last - first"
  echo "token); TTFT nearest rank; GPU util and memory = nvidia-smi every 200 ms during the round."
  echo
  echo "## PTX (stage 1: the driver loading every module the binary embeds)"
  echo
  echo '```'
  cat "$W/ptxprobe.txt"
  echo '```'
  echo
  echo '```'
  grep -E 'cu|nvrtc|not found' "$W/ldd.txt"
  echo '```'
} >"$MD"

# 2. and 4. the server under load.
wait_health() { # $1 = seconds
  local deadline=$(($(date +%s) + $1)) line
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$SERVER_PID" 2>/dev/null || return 2
    if { exec 3<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null; then
      printf 'GET /health HTTP/1.0\r\nhost: x\r\n\r\n' >&3
      line=""
      IFS= read -r -t 2 line <&3
      exec 3<&- 3>&-
      [[ "$line" == *" 200"* ]] && return 0
    fi
    sleep 0.5
  done
  return 1
}
bench() { # $1 = device, $2 = stream counts, $3 = seconds at most, $4 = seconds to keep for what follows
  local dev=$1 streams=$2 secs=$3 reserve=$4 log t rc d smi=()
  log="$OUT/server-${dev%%:*}.log"
  md "" "## inference-server --device $dev" ""
  say "starting the server --device $dev"
  t=$(date +%s%N)
  NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$W/inference-server" --device "$dev" "${SERVER_ARGS[@]}" >"$log" 2>&1 &
  SERVER_PID=$!
  wait_health "$(cap 120)"
  rc=$?
  if [ $rc -ne 0 ]; then
    say "server --device $dev not healthy (rc=$rc: 1 timeout, 2 exited); log tail:"
    tail -n 30 "$log"
    md "The server did not become healthy (rc=$rc: 1 timeout, 2 exited). Log tail:" '```' "$(tail -n 30 "$log")" '```'
    stop_server
    return 1
  fi
  say "server --device $dev healthy after $((($(date +%s%N) - t) / 1000000)) ms"
  md "Healthy $((($(date +%s%N) - t) / 1000000)) ms after start:" '```' \
    "$(grep -E 'model loaded|KV cache' "$log" | sed -E 's/^[^ ]+ +//' | cut -c1-240)" '```' ""
  d=$(($(left) - reserve))
  [ "$d" -gt "$secs" ] && d=$secs
  [ "$d" -lt 5 ] && d=5
  # SMI=1 samples nvidia-smi whatever the device (a rehearsal with a stand-in).
  { [[ "$dev" == cuda* ]] && [ "$GPU" = 1 ]; } || [ "${SMI:-}" = 1 ] && smi=(--smi)
  # Warm-up rounds of 8 tokens at 1, 4 and the largest stream count: the
  # first request loads the PTX modules, and each new batch size meets its
  # one-off costs (cuBLAS picking kernels, the memory pool growing) once.
  local most
  most=$(tr ' ' '\n' <<<"$streams" | sort -n | tail -n 1)
  timeout -k 3 "$((d + 10))" "$PY" "$GPU_DIR/bench.py" --port "$PORT" --streams "$streams" \
    --warmup "1 4 $most" --max-tokens "$MAX_TOKENS" --label "$dev" --md "$MD" --deadline "$d" --request-timeout 90 "${smi[@]}"
  rc=$?
  [ $rc -eq 0 ] || md "" "bench.py exited with $rc (124: stopped at its time limit)."
  say "bench --device $dev exit $rc; server log tail:"
  tail -n 5 "$log"
  if [[ "$dev" == cuda* ]] && { exec 3<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null; then
    printf 'GET /metrics HTTP/1.0\r\nhost: x\r\n\r\n' >&3
    timeout 5 cat <&3 >"$OUT/metrics-cuda.txt"
    exec 3<&- 3>&-
  fi
  stop_server
  # A crash or an engine error under load shows in the log, not in the table.
  if grep -qE 'panicked|ERROR' "$log"; then
    md "" "Errors in server-${dev%%:*}.log (first 5):" '```' "$(grep -E 'panicked|ERROR' "$log" | head -n 5 | cut -c1-300)" '```'
  fi
}

peer_reserve=0
[ "$PEER" = hf ] && peer_reserve=$PEER_SECS
cpu_reserve=0
[ "$CPU_STREAMS" != none ] && cpu_reserve=$CPU_SECS
bench "$DEVICE" "$STREAMS" 170 $((peer_reserve + cpu_reserve))

# 3. the peer.
if [ "$PEER" = hf ]; then
  md "" "## peer: Hugging Face transformers on the same GGUF"
  say "peer: transformers on the same GGUF"
  whl=$(compgen -G "$PACK/stage2/gguf-*.whl" || compgen -G "$PACK/stage1/gguf-*.whl" || true)
  if [ -n "$whl" ] && ! (cd "$(dirname "$whl")" &&
    grep -F " $(basename "$whl")" "$W/SHA256SUMS" | sha256sum --check --quiet -); then
    say "$(basename "$whl") does not match SHA256SUMS: the peer runs without it"
    whl=""
  fi
  if [ -n "$whl" ]; then
    # gguf (pure Python) is what transformers reads GGUF with; the image lacks it.
    mkdir -p /tmp/site
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps \
      --no-compile --target /tmp/site "$whl" 2>&1 | tail -n 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  peer_dev=cuda
  [ "$GPU" = 1 ] || peer_dev=cpu
  d=$(($(left) - cpu_reserve))
  [ "$d" -gt "$PEER_SECS" ] && d=$PEER_SECS
  [ "$d" -lt 10 ] && d=10
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 timeout -k 3 "$((d + 10))" "$PY" "$GPU_DIR/peer_hf.py" \
    --gguf "$W/model.gguf" --streams "$STREAMS" --max-tokens "$MAX_TOKENS" --deadline "$d" \
    --device "$peer_dev" --md "$MD" >"$OUT/peer.log" 2>&1
  rc=$?
  say "peer exit $rc"
  tail -n 12 "$OUT/peer.log"
  # 2: no torch here, which peer_hf.py has already written down.
  if [ $rc -ne 0 ] && [ $rc -ne 2 ]; then
    md "" "The peer exited with $rc; last lines of peer.log:" '```' "$(tail -n 8 "$OUT/peer.log")" '```'
  fi
fi

# 4. the CPU path on this machine's cores.
if [ "$CPU_STREAMS" != none ]; then
  bench cpu "$CPU_STREAMS" "$CPU_SECS" 2
fi
md "" "Total $(el) s of the ${BUDGET} s budget."
say "done in $(el) s; results in $MD"
echo
cat "$MD"

#!/usr/bin/env bash
# Whole-system load benchmark: what our filter costs inside Envoy, against two
# baselines measured in the same run, with the same upstream:
#
#   none    Envoy, no wasm filter (the router alone)
#   noop    Envoy + the empty wasm filter (benches/noop-filter): the price of
#           having a wasm filter at all
#   maas    Envoy + our filter as shipped (opt-level 3): auth, limits,
#           accounting, metrics, audit line; limits too high to reject anything
#   maas-s  the same filter built with opt-level "s", to choose the profile
#   maas-global  the shipped filter with the same limits made global: kept by
#           a real maas-limiter on a real redis-server, which this script
#           starts (`load-bench limiter`); per request one ShouldRateLimit and
#           one Reserve through Envoy's gRPC client before the upstream, one
#           Commit after the response
#   maas-ext     the shipped filter with the model served by an external
#           OpenAI-compatible provider: the same upstream behind a
#           TLS-terminating Envoy (`load-bench provider`, a throwaway CA),
#           reached through the provider cluster the gateway renders for real
#           providers (TLS verified, HTTP/2, the credential injected by
#           Envoy's credential injector)
#   maas-anthropic  the same with an Anthropic provider: the filter
#           translates the request into a Messages request and the JSON
#           answer or event stream back (the mock speaks the Messages API)
#
# All seven run the bootstrap rendered from envoy/gateway.template.yaml (see
# benches/src/load/variants.rs) at the same time, each Envoy with one worker,
# pinned to core 0. The upstream (testkit's mock-upstream), the limiter, Redis
# and wrk share core 1, so core 0's CPU time is Envoy's alone.
# Workloads: a chat completion with a JSON answer ("plain") and a streamed one
# ("stream": 16 content events + finish + [DONE]; our filter also asks the
# upstream for the usage event and strips it before the client). On loopback
# the upstream's events reach Envoy coalesced (about two body callbacks per
# response); "stream-events" (not run by default, it adds ~2 min) makes the
# upstream wait 1 ms between events, so each event is its own read, callback
# and write, as with a real model: WORKLOADS="plain stream stream-events".
#
# Each round runs every workload x variant (interleaved: none, noop, maas,
# maas-s, maas-global, none, ...) twice: at saturation (requests/s, and
# Envoy's CPU time per request from /proc/PID/stat) and at a fixed rate below saturation
# (~3,400 req/s: 40 connections, each pausing 10 ms between requests, through
# wrk's delay() hook; p50/p99 latency, and CPU per request with every variant
# at the same rate). The limiter's and Redis's CPU time is recorded per run
# too: they share core 1 with wrk and the upstream, so they can be what limits
# maas-global. Any non-2xx answer or socket error stops the run: a 401 or 429
# from the filter, or a 503 from a limiter that did not answer (the variant
# fails closed), would make its numbers meaningless.
#
# Usage: ./benches/load.sh   (`make bench` runs it after criterion; ~8 min,
#   of which maas-global, maas-ext and maas-anthropic ~1 min each)
# Knobs (environment): WORKLOADS="plain stream" ROUNDS=3 SAT_SECONDS=5
#   SAT_CONNECTIONS=32 EVENTS_SAT_CONNECTIONS=160 (stream-events: each response
#   takes ~18 ms, so saturating Envoy needs more connections)
#   PACED_SECONDS=4 PACED_CONNECTIONS=40 PACE_MS=10 WARMUP_SECONDS=2
#   PROXY_CORE=0 LOAD_CORE=1 SKIP_BUILD=1 LOAD_BENCH_DIR=target/load-bench
#   MAAS_LIMITER=target/serve/maas-limiter
#   MAAS_REDIS_SERVER=.cache/redis/7.0.15/bin/redis-server (scripts/redis.sh)
# Output: the Markdown table on stdout, and in $LOAD_BENCH_DIR/summary.md
# (raw rows in results.tsv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ROUNDS=${ROUNDS:-3}
SAT_SECONDS=${SAT_SECONDS:-5}
SAT_CONNECTIONS=${SAT_CONNECTIONS:-32}
EVENTS_SAT_CONNECTIONS=${EVENTS_SAT_CONNECTIONS:-160}
PACED_SECONDS=${PACED_SECONDS:-4}
PACED_CONNECTIONS=${PACED_CONNECTIONS:-40}
PACE_MS=${PACE_MS:-10}
WARMUP_SECONDS=${WARMUP_SECONDS:-2}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
WORK=${LOAD_BENCH_DIR:-$ROOT/target/load-bench}
ENVOY=${MAAS_ENVOY:-$ROOT/.cache/envoy/1.40.0/envoy/_bin/envoy}
# Exported: testkit's harness in `load-bench limiter` starts these.
export MAAS_LIMITER=${MAAS_LIMITER:-$ROOT/target/serve/maas-limiter}
export MAAS_REDIS_SERVER=${MAAS_REDIS_SERVER:-$ROOT/.cache/redis/7.0.15/bin/redis-server}
CARGO=${CARGO:-cargo}

WASM_DIR=target/wasm32-wasip1/release
OPT_S_DIR=target/opt-s
FILTER_WASM=$ROOT/$WASM_DIR/maas_filter.wasm
NOOP_WASM=$ROOT/$WASM_DIR/maas_noop_filter.wasm
FILTER_S_WASM=$ROOT/$OPT_S_DIR/wasm32-wasip1/release/maas_filter.wasm
MOCK_UPSTREAM=$ROOT/target/release/mock-upstream
LOAD_BENCH=$ROOT/target/release/examples/load-bench

VARIANTS=(none noop maas maas-s maas-global maas-ext maas-anthropic)
read -r -a WORKLOADS <<<"${WORKLOADS:-plain stream}"
BENCH_KEY=sk-maas-bench-3f9e2c71d0a84b56
MODEL=bench-model   # load::variants::BENCH_MODEL

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'load.sh: %s\n' "$*" >&2; exit 1; }

for w in "${WORKLOADS[@]}"; do
  case $w in plain | stream | stream-events) ;; *) die "unknown workload $w (plain, stream, stream-events)" ;; esac
done

# --- children: every process we start is recorded and killed on exit ---------
CHILDREN=()
cleanup() {
  local pid
  for pid in "${CHILDREN[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${CHILDREN[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools -------------------------------------------------------------------
for tool in taskset curl awk; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
# Debian's wrk, pinned and checked, unpacked into .cache (or WRK=/path).
if [ -z "${WRK:-}" ]; then
  WRK=$(./scripts/wrk.sh | tail -n1) || die "could not install wrk (scripts/wrk.sh)"
fi
[ -x "$WRK" ] || die "WRK=$WRK is not an executable"
[ "$(nproc --all)" -ge 2 ] || die "needs 2 cores (proxy on $PROXY_CORE, load on $LOAD_CORE)"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  [ -x "$ENVOY" ] || ./scripts/fetch-envoy.sh
  [ -x "$MAAS_REDIS_SERVER" ] || ./scripts/redis.sh
  say "$CARGO build --profile serve --locked -p maas-limiter"
  "$CARGO" build --profile serve --locked -p maas-limiter
  say "$CARGO build --release --locked -p maas-testkit --bins -p maas-benches --example load-bench"
  "$CARGO" build --release --locked -p maas-testkit --bins -p maas-benches --example load-bench
  say "$CARGO build --release --locked --target wasm32-wasip1 -p maas-filter -p maas-noop-filter"
  "$CARGO" build --release --locked --target wasm32-wasip1 -p maas-filter -p maas-noop-filter
  say "CARGO_PROFILE_RELEASE_OPT_LEVEL=s $CARGO build --release --locked --target wasm32-wasip1 -p maas-filter --target-dir $OPT_S_DIR"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=s "$CARGO" build --release --locked --target wasm32-wasip1 \
    -p maas-filter --target-dir "$OPT_S_DIR"
fi
for file in "$ENVOY" "$MOCK_UPSTREAM" "$LOAD_BENCH" "$FILTER_WASM" "$NOOP_WASM" "$FILTER_S_WASM" \
  "$MAAS_LIMITER" "$MAAS_REDIS_SERVER"; do
  [ -f "$file" ] || die "missing $file (run without SKIP_BUILD=1, or make setup wasm host server)"
done

# Cleared on every run; a non-empty folder that is not ours is left alone.
if [ -d "$WORK" ] && [ -n "$(ls -A "$WORK")" ] && [ ! -f "$WORK/results.tsv" ] && [ ! -f "$WORK/upstream.out" ]; then
  die "$WORK is not empty and holds no earlier run; choose another LOAD_BENCH_DIR"
fi
rm -rf "$WORK"
mkdir -p "$WORK"
START_SECONDS=$SECONDS

# --- upstream and limiter --------------------------------------------------------
announced() { # FILE PREFIX TENTHS → the HOST:PORT after "PREFIX " in FILE, waiting up to TENTHS × 0.1 s
  local addr="" _
  for _ in $(seq "$3"); do
    addr=$(sed -n "s/^$2 //p" "$1")
    [ -n "$addr" ] && break
    sleep 0.1
  done
  printf '%s' "$addr"
}
say "mock-upstream on core $LOAD_CORE"
taskset -c "$LOAD_CORE" "$MOCK_UPSTREAM" --host 127.0.0.1 --port 0 >"$WORK/upstream.out" 2>&1 &
CHILDREN+=($!)
UPSTREAM=$(announced "$WORK/upstream.out" 'mock-upstream listening on' 100)
[ -n "$UPSTREAM" ] || die "mock-upstream did not start: $(cat "$WORK/upstream.out")"

# Redis and the limiter inherit the affinity of `load-bench limiter`, which
# keeps them until it gets SIGTERM (cleanup) and writes $WORK/limits.yaml.
say "maas-limiter (Redis storage) and redis-server on core $LOAD_CORE"
taskset -c "$LOAD_CORE" "$LOAD_BENCH" limiter --out-dir "$WORK" --key "$BENCH_KEY" >"$WORK/limiter.out" 2>&1 &
LIMITER_HOST=$!
CHILDREN+=($!)
LIMITER=$(announced "$WORK/limiter.out" 'limiter listening on' 600)
[ -n "$LIMITER" ] || die "the limiter did not start: $(cat "$WORK/limiter.out" "$WORK/limiter.log" 2>/dev/null)"
# Their CPU time is measured per run, like Envoy's (the host only sleeps).
read -r -a LIMITER_SIDE <<<"$(ps -o pid= --ppid "$LIMITER_HOST" | tr '\n' ' ')"
[ "${#LIMITER_SIDE[@]}" = 2 ] || die "expected redis-server and maas-limiter under pid $LIMITER_HOST, found: ${LIMITER_SIDE[*]}"

# The provider variants' stand-in: the same upstream behind TLS, on the load
# core too (its Envoy inherits the affinity).
say "stand-in provider (TLS front) on core $LOAD_CORE"
MAAS_ENVOY=$ENVOY taskset -c "$LOAD_CORE" "$LOAD_BENCH" provider --out-dir "$WORK" --upstream "$UPSTREAM" \
  >"$WORK/provider.out" 2>&1 &
CHILDREN+=($!)
PROVIDER=$(announced "$WORK/provider.out" 'provider listening on' 300)
[ -n "$PROVIDER" ] || die "the stand-in provider did not start: $(cat "$WORK/provider.out")"

# --- the gateways ----------------------------------------------------------------
"$LOAD_BENCH" render --out-dir "$WORK" --upstream "$UPSTREAM" --key "$BENCH_KEY" --limiter "$LIMITER" \
  --provider "$PROVIDER" \
  --variant none=none --variant "noop=$NOOP_WASM" \
  --variant "maas=$FILTER_WASM" --variant "maas-s=$FILTER_S_WASM" \
  --variant "maas-global=global:$FILTER_WASM" \
  --variant "maas-ext=provider:openai-compatible:$FILTER_WASM" \
  --variant "maas-anthropic=provider:anthropic:$FILTER_WASM"

declare -A PID PORT
for v in "${VARIANTS[@]}"; do
  taskset -c "$PROXY_CORE" "$ENVOY" -c "$WORK/$v.yaml" --concurrency 1 --disable-hot-restart \
    -l warning --log-path "$WORK/$v.envoy.log" --admin-address-path "$WORK/$v.admin" \
    >"$WORK/$v.envoy.out" 2>&1 &
  PID[$v]=$!
  CHILDREN+=($!)
done
for v in "${VARIANTS[@]}"; do
  for _ in $(seq 300); do
    kill -0 "${PID[$v]}" 2>/dev/null || die "Envoy ($v) exited: $(tail -n 20 "$WORK/$v.envoy.out" "$WORK/$v.envoy.log" 2>/dev/null)"
    if [ -s "$WORK/$v.admin" ]; then
      # `gateway::127.0.0.1:PORT` once the listener is bound.
      PORT[$v]=$(curl -sf "http://$(cat "$WORK/$v.admin")/listeners" 2>/dev/null |
        sed -n 's/^gateway::127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p') || true
      [ -n "${PORT[$v]:-}" ] && break
    fi
    sleep 0.1
  done
  [ -n "${PORT[$v]:-}" ] || die "Envoy ($v) did not open its listener in 30 s"
  say "Envoy ($v) pid ${PID[$v]} on 127.0.0.1:${PORT[$v]}, core $PROXY_CORE"
done

# --- the workloads: one POST each, ~300 bytes ----------------------------------
MESSAGES='[{"role":"system","content":"You are a concise assistant for the platform team."},{"role":"user","content":"Summarise in one sentence why a gateway in front of model servers helps: keys, quotas, accounting and one endpoint for every team."}]'
BODY_plain="{\"model\":\"$MODEL\",\"messages\":$MESSAGES,\"max_tokens\":16,\"temperature\":0.2}"
BODY_stream="{\"model\":\"$MODEL\",\"messages\":$MESSAGES,\"max_tokens\":16,\"temperature\":0.2,\"stream\":true}"

for w in "${WORKLOADS[@]}"; do
  body_var=BODY_${w%-events}
  pacing=""
  [ "$w" = stream-events ] && pacing='wrk.headers["x-mock-chunk-delay-ms"] = "1"'
  cat >"$WORK/$w.lua" <<EOF
-- wrk script ($w): POST one chat completion; with LOAD_PACE_MS set, every
-- connection pauses that long between requests (a fixed rate below saturation).
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Authorization"] = "Bearer $BENCH_KEY"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-maas-model"] = "$MODEL"
$pacing
wrk.body = [[${!body_var}]]

local pace_ms = tonumber(os.getenv("LOAD_PACE_MS") or "0")
if pace_ms > 0 then
  function delay() return pace_ms end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
EOF
done

# Smoke check: every variant answers both workloads 200 (with our filter: and
# refuses a wrong key, so the filter is really in the path and configured).
post() { # variant key body-var → "STATUS" and the body in $WORK/smoke.out
  curl -s -m 10 -o "$WORK/smoke.out" -w '%{http_code}' -X POST "http://127.0.0.1:${PORT[$1]}/v1/chat/completions" \
    -H "Authorization: Bearer $2" -H 'Content-Type: application/json' -H "x-maas-model: $MODEL" \
    --data-binary "${!3}"
}
for v in "${VARIANTS[@]}"; do
  status=$(post "$v" "$BENCH_KEY" BODY_plain)
  # 000: no answer in 10 s. A filter that pauses the headers to read the body
  # hangs like that when the wasm config lacks allow_on_headers_stop_iteration.
  [ "$status" = 200 ] && grep -q '"choices"' "$WORK/smoke.out" ||
    die "$v: plain request got $status: $(cat "$WORK/smoke.out")"
  status=$(post "$v" "$BENCH_KEY" BODY_stream)
  [ "$status" = 200 ] && grep -q '^data: \[DONE\]' "$WORK/smoke.out" ||
    die "$v: stream request got $status: $(head -c 600 "$WORK/smoke.out")"
  status=$(post "$v" sk-maas-not-a-key BODY_plain)
  case $v in
    maas*) [ "$status" = 401 ] || die "$v: a wrong key got $status, not 401: is the filter loaded?" ;;
    *) [ "$status" = 200 ] || die "$v: a wrong key got $status without a filter" ;;
  esac
  vms=$(curl -s -m 5 "http://$(cat "$WORK/$v.admin")/stats?filter=wasm_vm_count" | sed -n 's/^wasm\.wasm_vm_count: //p')
  case $v in
    none) [ "${vms:-0}" = 0 ] || die "none: Envoy runs $vms wasm VMs" ;;
    *) [ "${vms:-0}" -gt 0 ] || die "$v: Envoy runs no wasm VM" ;;
  esac
done
# The global variant really asked the limiter, and every call succeeded.
limiter_calls() { # variant → "OK FAILED_OR_OVER_LIMIT" from the filter's maas_limiter_calls_total
  # (`settled`: a commit the settlement outbox delivered)
  curl -s -m 5 "http://$(cat "$WORK/$1.admin")/stats?filter=limiter_calls_total" |
    awk -F': ' '$1 ~ /result=\.=(ok|settled);/ { ok += $2; next } $1 ~ /result=/ { bad += $2 } END { print ok + 0, bad + 0 }'
}
read -r calls_ok calls_bad <<<"$(limiter_calls maas-global)"
[ "$calls_ok" -gt 0 ] && [ "$calls_bad" = 0 ] ||
  die "maas-global: $calls_ok limiter calls ok, $calls_bad failed or over limit: $(curl -s -m 5 "http://$(cat "$WORK/maas-global.admin")/stats?filter=limiter")"
say "smoke check passed: ${VARIANTS[*]} answer 200; wasm VMs only where expected; our filter refuses a wrong key; maas-global made $calls_ok limiter calls"

# --- measuring -----------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
RESULTS=$WORK/results.tsv
printf 'round\tworkload\tvariant\tmode\trequests\tduration_us\tcpu_ticks\tclk_tck\tp50_us\tp99_us\tcore0_busy_pct\tcore1_busy_pct\tlimiter_cpu_ticks\n' >"$RESULTS"

proc_cpu_ticks() { # utime+stime of the whole process; fields after "(comm)"
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
limiter_side_ticks() { # the limiter's and Redis's utime+stime
  local pid total=0
  for pid in "${LIMITER_SIDE[@]}"; do
    total=$((total + $(proc_cpu_ticks "$pid")))
  done
  echo "$total"
}
core_ticks() { # "busy total" jiffies of one core
  awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat
}
busy_pct() { # before-line after-line → percent
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
    t = y[2] - x[2]; printf "%.1f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }'
}

# run ROUND WORKLOAD VARIANT MODE (ROUND 0: warm-up, not recorded)
run() {
  local round=$1 w=$2 v=$3 mode=$4 seconds connections pace=0
  if [ "$mode" = saturation ]; then
    seconds=$SAT_SECONDS connections=$SAT_CONNECTIONS
    [ "$w" = stream-events ] && connections=$EVENTS_SAT_CONNECTIONS
  else
    seconds=$PACED_SECONDS connections=$PACED_CONNECTIONS pace=$PACE_MS
  fi
  [ "$round" = 0 ] && seconds=$WARMUP_SECONDS
  local cpu0 lim0 c0 c1 out
  cpu0=$(proc_cpu_ticks "${PID[$v]}")
  lim0=$(limiter_side_ticks)
  c0=$(core_ticks "$PROXY_CORE")
  c1=$(core_ticks "$LOAD_CORE")
  out=$(LOAD_PACE_MS=$pace taskset -c "$LOAD_CORE" "$WRK" -t1 -c"$connections" -d"${seconds}s" --timeout 5s \
    -s "$WORK/$w.lua" "http://127.0.0.1:${PORT[$v]}/v1/chat/completions" 2>&1) ||
    die "wrk failed against $v: $out"
  local cpu1 lim1 c0b c1b
  cpu1=$(proc_cpu_ticks "${PID[$v]}")
  lim1=$(limiter_side_ticks)
  c0b=$(core_ticks "$PROXY_CORE")
  c1b=$(core_ticks "$LOAD_CORE")
  : >"$WORK/$v.access.log"   # the audit trail would grow by ~2 MB a run
  local result
  result=$(grep '^RESULT ' <<<"$out") || die "no result from wrk against $v: $out"
  declare -A r
  local kv
  for kv in ${result#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
  local errors=$((r[non2xx] + r[connect] + r[read] + r[write] + r[timeout]))
  if [ "$errors" -ne 0 ] || [ "${r[requests]}" -eq 0 ]; then
    printf '%s\n' "$out" >&2
    tail -n 20 "$WORK/$v.envoy.log" >&2 || true
    die "round $round, $w, $v ($mode): ${r[non2xx]} non-2xx answers, $((errors - r[non2xx])) socket errors, ${r[requests]} requests: the numbers would be meaningless"
  fi
  [ "$round" = 0 ] && return 0
  local ticks=$((cpu1 - cpu0))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$w" "$v" "$mode" \
    "${r[requests]}" "${r[duration_us]}" "$ticks" "$CLK_TCK" "${r[p50_us]}" "${r[p99_us]}" \
    "$(busy_pct "$c0" "$c0b")" "$(busy_pct "$c1" "$c1b")" "$((lim1 - lim0))" >>"$RESULTS"
  awk -v n="${r[requests]}" -v d="${r[duration_us]}" -v t="$ticks" -v hz="$CLK_TCK" \
    -v p50="${r[p50_us]}" -v p99="${r[p99_us]}" -v tag="round $round  $w  $v  $mode" \
    -v lim="$((lim1 - lim0))" \
    'BEGIN { printf "    %-40s %7.0f req/s  %6.1f µs CPU/req  p50 %.2f ms  p99 %.2f ms  limiter %.1f µs/req\n",
      tag, n / (d / 1e6), t / hz * 1e6 / n, p50 / 1000, p99 / 1000, lim / hz * 1e6 / n }' >&2
}

say "warm-up: ${WARMUP_SECONDS}s per variant and workload"
for w in "${WORKLOADS[@]}"; do
  for v in "${VARIANTS[@]}"; do
    run 0 "$w" "$v" saturation
  done
done

for round in $(seq "$ROUNDS"); do
  say "round $round of $ROUNDS"
  for w in "${WORKLOADS[@]}"; do
    for v in "${VARIANTS[@]}"; do
      run "$round" "$w" "$v" saturation
      run "$round" "$w" "$v" paced
    done
  done
done

events_shape=""
[[ " ${WORKLOADS[*]} " == *" stream-events "* ]] && events_shape=" (stream-events: -c$EVENTS_SAT_CONNECTIONS)"
# --- report ----------------------------------------------------------------------
{
  printf '%s, Envoy %s, %s; %s rounds; %s s.\n\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" \
    "$("$ENVOY" --version 2>/dev/null | sed -n 's/.*version: [^/]*\/\([0-9.]*\)\/.*/\1/p' | head -n 1)" \
    "$(nproc --all) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1))" \
    "$ROUNDS" "$((SECONDS - START_SECONDS))"
  "$LOAD_BENCH" report --results "$RESULTS" --baseline none --empty noop \
    --filter maas --filter maas-s --filter maas-global --filter maas-ext --filter maas-anthropic \
    --label "none=no filter" --label "noop=empty wasm filter" \
    --label "maas=maas-filter (opt-level 3)" --label 'maas-s=maas-filter (opt-level "s")' \
    --label "maas-global=maas-filter, global limits (maas-limiter, Redis)" \
    --label "maas-ext=maas-filter, external OpenAI-compatible provider (TLS, injected credential)" \
    --label "maas-anthropic=maas-filter, external Anthropic provider (TLS, translated)" \
    --saturation "wrk -t1 -c$SAT_CONNECTIONS -d${SAT_SECONDS}s$events_shape; Envoy --concurrency 1 on core $PROXY_CORE, wrk, the upstream, the limiter and Redis on core $LOAD_CORE" \
    --paced "wrk -t1 -c$PACED_CONNECTIONS -d${PACED_SECONDS}s, each connection pausing ${PACE_MS} ms between requests"
} >"$WORK/summary.md"
cat "$WORK/summary.md"
say "raw rows: $RESULTS; table: $WORK/summary.md; $((SECONDS - START_SECONDS)) s"

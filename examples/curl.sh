#!/usr/bin/env bash
# The gateway as a client sees it, against `make run` (Envoy + the filter on
# 127.0.0.1:10000 with the demo configuration envoy/filter-config.json):
#
#   make run                 # in one terminal
#   ./examples/curl.sh       # in another
#
# Every call is bounded (--max-time) and goes to a loopback address only.
# The last section spends the free tier's per-key request budget (5 requests
# per 10 s), so a second run within 10 s starts out rate limited.
#
# GATEWAY (default http://127.0.0.1:10000) points it at another local port.

set -euo pipefail

GATEWAY=${GATEWAY:-http://127.0.0.1:10000}
case "$GATEWAY" in
  http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "GATEWAY must be a loopback http:// URL with a port, not $GATEWAY" >&2; exit 2 ;;
esac

# Demo keys from the README; the filter only knows their SHA-256.
FREE=sk-maas-demo-free-7f3c9a1e5b2d        # subscription "free": limited
REVOKED=sk-maas-demo-revoked-93d1b7c05ae4  # revoked: always 401
MODEL=smollm2-135m-instruct

curl() { command curl --silent --show-error --max-time 30 "$@"; }
section() { printf '\n### %s\n' "$*"; }

section "Models the key's subscription may use (answered by the gateway, never rate limited)"
curl "$GATEWAY/v1/models" -H "Authorization: Bearer $FREE"
echo

section "A chat completion; -i shows the x-ratelimit-* headers every response carries"
curl -i "$GATEWAY/v1/chat/completions" \
  -H "Authorization: Bearer $FREE" -H 'content-type: application/json' \
  -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":16}"
echo

section "Streaming (server-sent events); x-api-key works as well as Authorization"
curl -N "$GATEWAY/v1/chat/completions" \
  -H "x-api-key: $FREE" -H 'content-type: application/json' \
  -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":8,\"stream\":true,\"stream_options\":{\"include_usage\":true}}"

section "A revoked key: 401 invalid_api_key (the same answer as for an unknown or expired key)"
curl -i "$GATEWAY/v1/models" -H "Authorization: Bearer $REVOKED"
echo

section "Over the free tier's per-key limit (5 requests / 10 s): 429 with retry-after"
# At most 12 tries; the two completions above already counted.
for attempt in $(seq 1 12); do
  response=$(curl -i "$GATEWAY/v1/chat/completions" \
    -H "Authorization: Bearer $FREE" -H 'content-type: application/json' \
    -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":4}")
  status=$(printf '%s\n' "$response" | head -n 1 | awk '{print $2}')
  echo "request $attempt: HTTP $status"
  if [ "$status" = 429 ]; then
    printf '%s\n' "$response"
    exit 0
  fi
done
echo "no 429 after 12 requests: is the gateway running the demo configuration?" >&2
exit 1

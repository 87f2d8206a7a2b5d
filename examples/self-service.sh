#!/usr/bin/env bash
# Self-service keys against `make run` (gateway on 127.0.0.1:10000, the
# control plane behind /maas-api): an administrator creates a small
# subscription, mints a key for it, and the key is used at once — models,
# a chat, a stream — until its token quota answers 429; then it is revoked
# and refused within the sync interval, and the usage shows up in showback.
#
#   make run                      # in one terminal
#   ./examples/self-service.sh    # in another
#
# The admin token is the one the control plane created at first start
# (.cache/control-plane/admin-token), or MAAS_ADMIN_TOKEN. A person would use
# an OIDC token from their identity provider instead: the same calls mint keys
# for the subscriptions their groups allow, and list or revoke only their own.
#
# Every call is bounded (--max-time) and goes to a loopback address only.
# GATEWAY (default http://127.0.0.1:10000) and MAAS_CONTROL_PLANE_DIR (default
# .cache/control-plane) point it elsewhere.

set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAY=${GATEWAY:-http://127.0.0.1:10000}
case "$GATEWAY" in
  http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "GATEWAY must be a loopback http:// URL with a port, not $GATEWAY" >&2; exit 2 ;;
esac
DIR=${MAAS_CONTROL_PLANE_DIR:-.cache/control-plane}
ADMIN=${MAAS_ADMIN_TOKEN:-$(cat "$DIR/admin-token" 2>/dev/null || true)}
[ -n "$ADMIN" ] || { echo "no admin token: start the stack with make run first (or set MAAS_ADMIN_TOKEN)" >&2; exit 2; }
MODEL=${MAAS_MODEL:-smollm2-135m-instruct}

curl() { command curl --silent --show-error --max-time 30 "$@"; }
section() { printf '\n### %s\n' "$*"; }
# The value of "field" in a flat JSON answer (no jq needed).
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
api() { # METHOD PATH [JSON]
  curl -X "$1" "$GATEWAY/maas-api$2" -H "Authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' ${3:+-d "$3"}
}

section "A subscription with a small token quota (400 tokens a minute)"
api PUT /v1/subscriptions/quota-demo \
  "{\"name\":\"quota-demo\",\"models\":[\"$MODEL\"],\"limits\":{\"tokens\":[\"400/min\"]},\"cost_center\":\"examples\"}"
echo

section "Mint a key for it (the plaintext is shown once, in this answer only)"
minted=$(api POST /v1/api-keys "{\"name\":\"example\",\"subscription\":\"quota-demo\",\"owner\":\"example@localhost\",\"expires_in\":\"1h\"}")
echo "$minted"
KEY=$(printf '%s' "$minted" | field key)
ID=$(printf '%s' "$minted" | field id)
[ -n "$KEY" ] || { echo "minting failed" >&2; exit 1; }

section "Use it at once: the gateway has never seen it and asks the control plane"
curl "$GATEWAY/v1/models" -H "Authorization: Bearer $KEY"
echo

section "A chat completion"
curl "$GATEWAY/v1/chat/completions" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":16}"
echo

section "Streamed, with the usage the gateway charges"
curl -N "$GATEWAY/v1/chat/completions" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":8,\"stream\":true,\"stream_options\":{\"include_usage\":true}}"

section "Spend the quota: each request reserves its prompt and max_tokens up front"
hit=""
for attempt in $(seq 1 10); do
  status=$(curl -o /tmp/maas-quota.$$ -w '%{http_code}' "$GATEWAY/v1/chat/completions" \
    -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":64}")
  echo "request $attempt: HTTP $status"
  if [ "$status" = 429 ]; then cat /tmp/maas-quota.$$; echo; hit=yes; break; fi
done
rm -f /tmp/maas-quota.$$
[ -n "$hit" ] || { echo "no 429 after 10 requests" >&2; exit 1; }

section "Revoke it: refused within the sync interval"
api DELETE "/v1/api-keys/$ID"
echo
start=$(date +%s%N)
for _ in $(seq 1 500); do
  status=$(curl -o /dev/null -w '%{http_code}' "$GATEWAY/v1/models" -H "Authorization: Bearer $KEY")
  if [ "$status" = 401 ]; then
    echo "HTTP 401 after $(( ($(date +%s%N) - start) / 1000000 )) ms"
    break
  fi
  sleep 0.01
done
[ "$status" = 401 ] || { echo "the revoked key still works" >&2; exit 1; }

section "Showback: tokens and requests per subscription and model (sampled from Envoy every 15 s)"
api GET /v1/usage
echo

#!/usr/bin/env bash
# `make test`: every suite, with what the suites need started here, so a
# fresh machine runs them all and none passes without running:
# - a throwaway PostgreSQL (scripts/postgres.sh) for the control plane's
#   store and end-to-end suites, unless MAAS_TEST_POSTGRES_URL names one;
#   stopped afterwards when this script started it;
# - Debian's Chromium (scripts/chromium.sh) for the showback page's browser
#   test, unless MAAS_CHROMIUM names one, and the `openssl` CLI for the test
#   CA of the provider suites;
# - the Gemma 3 270M Q4_K_M file (scripts/fetch-gemma.sh, pinned, cached) for
#   the SentencePiece tokenizer and gemma3 tests;
# - llama.cpp's llama-server and llama-quantize (scripts/llama-cpp.sh, about
#   11 minutes on 2 cores the first time, cached) and the files it makes
#   (scripts/reference-models.sh) for the comparison with llama.cpp, which
#   runs last, on its own, in the optimized `serve` profile (its forward
#   passes would take many minutes unoptimized).
# Extra arguments go to `cargo test` (e.g. `make test ARGS='-p maas-limiter'`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}

if [ -z "${MAAS_TEST_POSTGRES_URL:-}" ]; then
  MAAS_TEST_POSTGRES_URL=$(./scripts/postgres.sh start)
  trap './scripts/postgres.sh stop' EXIT
fi
export MAAS_TEST_POSTGRES_URL
if [ -z "${MAAS_CHROMIUM:-}" ]; then
  MAAS_CHROMIUM=$(./scripts/chromium.sh)
fi
export MAAS_CHROMIUM
# The `openssl` CLI signs the test CA's certificates (the provider suites'
# TLS stand-ins); installed once with apt-get, as Chromium is.
if ! command -v openssl >/dev/null; then
  # shellcheck source=apt.sh
  . ./scripts/apt.sh
  apt_install "the provider suites' test CA" openssl
fi
./scripts/fetch-gemma.sh
./scripts/reference-models.sh >/dev/null
# The server without any credentials a user put in the URL.
echo "==> PostgreSQL for the store tests: ${MAAS_TEST_POSTGRES_URL##*@}; Chromium: $MAAS_CHROMIUM"

if [ $# -gt 0 ]; then
  "$cargo" test --locked "$@"
else
  "$cargo" test --workspace --all-targets --locked
  "$cargo" test --workspace --doc --locked
  # One test at a time: each runs llama-server and our model on every core,
  # and two at once push a long F32 Gemma completion past the client's
  # timeout.
  "$cargo" test --profile serve --locked -p maas-inference-server --test llama_cpp_reference \
    -- --test-threads=1
fi

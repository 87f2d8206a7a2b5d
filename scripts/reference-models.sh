#!/usr/bin/env bash
# The files the llama.cpp comparison tests and the per-format benchmarks run
# on, made once by llama.cpp's own `llama-quantize` (scripts/llama-cpp.sh
# builds it beside llama-server) from the two fetched files, and cached in
# .cache/models/reference/ (git-ignored):
# - SmolLM2-135M-Instruct requantized from its Q4_1 file to Q4_K_M, Q5_K_M,
#   Q6_K and Q8_0: the K-quant layouts people download, on a model small
#   enough for every test run;
# - SmolLM2 and Gemma 3 270M dequantized to F32: the same weights with no
#   quantized arithmetic left, where ours and llama.cpp must compute the same
#   function to a few thousandths (see
#   inference-server/tests/llama_cpp_reference.rs).
# Each file is written under a temporary name and renamed when complete, so
# an interrupted run leaves nothing that looks finished. Prints the
# directory on the last line of stdout; progress goes to stderr.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/fetch-model.sh" >&2
"$root/scripts/fetch-gemma.sh" >&2
server=$("$root/scripts/llama-cpp.sh" | tail -n 1)
quantize="$(dirname "$server")/llama-quantize"
models="$root/.cache/models"
out="$models/reference"
mkdir -p "$out"
# Made by this llama.cpp build: files another build made are made again.
stamp="$out/made-by"
made_by=$(dirname "${server#"$root"/}")
if [ "$(cat "$stamp" 2>/dev/null)" != "$made_by" ]; then
  rm -f "$out"/*.gguf
  echo "$made_by" >"$stamp"
fi

smol="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
gemma="$models/gemma-3-270m-q4_k_m.gguf"
# source, target file name, llama-quantize type
jobs=(
  "$smol SmolLM2-135M-Instruct.Q4_K_M.gguf Q4_K_M"
  "$smol SmolLM2-135M-Instruct.Q5_K_M.gguf Q5_K_M"
  "$smol SmolLM2-135M-Instruct.Q6_K.gguf Q6_K"
  "$smol SmolLM2-135M-Instruct.Q8_0.gguf Q8_0"
  "$smol SmolLM2-135M-Instruct.F32.gguf F32"
  "$gemma gemma-3-270m.F32.gguf F32"
)
for job in "${jobs[@]}"; do
  read -r source name type <<<"$job"
  [ -f "$out/$name" ] && continue
  echo "==> llama-quantize $(basename "$source") -> $name" >&2
  # --allow-requantize: the sources are already quantized; the K-quant and
  # F32 results are what llama.cpp's users get from the same command.
  LD_LIBRARY_PATH="$(dirname "$server")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$quantize" --allow-requantize "$source" "$out/$name.part" "$type" "$(nproc)" \
    >"$out/$name.log" 2>&1 || {
    tail -n 20 "$out/$name.log" >&2
    rm -f "$out/$name.part"
    exit 1
  }
  mv "$out/$name.part" "$out/$name"
  rm -f "$out/$name.log"
done
echo "$out"

#!/usr/bin/env bash
# The peer for the inference benchmarks: llama.cpp's `llama-server`, built
# from the source PyPI's llama-cpp-python 0.3.36 sdist bundles under
# vendor/llama.cpp (pinned by sha256, downloaded once into .cache/downloads),
# with cmake and ninja from Debian. The build (about 11 minutes on 2 cores)
# is cached in .cache/llama.cpp/0.3.36/; a finished build is reused as is.
# Prints the path of llama-server on the last line of stdout (llama-quantize,
# built beside it, is in the same directory); progress goes to stderr.
#
# Native CPU features, but never AMX: on a VM whose cpuid advertises AMX
# while the kernel does not grant the tile state (seen on a Sapphire Rapids
# VM), a -march=native build dies with SIGILL in its AMX kernels at warm-up.
# Our kernels use no AMX either, so the comparison stays like for like. GCC
# keeps explicit -mno-* flags over what -march=native implies, whatever
# their order on the command line.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=0.3.36
file="llama_cpp_python-$version.tar.gz"
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$file"
downloads="$root/.cache/downloads"
dir="$root/.cache/llama.cpp/$version"
server="$dir/build/bin/llama-server"
# Bumped when the build's flags or targets change, so a cached older build
# is rebuilt.
built="$dir/.built-noamx-quantize"

if [ -x "$server" ] && [ -f "$built" ]; then
  echo "$server"
  exit 0
fi

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v ninja >/dev/null || missing+=(ninja-build)
command -v g++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  # shellcheck source=apt.sh
  . "$(dirname "$0")/apt.sh"
  apt_install "to build llama.cpp" "${missing[@]}"
fi

mkdir -p "$downloads"
if [ ! -f "$downloads/$file" ]; then
  echo "==> downloading llama-cpp-python $version (sdist, 77 MB)" >&2
  curl --fail --location --progress-bar --max-time 900 -o "$downloads/$file.part" "$url" >&2
  echo "==> verifying $file" >&2
  echo "$sha256  $downloads/$file.part" | sha256sum --check --quiet >&2 || {
    echo "checksum mismatch for the downloaded $file; not kept" >&2
    rm -f "$downloads/$file.part"
    exit 1
  }
  mv "$downloads/$file.part" "$downloads/$file"
fi
echo "==> verifying $file" >&2
echo "$sha256  $downloads/$file" | sha256sum --check --quiet >&2 || {
  echo "the cached $file does not match its checksum; removed it, run again to download it" >&2
  rm -f "$downloads/$file"
  exit 1
}

src="$dir/src"
if [ ! -f "$src/CMakeLists.txt" ]; then
  echo "==> extracting vendor/llama.cpp" >&2
  rm -rf "$src" "$dir/extract"
  mkdir -p "$dir/extract"
  tar -xzf "$downloads/$file" -C "$dir/extract" "llama_cpp_python-$version/vendor/llama.cpp"
  mv "$dir/extract/llama_cpp_python-$version/vendor/llama.cpp" "$src"
  rm -rf "$dir/extract"
fi

no_amx=""
case "$(uname -m)" in
  x86_64) no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;;
esac
echo "==> building llama-server and llama-quantize (native CPU without AMX, about 11 minutes on 2 cores; cached afterwards)" >&2
cmake -S "$src" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >&2
cmake --build "$dir/build" --target llama-server llama-quantize -j "$(nproc)" >&2
touch "$built"
echo "$server"

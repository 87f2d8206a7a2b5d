#!/usr/bin/env bash
# The CUDA compiler for `--features cuda` builds of the inference server:
# nvcc 13.4 from NVIDIA's PyPI wheels (no system CUDA needed; cudarc 0.19
# accepts up to 13.4). Each wheel is pinned by version and sha256, downloaded
# once into .cache/downloads and unpacked into .cache/cuda/13.4.92/, which is
# laid out like a CUDA toolkit (bin/nvcc, nvvm/, include/, lib/).
# Prints the toolkit root on the last line of stdout; progress goes to stderr.
# Only `make server-cuda` uses it: the default build and the tests never do.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=13.4.92
downloads="$root/.cache/downloads"
dir="$root/.cache/cuda/$version"
toolkit="$dir/nvidia/cu13"

if [ "$(uname -m)" != x86_64 ]; then
  echo "the pinned CUDA wheels are for x86_64 Linux; this machine is $(uname -m)" >&2
  exit 1
fi

if [ -x "$toolkit/bin/nvcc" ] && [ -f "$dir/.unpacked" ]; then
  echo "$toolkit"
  exit 0
fi

# wheel name, sha256. CCCL (libcu++, CUB, Thrust headers) is versioned apart
# from the compiler; 13.3.5.0.6 is the newest final release at the pin.
wheels=(
  "nvidia_cuda_nvcc-13.4.92-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl a1f3bfb27299e060b444d5df1f4bcd762501326cf0fd3141ed61756816ab9a0e"
  "nvidia_nvvm-13.4.92-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl e4c81cb321dd9743bcf871c5e7e8fecd7f05dea607944426e102bdda8d49e137"
  "nvidia_cuda_crt-13.4.92-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 731ce3de11df8add8306404417a1edaede225dbe27eb233aed37c8de9d4fe720"
  "nvidia_cuda_runtime-13.4.92-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 9641f797da20ce1dd8e779b6e96d08cf9ba564cec8e8225458811ee26423f3a5"
  "nvidia_cuda_cccl-13.3.5.0.6-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl d5230098fa2df5021e1a00c0c4eee41797671a91119d31e892463e5ccf3ee326"
)

command -v unzip >/dev/null || {
  echo "==> installing unzip (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq unzip; } >&2
}

mkdir -p "$downloads"
rm -rf "$dir"
mkdir -p "$dir"
for entry in "${wheels[@]}"; do
  read -r file sha256 <<<"$entry"
  if [ ! -f "$downloads/$file" ]; then
    # The wheel's name carries its version: `pkg-ver-...whl`.
    pkg=$(echo "$file" | cut -d- -f1 | tr _ -)
    ver=$(echo "$file" | cut -d- -f2)
    echo "==> downloading $pkg $ver" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: --progress-bar on \
      --dest "$downloads" "$pkg==$ver" >&2
  fi
  echo "==> verifying $file" >&2
  echo "$sha256  $downloads/$file" | sha256sum --check --quiet >&2 || {
    echo "checksum mismatch for $file; removing it" >&2
    rm -f "$downloads/$file"
    exit 1
  }
  unzip -q -o "$downloads/$file" 'nvidia/*' -d "$dir"
done
"$toolkit/bin/nvcc" --version >&2
touch "$dir/.unpacked"
echo "$toolkit"

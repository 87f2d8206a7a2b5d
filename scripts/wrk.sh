#!/usr/bin/env bash
# Installs Debian's wrk (the HTTP load generator benches/load.sh drives) into
# .cache/wrk/ (git-ignored), once and without root: pinned .debs, sha256
# checked (scripts/deb.sh), unpacked with `dpkg-deb -x`, and a wrapper at
# .cache/wrk/$WRK_VERSION/bin/wrk that finds LuaJIT beside it. Prints the
# wrapper's path on the last line of stdout.
set -euo pipefail

WRK_VERSION=4.1.0-3+b2
WRK_SHA256=b0206dc74df85365a248ddac2433c0ee3f210579fc5ed83758e73354bb1bbefb
# wrk's Lua (its request scripts) is LuaJIT's library; the security
# archive keeps only its newest revision, so list a newer one first when
# one comes out, with its sha256.
LUAJIT=(
  "2.1.0~beta3+git20220320+dfsg-4.1+deb12u1 1f0ea919d09d47420993aca0102ec0aed46338b2bf7e072a4b4566c5616f09d2"
)

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/wrk/$WRK_VERSION"
bin="$dest/bin/wrk"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
if [ "$(dpkg --print-architecture 2>/dev/null)" != amd64 ]; then
  echo "scripts/wrk.sh pins amd64 packages; install wrk and set WRK=/path/to/wrk" >&2
  exit 1
fi

downloads="$root/.cache/downloads/wrk"
# shellcheck source=deb.sh
. "$root/scripts/deb.sh"

fetch_into wrk_deb fetch_deb "$downloads" "wrk=$WRK_VERSION" "$WRK_SHA256" || {
  echo "cannot download wrk=$WRK_VERSION; see scripts/wrk.sh" >&2
  exit 1
}
fetch_into luajit_deb fetch_any "$downloads" libluajit-5.1-2 "${LUAJIT[@]}" || {
  echo "no pinned libluajit-5.1-2 revision could be downloaded; see scripts/wrk.sh" >&2
  exit 1
}

echo "==> unpacking wrk $WRK_VERSION into $dest" >&2
staging=$(unpack_debs "$dest" "$wrk_deb" "$luajit_deb")
write_wrapper "$staging" wrk wrk
install_unpacked "$staging" "$dest"
# `wrk --version` prints its banner and usage, and exits 1.
{ "$bin" --version 2>&1 || true; } | head -n1 >&2
echo "$bin"

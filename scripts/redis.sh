#!/usr/bin/env bash
# Installs Debian's Redis server into .cache/redis/ (git-ignored), once and
# without root: `apt-get download` of pinned .debs (sha256 checked), unpacked
# with `dpkg-deb -x`, and a wrapper at .cache/redis/$REDIS_VERSION/bin/redis-server
# that finds the unpacked libraries. The limiter's tests and the local stack
# run it on loopback with persistence off.
#
# Debian ships the server binary in redis-tools (redis-server is a symlink to
# redis-check-rdb, which runs as the server unless called by that name), so
# the redis-server package itself (config and init files) is not needed.
set -euo pipefail

REDIS_VERSION=7.0.15
# Debian revisions of 7.0.15 for bookworm, newest first, each with the
# sha256 of its redis-tools .deb: the security archive keeps only its newest
# revision, so the older one (bookworm's main) is the fallback.
REDIS_TOOLS=(
  "5:7.0.15-1~deb12u10 f791cfcbf3054832bd6e786546acb0d4e046888f8e63bcf567c1c65fbfaf69e2"
  "5:7.0.15-1~deb12u7 3c8cd27847c6a06b6f6c29e7415a9057462a89661e3a8e2eb8dd5b2d7830bb40"
)
# Libraries redis-tools links that a minimal image lacks.
LIBS=(
  "libjemalloc2=5.3.0-1 a4117c23c5c8acf6c9678a6cb086f000b79476369da7efe8a78a70826956ad3d"
  "liblzf1=3.6-3 9854b0866201b63e04f1e446f45f01ef4a6f72c61f2250b75f944f6046cc7e8c"
)

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/redis/$REDIS_VERSION"
bin="$dest/bin/redis-server"

if [ -x "$bin" ]; then
  exit 0
fi
if [ "$(dpkg --print-architecture 2>/dev/null)" != amd64 ]; then
  echo "scripts/redis.sh pins amd64 packages; install redis-server $REDIS_VERSION and set MAAS_REDIS_SERVER" >&2
  exit 1
fi

downloads="$root/.cache/downloads/redis"
mkdir -p "$downloads"

# shellcheck source=deb.sh
. "$root/scripts/deb.sh"

debs=()
fetch_into tools fetch_any "$downloads" redis-tools "${REDIS_TOOLS[@]}" || {
  echo "no pinned redis-tools revision of $REDIS_VERSION could be downloaded; see scripts/redis.sh" >&2
  exit 1
}
debs+=("$tools")
for entry in "${LIBS[@]}"; do
  read -r spec sha256 <<<"$entry"
  fetch_into deb fetch_deb "$downloads" "$spec" "$sha256" || {
    echo "cannot download $spec; see scripts/redis.sh" >&2
    exit 1
  }
  debs+=("$deb")
done

echo "==> unpacking Redis $REDIS_VERSION into $dest" >&2
staging=$(unpack_debs "$dest" "${debs[@]}")
# The server binary is redis-check-rdb, which runs as the server under
# that name.
write_wrapper "$staging" redis-server redis-check-rdb redis-server
write_wrapper "$staging" redis-cli redis-cli
install_unpacked "$staging" "$dest"
"$bin" --version

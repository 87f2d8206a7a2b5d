#!/usr/bin/env bash
# Debian's Chromium for the showback page's browser test; prints its path.
# Installed once with apt-get (progress on stderr).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Chromium (Debian package chromium)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } >&2
fi
echo /usr/bin/chromium

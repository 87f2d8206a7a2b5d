#!/usr/bin/env bash
# Debian's Chromium for the showback page's browser test; prints its path.
# Installed once with apt-get (progress on stderr).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  # shellcheck source=apt.sh
  . "$(dirname "$0")/apt.sh"
  apt_install "the showback page's browser test" chromium
fi
echo /usr/bin/chromium

#!/usr/bin/env bash
# A virtual environment with the official OpenAI Python client, for the
# example scripts and the tests that run them. Exactly the versions and
# hashes in examples/requirements.txt (pip --require-hashes), once, cached in
# .cache/python; reinstalled when that file changes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cache/python"
requirements="$root/examples/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

echo "==> python environment for the examples (.cache/python: openai client, pinned with hashes)"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar on \
  --require-hashes --only-binary=:all: --no-deps -r "$requirements"
"$venv/bin/python" -c "import openai; print('    openai', openai.__version__)"
echo "$want" > "$stamp"

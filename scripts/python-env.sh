#!/usr/bin/env bash
# Pinned Python virtual environments, each built once from a requirements file
# with hashes (pip --require-hashes, wheels only) and rebuilt when that file
# changes:
#
#   scripts/python-env.sh            .cache/python: the official OpenAI client
#                                    and the jsonschema validator,
#                                    for the example scripts and the tests that
#                                    run them (examples/requirements.txt)
#   scripts/python-env.sh reference  .cache/python-reference: transformers, to
#                                    regenerate the tokenizer and chat-template
#                                    reference data the tests read
#                                    (inference-server/tests/tokenizer_reference/)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

case "${1:-examples}" in
  examples)
    venv="$root/.cache/python"
    requirements="$root/examples/requirements.txt"
    what="the examples (.cache/python: openai client and jsonschema, pinned with hashes)"
    check="from importlib.metadata import version; print('    openai', version('openai'), 'jsonschema', version('jsonschema'))"
    ;;
  reference)
    venv="$root/.cache/python-reference"
    requirements="$root/inference-server/tests/tokenizer_reference/requirements.txt"
    what="tokenizer reference data (.cache/python-reference: transformers, pinned with hashes)"
    check="import transformers, tokenizers; print('    transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)"
    ;;
  *)
    echo "usage: $0 [examples|reference]" >&2
    exit 2
    ;;
esac

stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

# The hashes pin CPython 3.11's wheels (compiled packages have one per
# Python version): another Python would fail with pip's hash mismatch.
python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "the pinned environments are CPython 3.11 wheels; python3 here is $(python3 --version 2>&1)" >&2
  exit 1
}
python3 -c 'import venv, ensurepip' 2>/dev/null || {
  echo "python3 has no venv/ensurepip module (Debian: apt-get install python3-venv)" >&2
  exit 1
}
echo "==> python environment for $what"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar on \
  --require-hashes --only-binary=:all: --no-deps -r "$requirements"
"$venv/bin/python" -c "$check"
echo "$want" > "$stamp"

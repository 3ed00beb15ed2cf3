#!/usr/bin/env bash
# Installs (once) the official `openai` Python package into a cached venv for the
# OpenAI front-door tests. Prints the venv's python as the last line of stdout.
#
# Cache: ${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}/openai-py-<version>/
# Needs python3 with venv and PyPI access on the first run; a warm cache returns at once.
set -euo pipefail

OPENAI_VERSION=3.54.0
CACHE="${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}"
PREFIX="$CACHE/openai-py-$OPENAI_VERSION"
PY="$PREFIX/venv/bin/python"

if [[ -f "$PREFIX/.complete" && -x "$PY" ]]; then
    echo "$PY"
    exit 0
fi

start=$(date +%s)
mkdir -p "$CACHE"
exec 9>"$PREFIX.lock"
flock 9
if [[ ! -f "$PREFIX/.complete" ]]; then
    rm -rf "$PREFIX"
    python3 -m venv "$PREFIX/venv" >&2
    "$PY" -m pip install --disable-pip-version-check --quiet "openai==$OPENAI_VERSION" >&2
    "$PY" -c "import openai; assert openai.__version__ == '$OPENAI_VERSION', openai.__version__" >&2
    echo "openai==$OPENAI_VERSION" > "$PREFIX/.complete"
    echo "openai $OPENAI_VERSION installed in $(( $(date +%s) - start ))s" >&2
fi
echo "$PY"

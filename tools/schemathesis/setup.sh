#!/usr/bin/env bash
# Installs (once) a pinned schemathesis from PyPI into a cached venv for the contract fuzz
# run (tools/schemathesis/run.sh). Prints the venv's `st` as the last line of stdout;
# progress goes to stderr.
#
# Cache: ${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}/schemathesis-<version>/
# Needs python3 (>= 3.9) with venv and PyPI access on the first run; a warm cache returns at once.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
CACHE="${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}"
PREFIX="$CACHE/schemathesis-$SCHEMATHESIS_VERSION"
ST="$PREFIX/venv/bin/st"

if [[ -f "$PREFIX/.complete" && -x "$ST" ]]; then
    echo "$ST"
    exit 0
fi

start=$(date +%s)
mkdir -p "$CACHE"
exec 9>"$PREFIX.lock"
flock 9
if [[ ! -f "$PREFIX/.complete" ]]; then
    rm -rf "$PREFIX"
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $PREFIX/venv" >&2
    python3 -m venv "$PREFIX/venv" >&2
    "$PREFIX/venv/bin/python" -m pip install --disable-pip-version-check --quiet \
        "schemathesis==$SCHEMATHESIS_VERSION" >&2
    "$PREFIX/venv/bin/python" -c "
import importlib.metadata as m
v = m.version('schemathesis')
assert v == '$SCHEMATHESIS_VERSION', v
" >&2
    "$ST" --version >&2
    echo "schemathesis==$SCHEMATHESIS_VERSION" > "$PREFIX/.complete"
    echo "schemathesis $SCHEMATHESIS_VERSION installed in $(( $(date +%s) - start ))s" >&2
fi
echo "$ST"

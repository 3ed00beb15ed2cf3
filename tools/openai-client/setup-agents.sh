#!/usr/bin/env bash
# Installs (once) the OpenAI Agents SDK (`openai-agents`, with the same pinned `openai`
# as setup.sh) into its own cached venv for host/tests/openai/agent_check.py.
# Prints the venv's python as the last line of stdout.
#
# Cache: ${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}/openai-agents-<version>/
# Needs python3 (>= 3.10) with venv and PyPI access on the first run; a warm cache returns at once.
set -euo pipefail

AGENTS_VERSION=0.24.0
OPENAI_VERSION=3.54.0
CACHE="${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}"
PREFIX="$CACHE/openai-agents-$AGENTS_VERSION"
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
    "$PY" -m pip install --disable-pip-version-check --quiet \
        "openai-agents==$AGENTS_VERSION" "openai==$OPENAI_VERSION" >&2
    "$PY" -c "import agents, openai; assert agents.__version__ == '$AGENTS_VERSION', agents.__version__; assert openai.__version__ == '$OPENAI_VERSION', openai.__version__" >&2
    echo "openai-agents==$AGENTS_VERSION openai==$OPENAI_VERSION" > "$PREFIX/.complete"
    echo "openai-agents $AGENTS_VERSION installed in $(( $(date +%s) - start ))s" >&2
fi
echo "$PY"

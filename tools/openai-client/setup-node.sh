#!/usr/bin/env bash
# Installs (once) the official `openai` Node SDK into a cached folder for the OpenAI
# front-door tests (host/tests/openai/tools_check.mjs). Prints the folder that holds
# node_modules as the last line of stdout; pass it to the checks as --sdk-dir.
#
# Cache: ${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}/openai-node-<version>/
# Needs node >= 20 with npm, and the npm registry on the first run; a warm cache returns at once.
# Pinned to the 6.x line: openai 7.x declares engines.node >= 22.
set -euo pipefail

OPENAI_NODE_VERSION=6.30.1
CACHE="${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}"
PREFIX="$CACHE/openai-node-$OPENAI_NODE_VERSION"

if [[ -f "$PREFIX/.complete" && -f "$PREFIX/node_modules/openai/package.json" ]]; then
    echo "$PREFIX"
    exit 0
fi

command -v node >/dev/null && command -v npm >/dev/null || {
    echo "setup-node.sh: node and npm are needed" >&2
    exit 1
}
major=$(node -p 'process.versions.node.split(".")[0]')
if (( major < 20 )); then
    echo "setup-node.sh: node >= 20 is needed (found $(node --version))" >&2
    exit 1
fi

start=$(date +%s)
mkdir -p "$CACHE"
exec 9>"$PREFIX.lock"
flock 9
if [[ ! -f "$PREFIX/.complete" ]]; then
    rm -rf "$PREFIX"
    mkdir -p "$PREFIX"
    printf '{"name":"orchd-openai-node","private":true}\n' > "$PREFIX/package.json"
    npm install --prefix "$PREFIX" --save-exact --no-audit --no-fund --loglevel=error \
        "openai@$OPENAI_NODE_VERSION" >&2
    got=$(node -p "require('$PREFIX/node_modules/openai/package.json').version")
    [[ "$got" == "$OPENAI_NODE_VERSION" ]] || {
        echo "setup-node.sh: installed openai $got, wanted $OPENAI_NODE_VERSION" >&2
        exit 1
    }
    echo "openai@$OPENAI_NODE_VERSION" > "$PREFIX/.complete"
    echo "openai (node) $OPENAI_NODE_VERSION installed in $(( $(date +%s) - start ))s" >&2
fi
echo "$PREFIX"

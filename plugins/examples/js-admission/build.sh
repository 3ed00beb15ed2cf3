#!/usr/bin/env bash
# Builds the js-admission policy into a WebAssembly component (componentize-qjs, through
# tools/componentize-js/build.sh, against wit/0.2.0).
#
# Usage: build.sh OUT_WASM
set -euo pipefail
[[ $# -eq 1 && -n "$1" ]] || { echo "usage: $0 OUT_WASM" >&2; exit 1; }
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/../../.." && pwd)
exec bash "$REPO/tools/componentize-js/build.sh" admission-policy "$HERE/app.js" "$REPO/wit/0.2.0" "$1"

#!/usr/bin/env bash
# Builds a JavaScript policy into a WebAssembly component.
#
# Usage: build.sh WORLD APP_JS WIT_DIR OUT_WASM
#   e.g. build.sh admission-policy app.js <repo>/wit/0.2.0 my-policy.wasm
#
# @bytecodealliance/componentize-js (pinned below) is installed (once) with npm into
#   ${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}/componentize-js-<version>
# and its QuickJS route, componentize-qjs, builds APP_JS against WIT_DIR, world WORLD, with
# --stub-wasi (the host gives policies no WASI: every WASI import becomes a trap inside
# the component) and --sync (no component-model async ABI). The output is about 1.6 MB.
# Needs node >= 20 with npm, and the npm registry on the first run.
set -euo pipefail

die() { echo "componentize-js/build.sh: error: $*" >&2; exit 1; }
trap 'echo "componentize-js/build.sh: FAILED (line $LINENO)" >&2' ERR

[[ $# -eq 4 ]] || die "usage: $0 WORLD APP_JS WIT_DIR OUT_WASM"
WORLD=$1
APP=$(cd -- "$(dirname -- "$2")" && pwd)/$(basename -- "$2")
WIT=$3
OUT=$4
[[ -f "$APP" ]] || die "no JavaScript module at $APP"
[[ -f "$WIT/policy.wit" ]] || die "no WIT at $WIT/policy.wit"
[[ "$OUT" = /* ]] || OUT="${PWD%/}/$OUT"
mkdir -p -- "$(dirname -- "$OUT")"

CJS_VERSION=0.23.0
CACHE="${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}"
PREFIX="$CACHE/componentize-js-$CJS_VERSION"
QJS="$PREFIX/node_modules/.bin/componentize-qjs"

start=$(date +%s%N)
if [[ ! -f "$PREFIX/.complete" || ! -x "$QJS" ]]; then
    command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed"
    major=$(node -p 'process.versions.node.split(".")[0]')
    (( major >= 20 )) || die "node >= 20 is needed (found $(node --version))"
    mkdir -p -- "$CACHE"
    exec 9>"$PREFIX.lock"
    flock 9
    if [[ ! -f "$PREFIX/.complete" ]]; then
        echo "componentize-js/build.sh: installing @bytecodealliance/componentize-js@$CJS_VERSION into $PREFIX" >&2
        rm -rf -- "$PREFIX"
        mkdir -p -- "$PREFIX"
        printf '{"name":"orchd-componentize-js","private":true}\n' > "$PREFIX/package.json"
        npm install --prefix "$PREFIX" --save-exact --no-audit --no-fund --loglevel=error \
            "@bytecodealliance/componentize-js@$CJS_VERSION" >&2 \
            || die "npm install @bytecodealliance/componentize-js@$CJS_VERSION failed"
        touch "$PREFIX/.complete"
    fi
    exec 9>&-
fi
[[ -x "$QJS" ]] || die "componentize-qjs missing from $PREFIX"

TMP_OUT="$OUT.tmp.$$"
rm -f -- "$TMP_OUT"
"$QJS" --wit "$WIT" --world "$WORLD" --js "$APP" \
    --stub-wasi --sync --output "$TMP_OUT" >&2 \
    || { rm -f -- "$TMP_OUT"; die "componentize-qjs failed"; }
[[ -s "$TMP_OUT" ]] || { rm -f -- "$TMP_OUT"; die "componentize-qjs produced no output"; }
mv -f -- "$TMP_OUT" "$OUT"
end=$(date +%s%N)
ms=$(( (end - start) / 1000000 ))
size=$(stat -c %s -- "$OUT")
printf 'componentize-js/build.sh: built %s (%d bytes) in %d.%03d s\n' "$OUT" "$size" $((ms / 1000)) $((ms % 1000))

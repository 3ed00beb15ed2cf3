#!/usr/bin/env bash
# Builds the python-admission policy into a WebAssembly component.
#
# Usage: build.sh OUT_WASM
#
# componentize-py 0.25.1 is installed (once) into a venv under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/orchd/componentize-py-0.25.1
# and run against <repo>/wit/0.2.0, world `admission-policy`, with --stub-wasi
# (the host gives policies no WASI; every WASI import becomes a trap).
set -euo pipefail

die() { echo "build.sh: error: $*" >&2; exit 1; }
trap 'echo "build.sh: FAILED (line $LINENO)" >&2' ERR

[[ $# -eq 1 && -n "$1" ]] || die "usage: $0 OUT_WASM"

CPY_VERSION=0.25.1
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/../../.." && pwd)
WIT="$REPO/wit/0.2.0"
[[ -f "$WIT/policy.wit" ]] || die "no WIT at $WIT/policy.wit"

# Resolve OUT_WASM against the caller's cwd before we cd anywhere.
OUT=$1
[[ "$OUT" = /* ]] || OUT="${PWD%/}/$OUT"
mkdir -p -- "$(dirname -- "$OUT")"

VENV="${XDG_CACHE_HOME:-$HOME/.cache}/orchd/componentize-py-$CPY_VERSION"
CPY="$VENV/bin/componentize-py"

start=$(date +%s%N)

if [[ ! -x "$VENV/bin/python" ]]; then
    command -v python3 >/dev/null || die "python3 not found"
    echo "build.sh: creating venv $VENV"
    rm -rf -- "$VENV"
    mkdir -p -- "$(dirname -- "$VENV")"
    python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
if ! have=$("$CPY" --version 2>/dev/null) || [[ "$have" != "componentize-py $CPY_VERSION" ]]; then
    echo "build.sh: installing componentize-py==$CPY_VERSION into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "componentize-py==$CPY_VERSION" \
        || die "pip install componentize-py==$CPY_VERSION failed"
fi
have=$("$CPY" --version) || die "componentize-py does not run"
[[ "$have" == "componentize-py $CPY_VERSION" ]] || die "expected componentize-py $CPY_VERSION, got: $have"

cd -- "$HERE"
# Build to a temporary name so a failed build never leaves a stale OUT_WASM behind.
TMP_OUT="$OUT.tmp.$$"
rm -f -- "$OUT" "$TMP_OUT"
# No VIRTUAL_ENV: componentize-py would add its site-packages to the app's path.
env -u VIRTUAL_ENV "$CPY" -d "$WIT" -w admission-policy \
    componentize --stub-wasi -p "$HERE" app -o "$TMP_OUT" \
    || { rm -f -- "$TMP_OUT"; die "componentize-py failed"; }
[[ -s "$TMP_OUT" ]] || { rm -f -- "$TMP_OUT"; die "componentize-py produced no output"; }
mv -f -- "$TMP_OUT" "$OUT"
end=$(date +%s%N)
ms=$(( (end - start) / 1000000 ))
size=$(stat -c %s -- "$OUT")
printf 'build.sh: built %s (%d bytes) in %d.%03d s\n' "$OUT" "$size" $((ms / 1000)) $((ms % 1000))

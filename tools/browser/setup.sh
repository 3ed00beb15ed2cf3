#!/usr/bin/env bash
# Installs (once) what the browser tests need (host/tests/browser/page_check.mjs): Debian's
# `chromium` at /usr/bin/chromium, and `playwright-core` (the driver only, no browser
# download) into a cached folder. Prints the folder that holds node_modules as the last
# line of stdout; pass it to the checks as --pw-dir (the tests read it from $ORCHD_BROWSER).
# Progress goes to stderr.
#
# Cache: ${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}/
#   playwright-core-<version>/   the npm install, with a .complete marker
#   apt-archives/                the chromium .debs, kept so a cold machine installs from them
# Needs node >= 20 with npm, apt-get and root (or passwordless sudo) when chromium is absent,
# and the npm registry and Debian's archive on the first run; a warm cache returns at once.
set -euo pipefail

PLAYWRIGHT_CORE_VERSION=1.65.1
CHROMIUM=/usr/bin/chromium
CACHE="${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}"
PREFIX="$CACHE/playwright-core-$PLAYWRIGHT_CORE_VERSION"

if [[ -x "$CHROMIUM" && -f "$PREFIX/.complete" && -f "$PREFIX/node_modules/playwright-core/package.json" ]]; then
    echo "$PREFIX"
    exit 0
fi

command -v node >/dev/null && command -v npm >/dev/null || {
    echo "browser/setup.sh: node and npm are needed" >&2
    exit 1
}
major=$(node -p 'process.versions.node.split(".")[0]')
if (( major < 20 )); then
    echo "browser/setup.sh: node >= 20 is needed (found $(node --version))" >&2
    exit 1
fi

start=$(date +%s)
mkdir -p "$CACHE"

# --- chromium, from Debian ---------------------------------------------------------------
if [[ ! -x "$CHROMIUM" ]]; then
    exec 8>"$CACHE/chromium.lock"
    flock 8
    if [[ ! -x "$CHROMIUM" ]]; then
        sudo=()
        if (( EUID != 0 )); then
            command -v sudo >/dev/null && sudo -n true 2>/dev/null || {
                echo "browser/setup.sh: $CHROMIUM is missing and installing it needs root: apt-get install chromium" >&2
                exit 1
            }
            sudo=(sudo -n)
        fi
        # The .debs stay in the cache (apt's own archive dir may be cleaned); root fetches
        # them, since apt's sandbox user cannot write into a home directory.
        archives="$CACHE/apt-archives"
        mkdir -p "$archives/partial"
        apt_install() {
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                --no-install-recommends -o "Dir::Cache::archives=$archives" \
                -o APT::Sandbox::User=root chromium >&2
        }
        echo "browser/setup.sh: installing chromium (debs cached in $archives)" >&2
        if ! apt_install; then
            # The package lists may be missing or stale (a fresh machine): refresh, retry.
            echo "browser/setup.sh: apt-get install failed; running apt-get update and retrying" >&2
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
            apt_install
        fi
        [[ -x "$CHROMIUM" ]] || {
            echo "browser/setup.sh: chromium installed, but $CHROMIUM is not there" >&2
            exit 1
        }
        echo "browser/setup.sh: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed" >&2
    fi
    flock -u 8
fi

# --- playwright-core, from npm -------------------------------------------------------------
if [[ ! -f "$PREFIX/.complete" || ! -f "$PREFIX/node_modules/playwright-core/package.json" ]]; then
    exec 9>"$PREFIX.lock"
    flock 9
    if [[ ! -f "$PREFIX/.complete" ]]; then
        rm -rf "$PREFIX"
        mkdir -p "$PREFIX"
        printf '{"name":"orchd-browser-tests","private":true}\n' > "$PREFIX/package.json"
        # playwright-core downloads no browser; the checks drive /usr/bin/chromium.
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
            npm install --prefix "$PREFIX" --save-exact --no-audit --no-fund --loglevel=error \
            "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2
        got=$(node -p "require('$PREFIX/node_modules/playwright-core/package.json').version")
        [[ "$got" == "$PLAYWRIGHT_CORE_VERSION" ]] || {
            echo "browser/setup.sh: installed playwright-core $got, wanted $PLAYWRIGHT_CORE_VERSION" >&2
            exit 1
        }
        echo "playwright-core@$PLAYWRIGHT_CORE_VERSION" > "$PREFIX/.complete"
    fi
    flock -u 9
fi

echo "browser/setup.sh: browser tooling ready in $(( $(date +%s) - start ))s" >&2
echo "$PREFIX"

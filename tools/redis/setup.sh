#!/usr/bin/env bash
# Installs (once) Debian's redis-server, which the tests start on their own loopback ports
# (never as a system service). Downloaded .debs are kept under
# ${ORCHD_CACHE:-$HOME/.cache/orchd}/apt-archives so a later cold run reuses them.
# Prints the path of redis-server as the last line of stdout.
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    redis-server --version >&2
    command -v redis-server
    exit 0
fi
CACHE="${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}"
ARCHIVES="$CACHE/apt-archives"
mkdir -p "$ARCHIVES/partial"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null || {
        echo "redis/setup.sh: redis-server is missing and installing it needs root: apt-get install redis-server" >&2
        exit 1
    }
    sudo=(sudo -n)
fi
start=$(date +%s)
install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dir::Cache::archives="$ARCHIVES" -o APT::Sandbox::User=root redis-server >&2
}
if ! install; then
    echo "redis/setup.sh: apt-get install failed; running apt-get update and retrying" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    install
fi
# The package starts a system service on some systems; the tests never use it.
"${sudo[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
redis-server --version >&2
echo "redis-server installed in $(( $(date +%s) - start ))s" >&2
command -v redis-server

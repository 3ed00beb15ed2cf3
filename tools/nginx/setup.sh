#!/usr/bin/env bash
# Installs (once) Debian's nginx (nginx-light), which `cargo xtask bench` starts as a plain
# reverse proxy on its own loopback port (never as a system service): the floor the daemon
# is measured against. Downloaded .debs are kept under
# ${ORCHD_CACHE:-$HOME/.cache/orchd}/apt-archives so a later cold run reuses them.
# Prints the path of nginx as the last line of stdout.
set -euo pipefail
NGINX=/usr/sbin/nginx
if [[ -x $NGINX ]]; then
    "$NGINX" -v >&2
    echo "$NGINX"
    exit 0
fi
CACHE="${ORCHD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orchd}"
ARCHIVES="$CACHE/apt-archives"
mkdir -p "$ARCHIVES/partial"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null || {
        echo "nginx/setup.sh: nginx is missing and installing it needs root: apt-get install nginx-light" >&2
        exit 1
    }
    sudo=(sudo -n)
fi
start=$(date +%s)
install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dir::Cache::archives="$ARCHIVES" -o APT::Sandbox::User=root nginx-light >&2
}
if ! install; then
    echo "nginx/setup.sh: apt-get install failed; running apt-get update and retrying" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    install
fi
# The package starts a system service; the bench never uses it.
"${sudo[@]}" systemctl disable --now nginx >/dev/null 2>&1 || true
"${sudo[@]}" service nginx stop >/dev/null 2>&1 || true
"$NGINX" -v >&2
echo "nginx installed in $(( $(date +%s) - start ))s" >&2
echo "$NGINX"

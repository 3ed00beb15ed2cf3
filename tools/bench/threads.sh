#!/usr/bin/env bash
# Per-thread cost of one request through the daemon: CPU time and context switches of each
# of the daemon's threads (by name), divided by the streams completed, over a closed loop
# against a zero-delay engine simulator. Stable enough to compare two builds on a noisy
# machine when run back to back (run each twice).
#
#   cargo xtask dist && cargo build --release -p orchd-engine-sim -p orchd-loadgen
#   tools/bench/threads.sh [STREAMS=10] [SECONDS=8] [extra daemon args, e.g. --log warn]
#
# A paced engine instead: FIRST_TOKEN_MS=5 INTER_TOKEN_MS=5 TOKENS=8 tools/bench/threads.sh 1
#
# Prints, per thread name: voluntary and involuntary context switches per request and
# CPU µs per request (from /proc/<pid>/task/*/{status,stat}, in clock ticks).
set -euo pipefail
conc=${1:-10}
secs=${2:-8}
shift $(( $# > 2 ? 2 : $# ))
root=$(cd "$(dirname "$0")/../.." && pwd)
dist=${ORCHD_DIST:-$root/target/dist}
work=$(mktemp -d)
trap 'kill $sim $daemon 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sim_port=$(port); api_port=$(port)
mkdir -p "$work/policies"
cp "$dist"/policies/{admission,budget,placement,error-mapping}-default.wasm "$work/policies/"
cat > "$work/orchd.toml" <<TOML
[paths]
artifacts = "$work/var/artifacts"
catalog = "$work/var/catalog.sqlite"
[queue]
capacity = 256
[stream]
retention_ms = 5000
[sessions]
ttl_ms = 60000
[policies]
timeout_ms = 5
[policies.admission]
component = "admission-default.wasm"
config = { mode = "reject" }
[policies.budget]
component = "budget-default.wasm"
config = { price_per_token = 0.000002 }
[policies.placement]
component = "placement-default.wasm"
[policies.error_mapping]
component = "error-mapping-default.wasm"
[[pools]]
id = "p"
adapter = "llamacpp"
model_ref = "sim"
queue_capacity = 256
[[pools.replicas]]
id = "sim-0"
config = { url = "http://127.0.0.1:$sim_port" }
TOML
first=${FIRST_TOKEN_MS:-0}
itl=${INTER_TOKEN_MS:-0}
tokens=${TOKENS:-32}
"$root/target/release/engine-sim" --addr "127.0.0.1:$sim_port" --first-token-ms "$first" \
    --inter-token-ms "$itl" --tokens "$tokens" --slots 64 --threads 1 > "$work/sim.log" 2>&1 &
sim=$!
"$dist/bin/orchestratord" --config "$work/orchd.toml" --addr "127.0.0.1:$api_port" \
    --adapters-dir "$dist/adapters" --policies-dir "$work/policies" \
    --cache-dir "$work/cache" --insecure-open-admin "$@" > "$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 200); do
    curl -sf "127.0.0.1:$api_port/v1/pools/p/health" | grep -q '"ready":true' && break
    sleep 0.1
done
load() {
    "$root/target/release/loadgen" run --target daemon --url "http://127.0.0.1:$api_port" \
        --model-ref sim --engine llamacpp --concurrency "$conc" --tokens "$tokens" "$@"
}
load --streams 200 > /dev/null 2>&1   # warm-up
snap() {
    for t in /proc/$daemon/task/*; do
        printf '%s %s %s %s\n' "$(tr ' ' _ < "$t/comm")" \
            "$(awk '/^voluntary_ctxt/{print $2}' "$t/status")" \
            "$(awk '/^nonvoluntary_ctxt/{print $2}' "$t/status")" \
            "$(awk '{print $14 + $15}' "$t/stat")"
    done | awk '{v[$1]+=$2; n[$1]+=$3; c[$1]+=$4} END {for (k in v) print k, v[k], n[k], c[k]}' | sort
}
snap > "$work/before"
load --duration-s "$secs" > "$work/load.json" 2>&1
snap > "$work/after"
ended=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ended"])' "$work/load.json")
echo "streams completed: $ended in $secs s ($conc streams, $tokens tokens each, first token after $first ms, then one every $itl ms)"
join "$work/before" "$work/after" | awk -v n="$ended" -v hz="$(getconf CLK_TCK)" '
    { printf "%-18s cs/req %5.2f  involuntary %5.2f  CPU µs/req %5.0f\n", $1, ($5-$2)/n, ($6-$3)/n, ($7-$4)*1e6/hz/n
      v += $5-$2; i += $6-$3; c += $7-$4 }
    END { printf "%-18s cs/req %5.2f  involuntary %5.2f  CPU µs/req %5.0f\n", "all threads", v/n, i/n, c*1e6/hz/n }'

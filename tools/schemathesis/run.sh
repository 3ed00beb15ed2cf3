#!/usr/bin/env bash
# Contract fuzz: runs the pinned schemathesis (tools/schemathesis/setup.sh) against a
# running orchestratord, with contracts/openapi/openapi.yaml as the schema (the daemon does
# not serve its OpenAPI document; the file is the contract).
#
#   tools/schemathesis/run.sh <base-url> [bearer-key]
#
# <bearer-key>: an `admin` API key, sent as `Authorization: Bearer` (the realistic
# deployment; the admin role is needed for the control plane). Without it the daemon must
# run in open mode with --insecure-open-admin.
#
# The daemon must have been started for this run (fresh state): pool `mock` on the mock
# adapter (model_ref `mock`, as in the embedded default) and pool `spare` (model_ref `spare`),
# which is the only pool drain/undrain touch (see schemathesis.toml).
#
# Exits non-zero on any failure (a check failed, a runtime error, or the schema did not
# load) and prints schemathesis' summary. Deterministic where schemathesis allows it: a fixed
# seed, one worker, no example database, no cache; nothing is written to the repository (the
# run happens in a scratch directory; ORCHD_ST_REPORT_DIR keeps the JUnit/NDJSON reports).
#
# Env: ORCHD_ST_MAX_EXAMPLES (default 200 per operation and phase: about 45 s on 2 cores),
# ORCHD_ST_SEED (default 1), ORCHD_ST_REPORT_DIR (default: a scratch directory, removed).
#
# Operations left out of the run: none. Every served operation is fuzzed; the destructive
# ones are confined instead (schemathesis.toml):
# - POST /v1/pools/{id}/drain and /undrain only ever name pool `spare`, so a drain (up to
#   24 h) never takes the data plane's pool `mock` out of service and the rest of the run
#   keeps exercising real admissions (a task for `spare` while it drains is the documented
#   503);
# - DELETE /v1/pools/{id} removes only pools created through the API (this run's own, on the
#   mock adapter); `mock` and `spare` come from orchd.toml and answer 409;
# - POST /v1/pools/{id}/reload: orchd.toml has no launched replicas, so no engine is ever
#   restarted (a schema-valid reload is the documented 400);
# - POST /v1/policies/{kind}/config only names error_mapping (the mock pools never fail);
# - POST /v1/policies/{kind}/shadow and /replay load candidates from the dist policy
#   directory and only compare their answers (a shadow never decides);
# - POST /v1/policies/reload rescans the dist policy directory, which nothing changes during
#   the run (every result is `unchanged`);
# - DELETE /v1/sessions/{id}, POST /v1/tasks/{id}/cancel, DELETE /v1/catalog/models/{id} and
#   POST /v1/catalog/models/{id}/state only reach what this run created (the daemon is fresh).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 <base-url> [bearer-key]" >&2
    exit 64
fi
BASE_URL="${1%/}"
KEY="${2:-}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SPEC="$ROOT/contracts/openapi/openapi.yaml"
CONFIG="$HERE/schemathesis.toml"
ST="$(bash "$HERE/setup.sh" | tail -n 1)"

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/orchd-schemathesis.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
REPORTS="${ORCHD_ST_REPORT_DIR:-$SCRATCH/reports}"
mkdir -p "$REPORTS"

auth=()
if [[ -n "$KEY" ]]; then
    auth=(-H "Authorization: Bearer $KEY")
else
    # Open mode (no key configured): the daemon serves without credentials by design, which
    # `ignored_auth` would report against the contract's security requirements.
    auth=(--exclude-checks ignored_auth)
fi

# Seed what the run reads: an artifact, a finished task (with its session and transcript)
# and a catalog model, created through the API; their ids become the `seeded-*`
# dictionaries of the run's configuration.
PY="$(dirname "$ST")/python"
"$PY" - "$BASE_URL" "$KEY" > "$SCRATCH/seeded.toml" <<'SEED'
import json, sys, urllib.error, urllib.request

base, key = sys.argv[1], sys.argv[2]

def call(method, path, body=None, want=(200,)):
    req = urllib.request.Request(base + path, method=method)
    if key:
        req.add_header("Authorization", "Bearer " + key)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data, timeout=30) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    if status not in want:
        sys.exit(f"seeding: {method} {path} answered {status}: {text[:500]}")
    return text

artifact = json.loads(call("POST", "/v1/artifacts",
    {"kind": "plan", "content": {"seeded_by": "tools/schemathesis/run.sh"}, "tags": ["fuzz"]},
    want=(201,)))["id"]
call("POST", "/v1/tasks", {
    "task_id": "fuzz-task", "session_id": "fuzz-session", "workload": "completion",
    "model_ref": "mock", "engine": "mock", "ctx": 64, "priority": "interactive",
    "prompt": "seed", "max_tokens": 8, "deadline_ms": 600000}, want=(202,))
stream = call("GET", "/v1/tasks/fuzz-task/stream")  # to its terminal frame
if "event: end" not in stream:
    sys.exit("seeding: the seeded task's stream did not end with `end`:\n" + stream[-500:])
transcript = json.loads(call("GET", "/v1/tasks/fuzz-task")).get("artifact_id")
call("POST", "/v1/catalog/models", {"id": "fuzz-model", "digest": "sha256:" + "0" * 64},
     want=(201,))

artifacts = [artifact] + ([transcript] if transcript else [])
print("[dictionaries.seeded-artifacts]\nvalues = " + json.dumps(artifacts))
print('[dictionaries.seeded-tasks]\nvalues = ["fuzz-task"]')
print('[dictionaries.seeded-sessions]\nvalues = ["fuzz-session"]')
print('[dictionaries.seeded-models]\nvalues = ["fuzz-model"]')
SEED
cat "$CONFIG" "$SCRATCH/seeded.toml" > "$SCRATCH/schemathesis.toml"

start=$(date +%s)
set +e
(
    cd "$SCRATCH"
    # Hypothesis keeps its own example database under ./.hypothesis unless told otherwise.
    export HYPOTHESIS_STORAGE_DIRECTORY="$SCRATCH/.hypothesis"
    "$ST" --config-file "$SCRATCH/schemathesis.toml" --no-color run "$SPEC" \
        --url "$BASE_URL" \
        ${auth[@]+"${auth[@]}"} \
        --seed "${ORCHD_ST_SEED:-1}" \
        --max-examples "${ORCHD_ST_MAX_EXAMPLES:-200}" \
        --report junit,ndjson --report-dir "$REPORTS"
)
rc=$?
set -e
echo "schemathesis: exit $rc in $(( $(date +%s) - start ))s (reports: $REPORTS)" >&2
exit "$rc"

#!/usr/bin/env bash
# Schemathesis against the real scheduler: the `scheduler serve` binary (memory
# state, both tokens) with one stand-in host behind it (`standin-host`: hostd's slot
# API and agents' /health without containers; see tests/src/standin_host.rs), so
# creates are served, not refused for capacity. Every operation of /openapi.json,
# every check but `positive_data_acceptance`: the scheduler rightly refuses some
# schema-valid requests with a 4xx the document names (what a template's policy
# allows — which hosts, upstreams, secrets — cannot live in a static schema, and
# serde takes `170.0` for no integer). Fails on any 5xx, any status the document does not
# list, and any response that violates the schema. Called by tests/run.sh; by hand:
#   cargo build --workspace --bins && tests/schemathesis.sh
# Needs: the debug binaries in $CARGO_TARGET_DIR (or target/), python3-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${BERTH_CACHE_DIR:-$HOME/.cache/berth}"
bin="${CARGO_TARGET_DIR:-target}/debug"
venv="$cache/venv-schemathesis"
want=$(sha256sum tests/requirements-schemathesis.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/schemathesis" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "installing schemathesis into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements-schemathesis.txt
  echo "$want" > "$venv/.requirements.sha256"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
host_port=$(free_port)
export BERTH_ST_API_TOKEN="st-backend-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export BERTH_ST_OPERATOR_TOKEN="st-operator-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
host_secret="st-hosts-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
logs=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT

BERTH_API_TOKEN="$BERTH_ST_API_TOKEN" BERTH_OPERATOR_TOKEN="$BERTH_ST_OPERATOR_TOKEN" \
BERTH_HOST_TOKEN="$host_secret" \
  "$bin/scheduler" serve --listen "127.0.0.1:$port" --state memory --pools default=4 \
  --idle-timeout-secs 0 >"$logs/scheduler.log" 2>&1 &
pids+=($!)
"$bin/standin-host" --scheduler "http://127.0.0.1:$port" --host-secret "$host_secret" \
  --listen "127.0.0.1:$host_port" >"$logs/host.log" 2>&1 &
pids+=($!)

# Served once the pool is full (the stand-in host reported and slots were made).
ready=""
for _ in $(seq 1 100); do
  if curl -sf -H "authorization: Bearer $BERTH_ST_OPERATOR_TOKEN" "http://127.0.0.1:$port/v1/pools" \
      | grep -q '"ready":4'; then ready=1; break; fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "the scheduler never filled its pool; its log:" >&2
  cat "$logs/scheduler.log" "$logs/host.log" >&2
  exit 1
fi

set +e
# Run from the scratch directory: schemathesis keeps a cache where it runs.
config="$PWD/tests/schemathesis/schemathesis.toml"
(cd "$logs" && "$venv/bin/schemathesis" --no-color --config-file "$config" run "http://127.0.0.1:$port/openapi.json" \
  --checks all --exclude-checks positive_data_acceptance \
  --workers 1 --max-failures 20 --phases examples,coverage,fuzzing)
status=$?
set -e
if ! kill -0 "${pids[0]}" 2>/dev/null; then
  echo "the scheduler died under schemathesis; its log:" >&2
  tail -50 "$logs/scheduler.log" >&2
  exit 1
fi
# The run reached the core: workspaces were handed out, not only refused.
served=$(curl -sf -H "authorization: Bearer $BERTH_ST_OPERATOR_TOKEN" "http://127.0.0.1:$port/metrics" \
  | awk '/^berth_acquired_(warm|cold)_total/ {n += $2} END {print n + 0}')
echo "schemathesis: $served workspaces handed out during the run"
if [ "$served" -lt 1 ]; then
  echo "no create was served: the run never reached the scheduler's core" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "schemathesis found problems (above); the scheduler's last log lines:" >&2
  tail -20 "$logs/scheduler.log" >&2
fi
exit "$status"

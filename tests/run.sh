#!/usr/bin/env bash
# Berth's test command: installs what the tests need (idempotently), then runs
# formatting, lints and the whole suite. Usage: tests/run.sh [extra cargo test args]
#
# Installs on a fresh Debian machine with Docker:
#   apt: redis-server iptables iproute2 busybox-static python3-venv curl (+ shellcheck for infra checks)
#   a Python venv with moto[server] at $BERTH_CACHE_DIR/venv-moto, and one with
#   schemathesis at $BERTH_CACHE_DIR/venv-schemathesis (tests/schemathesis.sh)
set -euo pipefail

cd "$(dirname "$0")/.."
export BERTH_CACHE_DIR="${BERTH_CACHE_DIR:-$HOME/.cache/berth}"
mkdir -p "$BERTH_CACHE_DIR"

step() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- system packages -------------------------------------------------------
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v ip >/dev/null || need_apt+=(iproute2)          # test namespaces (lockdown tests)
command -v nsenter >/dev/null || need_apt+=(util-linux)
command -v curl >/dev/null || need_apt+=(curl)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && ! ldd /bin/busybox >/dev/null 2>&1 \
  || need_apt+=(busybox-static)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ "${#need_apt[@]}" -gt 0 ]; then
  step "installing ${need_apt[*]} (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v docker >/dev/null || { echo "Docker is required (docker CLI and a running engine)" >&2; exit 69; }
docker info >/dev/null 2>&1 || { echo "the Docker engine is not running or not reachable" >&2; exit 69; }

# --- moto venv ---------------------------------------------------------------
venv="$BERTH_CACHE_DIR/venv-moto"
stamp="$venv/.requirements.sha256"
want=$(sha256sum tests/requirements-moto.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/moto_server" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "installing moto into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements-moto.txt
  echo "$want" > "$stamp"
fi
export BERTH_MOTO_SERVER="$venv/bin/moto_server"
export AWS_EC2_METADATA_DISABLED=true

# --- Rust checks --------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "building binaries the tests put into images"
cargo build --workspace --bins --quiet

# --- infrastructure checks (ami/, terraform/) ----------------------------------
if [ -x tests/infra/check.sh ]; then
  step "infrastructure checks"
  tests/infra/check.sh
fi

# --- the suite ----------------------------------------------------------------
step "cargo test (unit, crate and whole-system tests)"
log="$BERTH_CACHE_DIR/last-test.log"
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# --- the API against its own document ---------------------------------------
step "schemathesis against the real scheduler (tests/schemathesis.sh)"
if tests/schemathesis.sh; then
  echo "test result: ok. 1 passed; 0 failed; (schemathesis)" >> "$log"
else
  echo "test result: FAILED. 0 passed; 1 failed; (schemathesis)" | tee -a "$log"
  status=1
fi
# One closing line over every test binary (cargo's own last line is a doc-test
# binary's, usually "0 passed").
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i + 1) ~ /^passed;/) passed += $i
         if ($(i + 1) ~ /^failed;/) failed += $i
       }
     }
     END { printf "\nberth: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"

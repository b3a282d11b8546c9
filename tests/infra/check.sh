#!/usr/bin/env bash
# The infrastructure checks of ami/, terraform/ and .github/ (issue 6):
#
#   1. shellcheck on every shell script under ami/ and tests/infra/
#   2. terraform fmt -check              (where a terraform binary is installed)
#   3. packer fmt/validate -syntax-only  (where packer is installed: Debian's)
#   4. checkov over each environment and the GitHub workflows; any failed
#      check fails the run (skips are listed, with reasons, in the repository)
#   5. pytest over tests/infra: the HCL security assertions, the contract
#      between ami/, terraform/ and the Rust side, the provisioning test that
#      runs ami/scripts/provision.sh on a scratch root, and the mutation tests
#      that remove each protection in a copy and expect its check to fail
#
# Installs what it needs on a fresh Debian machine, idempotently: apt packages
# (shellcheck; packer if the archive has it) and two pinned Python venvs under
# ${BERTH_CACHE_DIR:-~/.cache/berth}, rebuilt only when their requirements file
# (or the Python version) changes. Nothing here talks to AWS or to any address
# but the package archives.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
cache="${BERTH_CACHE_DIR:-${HOME}/.cache/berth}"
mkdir -p "${cache}"

# No version-check calls home from terraform, packer or checkov, and no AWS
# client may fall back to the instance metadata service.
export CHECKPOINT_DISABLE=1
export AWS_EC2_METADATA_DISABLED=true
export CKV_SKIP_PACKAGE_UPDATE_CHECK=true
export BC_SKIP_MAPPING=TRUE
export PIP_DISABLE_PIP_VERSION_CHECK=1

started=${SECONDS}
failed=()
step() { printf '\n== infra: %s\n' "$*"; }
skipped() { printf 'skipped: %s\n' "$*"; }
# fail NAME: record a failed step; the run goes on so that one pass shows
# every problem, and exits non-zero at the end.
fail() { failed+=("$1"); printf 'FAILED: %s\n' "$1" >&2; }

# --- tools -------------------------------------------------------------------

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "infra: need root (or sudo) to install: $*" >&2
        return 1
    fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Debian's packer is an optional extra: look for it once per machine (and again
# when this script changes), not on every run.
apt_stamp="${cache}/infra-apt.stamp"
apt_want="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

missing=()
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
want_packer=0
if ! command -v packer >/dev/null 2>&1 && [[ "$(cat "${apt_stamp}" 2>/dev/null || true)" != "${apt_want}" ]]; then
    want_packer=1
fi

if ((${#missing[@]} > 0 || want_packer)); then
    step "installing tools"
    as_root apt-get update -qq
    if ((want_packer)); then
        candidate="$(apt-cache policy packer 2>/dev/null | awk '/Candidate:/ { print $2 }')"
        if [[ -n "${candidate}" && "${candidate}" != "(none)" ]]; then
            missing+=(packer)
        else
            echo "packer is not in this machine's apt sources; the packer step will be skipped"
        fi
    fi
    if ((${#missing[@]} > 0)); then
        apt_install "${missing[@]}"
    fi
    echo "${apt_want}" >"${apt_stamp}"
fi

# ensure_venv DIR REQUIREMENTS: a venv with exactly those pins, rebuilt only
# when the requirements file or the interpreter changes.
ensure_venv() {
    local dir="$1" reqs="$2" want have
    want="$( (sha256sum "${reqs}" | cut -d' ' -f1; python3 --version) | sha256sum | cut -d' ' -f1)"
    have="$(cat "${dir}/.berth-requirements.sha256" 2>/dev/null || true)"
    if [[ -x "${dir}/bin/python" && "${have}" == "${want}" ]]; then
        return 0
    fi
    step "installing $(basename "${dir}") from ${reqs#"${repo}"/}"
    rm -rf "${dir}"
    python3 -m venv "${dir}"
    "${dir}/bin/pip" install -q -r "${reqs}"
    echo "${want}" >"${dir}/.berth-requirements.sha256"
}

venv_infra="${cache}/venv-infra"
venv_checkov="${cache}/venv-checkov"
ensure_venv "${venv_infra}" "${here}/requirements.txt"
ensure_venv "${venv_checkov}" "${here}/requirements-checkov.txt"

cd "${repo}"

# --- 1. shellcheck ----------------------------------------------------------

step "shellcheck"
mapfile -t scripts < <(
    find ami tests/infra -type f \( -name '*.sh' -o -perm -u+x \) -not -name '*.py' -print0 \
        | xargs -0 grep -lE '^#!.*\b(ba)?sh\b' | sort
)
if shellcheck -x "${scripts[@]}"; then
    printf 'shellcheck: %d scripts clean (%s)\n' "${#scripts[@]}" "${scripts[*]}"
else
    fail shellcheck
fi

# --- 2. terraform fmt ---------------------------------------------------------

step "terraform fmt"
if command -v terraform >/dev/null 2>&1; then
    # A CLI config named in the environment but absent only produces a warning
    # on every call; fmt needs none.
    if [[ -n "${TF_CLI_CONFIG_FILE:-}" && ! -f "${TF_CLI_CONFIG_FILE}" ]]; then
        unset TF_CLI_CONFIG_FILE
        export TF_CLI_CONFIG_FILE=/dev/null
    fi
    if terraform fmt -check -recursive -diff terraform/; then
        echo "terraform fmt: clean ($(terraform version | head -1))"
    else
        fail "terraform fmt"
    fi
else
    skipped "terraform not installed"
fi

# --- 3. packer ----------------------------------------------------------------

step "packer"
if command -v packer >/dev/null 2>&1; then
    # Syntax only: a full validate would resolve the amazon builder's settings,
    # which Debian's packer (1.6) predates and which may reach for AWS.
    if packer validate -syntax-only ami/ && packer fmt -check ami/; then
        echo "packer: syntax and format clean ($(packer version | head -1))"
    else
        fail packer
    fi
else
    skipped "packer not installed"
fi

# --- 4. checkov ---------------------------------------------------------------

step "checkov"
run_checkov() {
    local label="$1" out
    shift
    out="$(mktemp)"
    if ! "${venv_checkov}/bin/checkov" "$@" >"${out}" 2>&1; then
        cat "${out}"
        rm -f "${out}"
        fail "checkov ${label}"
        return 0
    fi
    local summary
    summary="$(grep -m1 -E '^Passed checks:' "${out}" || echo 'no checks ran')"
    rm -f "${out}"
    printf 'checkov %s: %s\n' "${label}" "${summary}"
}
for env in staging production; do
    run_checkov "terraform/environments/${env}" \
        -d "terraform/environments/${env}" \
        --config-file "terraform/environments/${env}/.checkov.yaml"
done
run_checkov ".github/workflows" -d .github/workflows --framework github_actions \
    --skip-download --compact --quiet

# --- 5. pytest ----------------------------------------------------------------

step "pytest tests/infra"
"${venv_infra}/bin/python" -m pytest tests/infra -q -p no:cacheprovider || fail pytest

if ((${#failed[@]} > 0)); then
    printf '\ninfra checks FAILED in %ds: %s\n' "$((SECONDS - started))" "${failed[*]}" >&2
    exit 1
fi
printf '\ninfra checks passed in %ds\n' "$((SECONDS - started))"

#!/usr/bin/env bash
# Runs on the Packer builder instance after provision.sh, as root: checks the
# installed configuration against the live system and leaves the image clean.
# It is never run against a scratch root (provision.sh is; see tests/infra).
set -euo pipefail

inputs="${BERTH_INPUTS:-/tmp/berth-ami}"

log() { printf 'berth-finalize: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "must run as root"

# --- check what provision.sh wrote, with the real tools -----------------------

# dockerd refuses to start on a config it cannot parse, and then no task runs.
dockerd --validate --config-file /etc/docker/daemon.json \
    || die "/etc/docker/daemon.json is rejected by dockerd"

# The unit must parse; ordering against ecs.service is checked by the tests.
systemctl daemon-reload
systemd-analyze verify /etc/systemd/system/berth-hostd.service \
    || die "berth-hostd.service does not verify"
[[ "$(systemctl is-enabled berth-hostd.service)" == enabled ]] \
    || die "berth-hostd.service is not enabled"
# The ECS agent must run outside the workspace seccomp profile (90-berth.conf).
systemctl show ecs.service -p Environment | grep -q 'ECS_AGENT_RUN_PRIVILEGED=true' \
    || die "ecs.service does not pick up ECS_AGENT_RUN_PRIVILEGED from its drop-in"

# Every sysctl we set must exist on this kernel (a typo would be skipped silently).
while IFS= read -r line; do
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    key="${line%%=*}"
    key="${key//[[:space:]]/}"
    [[ -e "/proc/sys/${key//.//}" ]] || die "sysctl ${key} does not exist on this kernel"
done </etc/sysctl.d/90-berth.conf
sysctl -p /etc/sysctl.d/90-berth.conf >/dev/null

# The launch template's user-data fetches the host token with the AWS CLI.
if ! command -v aws >/dev/null 2>&1; then
    log "installing the AWS CLI"
    dnf install -y awscli-2
fi

# --- leave nothing of this build behind ------------------------------------

# The token is written at boot from Secrets Manager; it must never be baked.
[[ ! -e /etc/berth/host-token ]] || die "/etc/berth/host-token exists in the image"

# The ECS agent may have started on the builder: drop its state so that every
# instance registers as a new container instance, and its logs.
systemctl stop ecs.service 2>/dev/null || true
rm -rf /var/lib/ecs/data/* /var/log/ecs/*

# Packer's temporary SSH key and the uploaded inputs.
rm -f /home/ec2-user/.ssh/authorized_keys
rm -rf "$inputs"

# Instance-specific cloud-init state, so that user-data runs on first boot.
cloud-init clean --logs

log "image finalized"

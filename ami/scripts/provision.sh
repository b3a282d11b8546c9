#!/usr/bin/env bash
# Installs Berth's host pieces into a root filesystem.
#
# Packer runs this on the builder instance with BERTH_ROOT=/; the checks in
# tests/infra run it against a scratch directory and inspect every file it
# writes. It therefore only writes files (no systemctl, no package manager, no
# network): whatever needs a live system lives in finalize.sh.
#
# Inputs (environment):
#   BERTH_ROOT         root to install into (default /)
#   BERTH_INPUTS       directory holding: hostd (the release binary),
#                      workspace.json (the Docker seccomp profile) and
#                      files/ (the static files of ami/files)
#   BERTH_VERSION      release recorded in /etc/berth/ami-release (default dev)
#   BERTH_GIT_SHA      commit recorded there (default unknown)
#   BERTH_BUILD_STAMP  build time recorded there (default: now, UTC)
#
# Running it twice leaves the same tree: ecs.config keeps its foreign lines
# once and ours once, and a foreign daemon.json is set aside only the first time.
set -euo pipefail

root="${BERTH_ROOT:-/}"
inputs="${BERTH_INPUTS:?BERTH_INPUTS must name the directory with hostd, workspace.json and files/}"
files="${inputs}/files"
version="${BERTH_VERSION:-dev}"
git_sha="${BERTH_GIT_SHA:-unknown}"
build_stamp="${BERTH_BUILD_STAMP:-$(date -u +%Y%m%d%H%M%S)}"

# Strip a trailing slash so that "${root}/etc" never reads "//etc".
root="${root%/}"

log() { printf 'berth-provision: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- inputs ------------------------------------------------------------------

[[ -f "${inputs}/hostd" ]] || die "missing ${inputs}/hostd (the release hostd binary)"
[[ -f "${inputs}/workspace.json" ]] || die "missing ${inputs}/workspace.json (seccomp profile)"
for f in berth-hostd.service hostd.env ecs.config ecs-agent-berth.conf daemon.json sysctl-berth.conf journald-berth.conf; do
    [[ -f "${files}/${f}" ]] || die "missing ${files}/${f}"
done

# A seccomp profile Docker cannot read would stop dockerd from starting at boot
# on every host; refuse to bake one that is not even a Docker profile.
grep -q '"defaultAction"' "${inputs}/workspace.json" \
    || die "${inputs}/workspace.json has no defaultAction: not a Docker seccomp profile"
[[ "$(head -c 4 "${inputs}/hostd" | od -An -c | tr -d ' ')" == '177ELF' ]] \
    || die "${inputs}/hostd is not an ELF binary"

# --- helpers -----------------------------------------------------------------

# install_file MODE SOURCE DEST: copy SOURCE to ${root}DEST with MODE. Missing
# parent directories are made 0755; existing ones keep their mode (/etc/berth
# stays 0700).
install_file() {
    local mode="$1" src="$2" dest="${root}$3"
    [[ -d "$(dirname "$dest")" ]] || install -d -m 0755 "$(dirname "$dest")"
    install -m "$mode" "$src" "$dest"
    log "wrote $3 (${mode})"
}

# merge_ecs_config SOURCE DEST: keep the lines of an existing ecs.config whose
# keys Berth does not set, then append Berth's settings. The ECS-optimized AMI
# may ship its own lines; ours must win and must appear once.
merge_ecs_config() {
    local src="$1" dest="${root}$2" tmp keys
    local header='# --- Berth (ami/files/ecs.config) ---'
    [[ -d "$(dirname "$dest")" ]] || install -d -m 0755 "$(dirname "$dest")"
    tmp="$(mktemp)"
    keys="$(grep -E '^[A-Z_]+=' "$src" | cut -d= -f1 | paste -sd'|' -)"
    if [[ -f "$dest" ]]; then
        # Drop our keys and the block header we add, keep everything else.
        awk -v keys="^(${keys})=" -v header="$header" '
            $0 ~ keys || $0 == header { next }
            { line[++n] = $0 }
            /[^[:space:]]/ { last = n }
            END { for (i = 1; i <= last; i++) print line[i] }' "$dest" >"$tmp"
        if [[ -s "$tmp" ]]; then
            printf '\n' >>"$tmp"
        fi
    fi
    printf '%s\n' "$header" >>"$tmp"
    grep -Ev '^[[:space:]]*(#|$)' "$src" >>"$tmp"
    install -m 0644 "$tmp" "$dest"
    rm -f "$tmp"
    log "wrote $2 (0644, merged)"
}

# --- hostd -------------------------------------------------------------------

install_file 0755 "${inputs}/hostd" /usr/local/bin/hostd
install_file 0644 "${files}/berth-hostd.service" /etc/systemd/system/berth-hostd.service

# What `systemctl enable` does, done by hand so it works on a root that is not
# running: the unit is wanted by multi-user.target.
wants="${root}/etc/systemd/system/multi-user.target.wants"
[[ -d "$wants" ]] || install -d -m 0755 "$wants"
ln -sfn /etc/systemd/system/berth-hostd.service "${wants}/berth-hostd.service"
log "enabled berth-hostd.service"

# /etc/berth holds the host token at run time: root only.
install -d -m 0700 "${root}/etc/berth"
chmod 0700 "${root}/etc/berth"
install_file 0600 "${files}/hostd.env" /etc/berth/hostd.env

release="$(mktemp)"
{
    printf 'BERTH_AMI_VERSION=%s\n' "$version"
    printf 'BERTH_AMI_GIT_SHA=%s\n' "$git_sha"
    printf 'BERTH_AMI_BUILD=%s\n' "$build_stamp"
} >"$release"
install_file 0644 "$release" /etc/berth/ami-release
rm -f "$release"

# --- ECS agent ---------------------------------------------------------------

merge_ecs_config "${files}/ecs.config" /etc/ecs/ecs.config

# The agent container must not inherit the workspace seccomp profile (see the file).
install_file 0644 "${files}/ecs-agent-berth.conf" /etc/systemd/system/ecs.service.d/90-berth.conf

# --- Docker daemon -----------------------------------------------------------

install_file 0644 "${inputs}/workspace.json" /etc/docker/seccomp/workspace.json

daemon="${root}/etc/docker/daemon.json"
same_content() { [[ "$(sha256sum <"$1")" == "$(sha256sum <"$2")" ]]; }
if [[ -f "$daemon" ]] && ! same_content "$daemon" "${files}/daemon.json" && [[ ! -e "${daemon}.pre-berth" ]]; then
    # Keep whatever the base image had, for a person to compare; ours replaces it.
    mv "$daemon" "${daemon}.pre-berth"
    log "moved the base image's /etc/docker/daemon.json to daemon.json.pre-berth"
fi
install_file 0644 "${files}/daemon.json" /etc/docker/daemon.json

# --- kernel and journal ------------------------------------------------------

install_file 0644 "${files}/sysctl-berth.conf" /etc/sysctl.d/90-berth.conf
install_file 0644 "${files}/journald-berth.conf" /etc/systemd/journald.conf.d/90-berth.conf

log "done: hostd ${version} (${git_sha}) installed under ${root:-/}"

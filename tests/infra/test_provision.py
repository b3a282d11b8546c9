"""ami/scripts/provision.sh, run for real against a scratch root directory.

The script is what Packer runs on the builder with BERTH_ROOT=/. Here it runs
with BERTH_ROOT=<tmp>, and every file it writes is accounted for: the set of
paths must be exactly the expected one, and each file's mode and content are
checked. The base image's own ecs.config and daemon.json are simulated to prove
the merge, and a second run proves the script is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import AMI, REPO

SCRIPT = AMI / "scripts" / "provision.sh"
SECCOMP = REPO / "seccomp" / "workspace.json"

# A minimal but valid Docker seccomp profile, used only when the repository's
# profile (written by the seccomp work) is not there yet.
PLACEHOLDER_PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [{"names": ["read", "write", "exit", "exit_group"], "action": "SCMP_ACT_ALLOW"}],
}

# Everything provision.sh may create under the root: path -> mode.
EXPECTED = {
    "usr/local/bin/hostd": 0o755,
    "etc/systemd/system/berth-hostd.service": 0o644,
    "etc/systemd/system/multi-user.target.wants/berth-hostd.service": "symlink",
    "etc/berth/hostd.env": 0o600,
    "etc/berth/ami-release": 0o644,
    "etc/ecs/ecs.config": 0o644,
    "etc/systemd/system/ecs.service.d/90-berth.conf": 0o644,
    "etc/docker/seccomp/workspace.json": 0o644,
    "etc/docker/daemon.json": 0o644,
    "etc/sysctl.d/90-berth.conf": 0o644,
    "etc/systemd/journald.conf.d/90-berth.conf": 0o644,
}

# What the ECS-optimized base image is simulated to ship.
BASE_ECS_CONFIG = "ECS_LOGLEVEL=info\nECS_ENABLE_TASK_ENI=false\nECS_DATADIR=/data\n"
BASE_DAEMON_JSON = '{"debug": true}\n'


def tree(root: Path) -> dict[str, str]:
    """path -> sha256 (or link target) of every file and link under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    # Any real ELF executable stands in for the release hostd binary.
    shutil.copy(shutil.which("true") or "/bin/true", d / "hostd")
    if SECCOMP.is_file():
        shutil.copy(SECCOMP, d / "workspace.json")
    else:
        (d / "workspace.json").write_text(json.dumps(PLACEHOLDER_PROFILE, indent=2))
    (d / "files").symlink_to(AMI / "files")
    return d


def run(root: Path, inputs: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "BERTH_ROOT": str(root),
        "BERTH_INPUTS": str(inputs),
        "BERTH_VERSION": "v9.9.9",
        "BERTH_GIT_SHA": "0123abc",
        "BERTH_BUILD_STAMP": "20260101000000",
        **extra,
    }
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory, inputs) -> Path:
    r = tmp_path_factory.mktemp("root")
    (r / "etc/ecs").mkdir(parents=True)
    (r / "etc/ecs/ecs.config").write_text(BASE_ECS_CONFIG)
    (r / "etc/docker").mkdir(parents=True)
    (r / "etc/docker/daemon.json").write_text(BASE_DAEMON_JSON)
    result = run(r, inputs)
    assert result.returncode == 0, result.stderr
    return r


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text()


def env_file(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    return dict(pairs)


def unit_file(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, value = line.split("=", 1)
        assert current is not None, f"{key} outside a section"
        current.setdefault(key, []).append(value)
    return sections


# --- the set of files ---------------------------------------------------------


def test_writes_exactly_the_expected_files(root):
    written = set(tree(root)) - {"etc/docker/daemon.json.pre-berth"}
    assert written == set(EXPECTED), (
        f"unexpected: {sorted(written - set(EXPECTED))}, missing: {sorted(set(EXPECTED) - written)}"
    )


def test_base_daemon_json_is_kept_aside(root):
    assert read(root, "etc/docker/daemon.json.pre-berth") == BASE_DAEMON_JSON


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_file_modes(root, rel):
    p = root / rel
    if EXPECTED[rel] == "symlink":
        assert p.is_symlink()
        return
    assert not p.is_symlink() and p.is_file()
    assert stat.S_IMODE(p.stat().st_mode) == EXPECTED[rel], f"{rel}: mode {oct(stat.S_IMODE(p.stat().st_mode))}"


def test_berth_config_directory_is_root_only(root):
    assert stat.S_IMODE((root / "etc/berth").stat().st_mode) == 0o700


# --- each file ----------------------------------------------------------------


def test_hostd_binary_is_the_input(root, inputs):
    assert (root / "usr/local/bin/hostd").read_bytes() == (inputs / "hostd").read_bytes()


def test_hostd_unit(root):
    unit = unit_file(read(root, "etc/systemd/system/berth-hostd.service"))
    u, s, i = unit["Unit"], unit["Service"], unit["Install"]
    assert "ecs.service" in " ".join(u.get("Before", [])).split(), "hostd must start before the ECS agent (Before=ecs.service)"
    assert "docker.service" in " ".join(u.get("After", [])).split()
    assert u["StartLimitIntervalSec"] == ["0"]
    assert s.get("Restart") == ["always"], "hostd must always be restarted (Restart=always)"
    assert s["ExecStart"] == ["/usr/local/bin/hostd"]
    assert s["EnvironmentFile"] == ["/etc/berth/hostd.env"]
    # Waits for the host token (written by user-data) before starting.
    assert len(s["ExecStartPre"]) == 1 and "$$BERTH_HOST_TOKEN_FILE" in s["ExecStartPre"][0]
    assert "User" not in s, "hostd runs as root"
    assert i["WantedBy"] == ["multi-user.target"]


def test_hostd_unit_is_enabled(root):
    link = root / "etc/systemd/system/multi-user.target.wants/berth-hostd.service"
    assert os.readlink(link) == "/etc/systemd/system/berth-hostd.service"


def test_hostd_env_has_the_contract_and_no_secret(root):
    env = env_file(read(root, "etc/berth/hostd.env"))
    assert env == {
        "BERTH_HOST_RUNTIME": "ecs",
        "BERTH_HOSTD_LISTEN": "0.0.0.0:7701",
        "BERTH_HOST_TOKEN_FILE": "/etc/berth/host-token",
        "BERTH_CHECK_DAEMON_SECCOMP": "/etc/docker/daemon.json",
    }
    assert not (root / "etc/berth/host-token").exists(), "the host token must never be baked into the image"


def test_ami_release(root):
    assert env_file(read(root, "etc/berth/ami-release")) == {
        "BERTH_AMI_VERSION": "v9.9.9",
        "BERTH_AMI_GIT_SHA": "0123abc",
        "BERTH_AMI_BUILD": "20260101000000",
    }


def test_ecs_config_settings(root):
    cfg = env_file(read(root, "etc/ecs/ecs.config"))
    required = {
        "ECS_ENABLE_TASK_ENI": "true",
        "ECS_AWSVPC_BLOCK_IMDS": "true",
        "ECS_IMAGE_PULL_BEHAVIOR": "prefer-cached",
        "ECS_ENABLE_TASK_IAM_ROLE": "true",
        "ECS_WARM_POOLS_CHECK": "true",
        "ECS_DISABLE_PRIVILEGED": "true",
    }
    for key, value in required.items():
        assert cfg.get(key) == value, f"ecs.config must set {key}={value}, has {cfg.get(key)!r}"
    assert json.loads(cfg["ECS_INSTANCE_ATTRIBUTES"]) == {"berth.hostd": "1", "berth.pool": "default"}
    assert "ECS_CLUSTER" not in cfg, "the cluster is set per environment by user-data, not baked"


def test_ecs_config_keeps_foreign_lines_and_overrides_ours(root):
    cfg = env_file(read(root, "etc/ecs/ecs.config"))
    assert cfg["ECS_LOGLEVEL"] == "info" and cfg["ECS_DATADIR"] == "/data"
    assert cfg["ECS_ENABLE_TASK_ENI"] == "true", "the base image's false must be replaced"


def test_ecs_agent_runs_without_the_workspace_profile(root):
    # ecs-init gives the agent container CAP_SYS_ADMIN but no seccomp option, so
    # it would inherit dockerd's default (the workspace profile, which refuses
    # setns/unshare/mount) and could not build awsvpc task namespaces.
    unit = unit_file(read(root, "etc/systemd/system/ecs.service.d/90-berth.conf"))
    assert "ECS_AGENT_RUN_PRIVILEGED=true" in unit.get("Service", {}).get("Environment", []), (
        "the ECS agent must run privileged (no seccomp) on an image whose default profile is the workspace one"
    )


def test_docker_daemon_config(root):
    daemon = json.loads(read(root, "etc/docker/daemon.json"))
    assert daemon.get("seccomp-profile") == "/etc/docker/seccomp/workspace.json", "the workspace profile must be dockerd's default"
    assert (root / daemon["seccomp-profile"].lstrip("/")).is_file()
    assert daemon.get("no-new-privileges") is True, "no-new-privileges must be dockerd's default"
    assert daemon.get("icc") is False, "inter-container communication must be off"
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"]["max-size"] and int(daemon["log-opts"]["max-file"]) >= 1


def test_seccomp_profile_is_the_input(root, inputs):
    installed = root / "etc/docker/seccomp/workspace.json"
    assert installed.read_bytes() == (inputs / "workspace.json").read_bytes()
    profile = json.loads(installed.read_text())
    assert profile["defaultAction"] in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP")


def test_sysctls(root):
    conf = {}
    for line in read(root, "etc/sysctl.d/90-berth.conf").splitlines():
        if line.strip() and not line.startswith("#"):
            k, v = (x.strip() for x in line.split("=", 1))
            conf[k] = v
    assert conf["net.ipv4.ip_forward"] == "1"
    assert conf["kernel.unprivileged_bpf_disabled"] == "1"
    assert conf["kernel.kptr_restrict"] == "2"
    assert conf["kernel.dmesg_restrict"] == "1"
    assert all(k.count(".") >= 1 for k in conf)


def test_journal_is_bounded(root):
    text = read(root, "etc/systemd/journald.conf.d/90-berth.conf")
    assert "[Journal]" in text and "SystemMaxUse=" in text


# --- behaviour ----------------------------------------------------------------


def test_second_run_changes_nothing(root, inputs):
    before = tree(root)
    result = run(root, inputs)
    assert result.returncode == 0, result.stderr
    assert tree(root) == before


def test_fresh_root_without_base_files(tmp_path, inputs):
    result = run(tmp_path, inputs)
    assert result.returncode == 0, result.stderr
    assert set(tree(tmp_path)) == set(EXPECTED)
    cfg = read(tmp_path, "etc/ecs/ecs.config")
    assert cfg.startswith("# --- Berth"), "no stray blank lines before our block"


def test_refuses_a_hostd_that_is_not_a_binary(tmp_path, inputs):
    bad = tmp_path / "inputs"
    shutil.copytree(inputs, bad, symlinks=True)
    (bad / "hostd").write_text("#!/bin/sh\necho not a release build\n")
    result = run(tmp_path / "root", bad)
    assert result.returncode != 0 and "not an ELF binary" in result.stderr
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").rglob("*"))


def test_refuses_a_profile_docker_cannot_use(tmp_path, inputs):
    bad = tmp_path / "inputs"
    shutil.copytree(inputs, bad, symlinks=True)
    (bad / "workspace.json").write_text('{"syscalls": []}')
    result = run(tmp_path / "root", bad)
    assert result.returncode != 0 and "not a Docker seccomp profile" in result.stderr


def test_every_static_file_is_installed():
    script = SCRIPT.read_text()
    for f in (AMI / "files").iterdir():
        assert f.name in script, f"ami/files/{f.name} is not used by provision.sh"

"""The checks must be able to fail: each case removes or weakens one
protection in a copy of the repository and expects the named test to fail
with its message. A test that keeps passing here guards nothing.

The copy lives in a temporary directory; the working tree is never edited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO

# (what is removed, file, text before, text after, test that must fail, words of its message)
MUTATIONS = [
    (
        "the proxies' task role reads any secret",
        "terraform/modules/workspace/main.tf",
        "    resources = var.proxy_secret_arns\n",
        '    resources = ["*"]\n',
        "test_terraform_security.py::test_workspace_task_role_only_reads_claim_secrets",
        "not resource *",
    ),
    (
        "a workspace container runs as root",
        "terraform/modules/workspace/main.tf",
        '    user                   = "2000:2000"\n',
        '    user                   = "0:0"\n',
        "test_terraform_security.py::test_workspace_containers_are_hardened",
        "must run as non-root",
    ),
    (
        "a workspace container keeps its capabilities",
        "terraform/modules/workspace/main.tf",
        'capabilities       = { add = [], drop = ["ALL"] }\n      initProcessEnabled = true\n      tmpfs',
        'capabilities       = { add = [], drop = [] }\n      initProcessEnabled = true\n      tmpfs',
        "test_terraform_security.py::test_workspace_containers_are_hardened",
        "all capabilities dropped",
    ),
    (
        "the launch template allows IMDSv1",
        "terraform/modules/ecs_cluster/main.tf",
        'http_tokens                 = "required"',
        'http_tokens                 = "optional"',
        "test_terraform_security.py::test_launch_template_requires_imdsv2_with_hop_limit_1",
        "IMDSv2 must be required",
    ),
    (
        "the launch template's hop limit is 2",
        "terraform/modules/ecs_cluster/main.tf",
        "http_put_response_hop_limit = 1",
        "http_put_response_hop_limit = 2",
        "test_terraform_security.py::test_launch_template_requires_imdsv2_with_hop_limit_1",
        "hop limit must be 1, got 2",
    ),
    (
        "the Packer builder's hop limit is 2",
        "ami/berth-host.pkr.hcl",
        "http_put_response_hop_limit = 1",
        "http_put_response_hop_limit = 2",
        "test_terraform_security.py::test_packer_builder_requires_imdsv2_with_hop_limit_1",
        "hop limit must be 1, got 2",
    ),
    (
        "workspace egress opens port 80",
        "terraform/modules/security_groups/main.tf",
        'proxy)"\n  ip_protocol       = "tcp"\n  from_port         = 443',
        'proxy)"\n  ip_protocol       = "tcp"\n  from_port         = 80',
        "test_terraform_security.py::test_workspace_security_group_egress_is_https_only",
        "workspace egress must be tcp/443 only",
    ),
    (
        "the DNS firewall is given another VPC",
        "terraform/modules/platform/main.tf",
        "  vpc_id             = module.network.vpc_id\n  platform_domains",
        '  vpc_id             = "vpc-00000000"\n  platform_domains',
        "test_terraform_security.py::test_dns_firewall_is_attached_to_the_vpc",
        "must be given the environment's VPC",
    ),
    (
        "the DNS firewall fails open",
        "terraform/modules/dns_firewall/main.tf",
        'firewall_fail_open = "DISABLED"',
        'firewall_fail_open = "ENABLED"',
        "test_terraform_security.py::test_dns_firewall_blocks_everything_not_allowed",
        "must fail closed",
    ),
    (
        "ENI trunking is no longer switched on",
        "terraform/modules/ecs_cluster/main.tf",
        'name  = "awsvpcTrunking"',
        'name  = "containerInsights"',
        "test_terraform_security.py::test_eni_trunking_is_enabled_for_the_account",
        "awsvpcTrunking",
    ),
    (
        "StopTask loses its cluster condition",
        "terraform/modules/scheduler/main.tf",
        '    actions   = ["ecs:StopTask", "ecs:DescribeTasks"]\n    resources = [local.cluster_tasks]\n    condition {\n'
        '      test     = "ArnEquals"\n      variable = "ecs:cluster"\n      values   = [var.cluster_arn]\n    }\n',
        '    actions   = ["ecs:StopTask", "ecs:DescribeTasks"]\n    resources = [local.cluster_tasks]\n',
        "test_terraform_security.py::test_scheduler_run_and_stop_are_conditioned_on_the_cluster",
        "must carry Condition ArnEquals ecs:cluster",
    ),
    (
        "the scheduler may pass any role",
        "terraform/modules/scheduler/main.tf",
        "resources = compact([var.workspace_execution_role_arn, var.workspace_task_role_arn])",
        'resources = ["*"]',
        "test_terraform_security.py::test_scheduler_may_only_place_and_inspect_tasks",
        "resource *",
    ),
    (
        "the scheduler gets ecs:*",
        "terraform/modules/scheduler/main.tf",
        'actions   = ["ecs:ListContainerInstances", "ecs:DescribeClusters"]',
        'actions   = ["ecs:ListContainerInstances", "ecs:DescribeClusters", "ecs:*"]',
        "test_terraform_security.py::test_scheduler_may_only_place_and_inspect_tasks",
        "more than placement needs",
    ),
    (
        "dockerd loses the workspace seccomp profile",
        "ami/files/daemon.json",
        '  "seccomp-profile": "/etc/docker/seccomp/workspace.json",\n',
        "",
        "test_provision.py::test_docker_daemon_config",
        "must be dockerd's default",
    ),
    (
        "the ECS agent stops blocking IMDS in tasks",
        "ami/files/ecs.config",
        "ECS_AWSVPC_BLOCK_IMDS=true\n",
        "",
        "test_provision.py::test_ecs_config_settings",
        "ECS_AWSVPC_BLOCK_IMDS",
    ),
    (
        "hostd no longer starts before the ECS agent",
        "ami/files/berth-hostd.service",
        "Before=ecs.service\n",
        "",
        "test_provision.py::test_hostd_unit",
        "Before=ecs.service",
    ),
    (
        "the host token is baked into the image",
        "ami/scripts/provision.sh",
        'install_file 0600 "${files}/hostd.env" /etc/berth/hostd.env\n',
        'install_file 0600 "${files}/hostd.env" /etc/berth/hostd.env\n'
        'install_file 0600 "${files}/hostd.env" /etc/berth/host-token\n',
        "test_provision.py::test_hostd_env_has_the_contract_and_no_secret",
        "must never be baked",
    ),
    (
        "the boot script runs only on the first boot",
        "terraform/modules/ecs_cluster/user-data.mime.tftpl",
        "  - [scripts-user, always]\n",
        "  - [scripts-user]\n",
        "test_contract.py::test_user_data_runs_on_every_boot",
        "scripts-user, always",
    ),
]

COPIED = ["ami", "terraform", ".github", "tests/infra", "hostd/Cargo.toml", "seccomp/workspace.json"]


def mutate_and_run(pristine: Path, work: Path, path: str, before: str, after: str, test: str) -> tuple[str, int, str]:
    """Copy, apply one mutation, run one test. Returns (problem, returncode, output)."""
    sandbox = work / "repo"
    shutil.copytree(pristine, sandbox, symlinks=True)
    target = sandbox / path
    text = target.read_text()
    if text.count(before) != 1:
        return (f"{path} changed: the mutation no longer applies", -1, "")
    target.write_text(text.replace(before, after))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"tests/infra/{test}", "-q", "-p", "no:cacheprovider", "--tb=short"],
        cwd=sandbox,
        capture_output=True,
        text=True,
        check=False,
    )
    return ("", result.returncode, result.stdout)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[str, int, str]]:
    """Every mutation, run in parallel (each in its own copy of the repository)."""
    pristine = tmp_path_factory.mktemp("pristine")
    for rel in COPIED:
        src, dst = REPO / rel, pristine / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", ".terraform"))
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2) * 2)) as pool:
        futures = {
            removed: pool.submit(mutate_and_run, pristine, tmp_path_factory.mktemp("mutation"), path, before, after, test)
            for removed, path, before, after, test, _ in MUTATIONS
        }
        return {removed: f.result() for removed, f in futures.items()}


@pytest.mark.parametrize(
    ("removed", "test", "message"),
    [(m[0], m[4], m[5]) for m in MUTATIONS],
    ids=[m[0] for m in MUTATIONS],
)
def test_removing_a_protection_fails_its_check(outcomes, removed, test, message):
    problem, returncode, output = outcomes[removed]
    assert not problem, f"'{removed}': {problem}"
    assert returncode == 1, f"'{removed}' went unnoticed by {test}:\n{output[-2000:]}"
    assert message in output, f"{test} failed for another reason than '{removed}':\n{output[-2000:]}"

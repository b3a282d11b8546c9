"""The contract between ami/, terraform/, the CI workflow and the Rust side:
names, ports and settings that hostd and the scheduler read must be the ones
the image and the infrastructure actually provide.

The lists below pin what the files say; that every name is one the binaries
accept, and that every setting they require is passed, is checked against the
built binaries themselves by tests/tests/deploy_flags.rs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import AMI, MODULES, REPO, TERRAFORM, HclDir, one

SCHEDULER_ENV = {
    "BERTH_LISTEN",
    "BERTH_RUNTIME",
    "BERTH_STATE",
    "BERTH_ECS_CLUSTER",
    "BERTH_ECS_TASK_DEFINITION",
    "BERTH_ECS_SUBNETS",
    "BERTH_ECS_SECURITY_GROUPS",
    "BERTH_AGENT_NETWORKS",
    "BERTH_POOLS",
    "BERTH_ECS_CAPACITY_PROVIDER",
    "BERTH_SCALE_OUT_HEADROOM",
    "BERTH_CHECKPOINT_STORE",
    "AWS_REGION",
}
SCHEDULER_SECRETS = {"BERTH_API_TOKEN", "BERTH_OPERATOR_TOKEN", "BERTH_HOST_TOKEN"}
HOSTD_ENV = {
    "BERTH_HOST_RUNTIME",
    "BERTH_HOSTD_LISTEN",
    "BERTH_HOSTD_ADVERTISE_URL",
    "BERTH_SCHEDULER_URL",
    "BERTH_HOST_TOKEN_FILE",
    "BERTH_ECS_CLUSTER",
    "BERTH_CHECK_DAEMON_SECCOMP",
    "BERTH_PROXY_TASK_CREDENTIALS",
    "BERTH_CHECKPOINT_STORE",
}
USER_DATA = MODULES / "ecs_cluster" / "user-data.sh.tftpl"


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line))


def set_keys(text: str, target: str) -> dict[str, str]:
    """KEY -> VALUE of the ``set_key TARGET KEY 'VALUE'`` (or ``"VALUE"``) lines of the boot script."""
    found = re.findall(r"^set_key " + re.escape(target) + r""" (\w+) (?:'([^']*)'|"([^"]*)")$""", text, re.M)
    assert found, f"the boot script does not set anything in {target}"
    return {k: single or double for k, single, double in found}


# --- scheduler -------------------------------------------------------------------


def test_scheduler_environment_is_the_contract(module):
    locals_ = module("scheduler").locals()
    env = {e["name"]: e["value"] for e in locals_["environment"]}
    assert set(env) == SCHEDULER_ENV
    assert env["BERTH_LISTEN"] == "0.0.0.0:7700"
    assert env["BERTH_RUNTIME"] == "ecs"
    assert env["BERTH_STATE"] == "${var.state_url}"
    assert env["BERTH_ECS_SUBNETS"] == '${join(",", var.workspace_subnet_ids)}'
    assert env["BERTH_ECS_SECURITY_GROUPS"] == '${join(",", var.workspace_security_group_ids)}'
    assert env["BERTH_AGENT_NETWORKS"] == '${join(",", var.agent_networks)}'
    secrets = {s["name"] for s in locals_["container"]["secrets"]}
    assert secrets == SCHEDULER_SECRETS


def test_scheduler_and_hosts_share_one_checkpoint_store(module):
    wiring = module("platform").modules()
    assert wiring["scheduler"]["checkpoint_store"] == "${module.checkpoints.store_url}"
    assert wiring["ecs_cluster"]["checkpoint_store"] == "${module.checkpoints.store_url}"
    env = {e["name"]: e["value"] for e in module("scheduler").locals()["environment"]}
    assert env["BERTH_CHECKPOINT_STORE"] == "${var.checkpoint_store}"
    added = set_keys(USER_DATA.read_text(), "/etc/berth/hostd.env")
    assert added["BERTH_CHECKPOINT_STORE"] == "${checkpoint_store}"
    out = {k: v for o in module("checkpoints").blocks["output"] for k, v in o.items()}
    assert out["store_url"]["value"] == "s3://${aws_s3_bucket.checkpoints.bucket}/${local.prefix}"


def test_scheduler_state_url_is_redis_on_6379(module):
    out = module("data").blocks["output"]
    redis_url = next(o["redis_url"] for o in out if "redis_url" in o)
    assert redis_url["value"].endswith("://${aws_elasticache_replication_group.redis.primary_endpoint_address}:6379")
    assert '"redis"' in redis_url["value"], "plain redis:// unless TLS is switched on"


def test_scheduler_is_wired_to_the_workspace_pieces(module):
    wiring = module("platform").modules()["scheduler"]
    assert wiring["workspace_task_definition_arn"] == "${module.workspace.task_definition_arn}"
    assert wiring["workspace_security_group_ids"] == ["${module.security_groups.workspace_id}"]
    assert wiring["workspace_subnet_ids"] == "${module.network.private_subnet_ids}"
    assert wiring["state_url"] == "${module.data.redis_url}"
    assert wiring["agent_networks"] == ["${module.network.vpc_cidr_block}"], "agents are reached in the VPC only"


@pytest.mark.parametrize("env", ["staging", "production"])
def test_environments_output_the_scheduler_config(env):
    outputs = {k for o in HclDir(TERRAFORM / "environments" / env).blocks["output"] for k in o}
    assert {"scheduler_environment", "scheduler_secrets", "scheduler_url", "hostd_environment"} <= outputs


# --- hostd -----------------------------------------------------------------------


def test_hostd_environment_is_complete_at_boot():
    baked = env_lines((AMI / "files" / "hostd.env").read_text())
    added = set_keys(USER_DATA.read_text(), "/etc/berth/hostd.env")
    assert not set(baked) & set(added), "user-data must not repeat what the AMI sets"
    assert set(baked) | set(added) == HOSTD_ENV


def test_user_data_writes_the_token_where_hostd_reads_it():
    token_file = env_lines((AMI / "files" / "hostd.env").read_text())["BERTH_HOST_TOKEN_FILE"]
    text = USER_DATA.read_text()
    assert f"token_file={token_file}\n" in text
    assert 'mv -f "$token_file.new" "$token_file"' in text and 'chmod 0600 "$token_file.new"' in text
    unit = (AMI / "files" / "berth-hostd.service").read_text()
    assert "$$BERTH_HOST_TOKEN_FILE" in unit, "the unit must wait for the file named by BERTH_HOST_TOKEN_FILE"


def test_user_data_sets_the_cluster():
    assert set_keys(USER_DATA.read_text(), "/etc/ecs/ecs.config") == {"ECS_CLUSTER": "${cluster_name}"}


def test_user_data_runs_on_every_boot(module):
    # Auto Scaling stops a warm-pool instance without waiting for user-data, and
    # cloud-init runs user-data once: the script must run again at the next boot.
    mime = (MODULES / "ecs_cluster" / "user-data.mime.tftpl").read_text()
    assert "cloud_final_modules:\n  - [scripts-user, always]" in mime
    assert "Content-Type: text/x-shellscript" in mime and "${script}" in mime
    lt = module("ecs_cluster").resource("aws_launch_template", "host")
    assert "user-data.mime.tftpl" in lt["user_data"] and "user-data.sh.tftpl" in lt["user_data"]


def test_user_data_template_variables_are_all_passed(module):
    lt = module("ecs_cluster").resource("aws_launch_template", "host")
    inner = lt["user_data"].split("user-data.sh.tftpl", 1)[1]
    passed = set(re.findall(r"(\w+)\s*=", inner))
    used = set(re.findall(r"(?<!\$)\$\{(\w+)\}", USER_DATA.read_text()))
    assert used <= passed, f"template variables not passed: {used - passed}"


def render_user_data(root: Path | None = None) -> str:
    text = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: f"rendered-{m.group(1)}", USER_DATA.read_text())
    text = text.replace("$${", "${")
    if root is not None:
        text = text.replace(" /etc/", f" {root}/etc/").replace("=/etc/", f"={root}/etc/")
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not any(re.search(r"(^|[\s='\"])/etc/", line) for line in code), "a path escaped the scratch root"
    return text


def test_user_data_renders_to_a_clean_script(tmp_path):
    script = tmp_path / "user-data.sh"
    script.write_text(render_user_data())
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def boot(root: Path, token: str | None, imds_address: str | None = "10.40.7.9") -> subprocess.CompletedProcess[str]:
    """Run the rendered boot script against files under root, with a stand-in
    aws CLI that answers the secret (or fails, when token is None) and a
    stand-in curl for instance metadata (failing, when imds_address is None)."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    aws = bin_dir / "aws"
    aws.write_text("#!/bin/sh\n" + (f"printf '%s\\n' '{token}'\n" if token else "exit 255\n"))
    aws.chmod(0o755)
    sleep = bin_dir / "sleep"
    sleep.write_text("#!/bin/sh\nexit 0\n")
    sleep.chmod(0o755)
    # Instance metadata (IMDSv2): a token for the PUT, then the private address.
    # The stand-in answers without any network; no test reaches 169.254.169.254.
    curl = bin_dir / "curl"
    if imds_address is None:
        curl.write_text("#!/bin/sh\nexit 7\n")
    else:
        curl.write_text(
            "#!/bin/sh\n"
            'case "$*" in\n'
            "  *api/token*) printf '%s' stand-in-imds-token ;;\n"
            f"  *meta-data/local-ipv4*) printf '%s' '{imds_address}' ;;\n"
            "  *) exit 22 ;;\n"
            "esac\n"
        )
    curl.chmod(0o755)
    script = root / "boot.sh"
    script.write_text(render_user_data(root))
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)


@pytest.fixture
def host_root(tmp_path) -> Path:
    (tmp_path / "etc/ecs").mkdir(parents=True)
    (tmp_path / "etc/berth").mkdir(mode=0o700)
    shutil.copy(AMI / "files" / "hostd.env", tmp_path / "etc/berth/hostd.env")
    (tmp_path / "etc/ecs/ecs.config").write_text("ECS_ENABLE_TASK_ENI=true\n")
    return tmp_path


def test_boot_script_is_idempotent_across_boots(host_root):
    for token in ("first-token", "rotated-token"):
        result = boot(host_root, token)
        assert result.returncode == 0, result.stderr
    hostd = env_lines((host_root / "etc/berth/hostd.env").read_text())
    assert hostd["BERTH_SCHEDULER_URL"] == "rendered-scheduler_url"
    assert hostd["BERTH_HOSTD_ADVERTISE_URL"] == "http://10.40.7.9:7701"
    assert (host_root / "etc/berth/hostd.env").read_text().count("BERTH_HOSTD_ADVERTISE_URL=") == 1
    assert (host_root / "etc/berth/hostd.env").read_text().count("BERTH_ECS_CLUSTER=") == 1
    ecs = (host_root / "etc/ecs/ecs.config").read_text()
    assert ecs.count("ECS_CLUSTER=") == 1 and "ECS_ENABLE_TASK_ENI=true" in ecs
    token = host_root / "etc/berth/host-token"
    assert token.read_text().strip() == "rotated-token", "a later boot picks up a rotated token"
    assert oct(token.stat().st_mode & 0o777) == "0o600"


def test_boot_script_fails_closed_without_a_token(host_root):
    result = boot(host_root, None)
    assert result.returncode != 0 and "will not take workspaces" in result.stderr
    assert not (host_root / "etc/berth/host-token").exists()
    # With a token from an earlier boot, a failed fetch keeps it.
    assert boot(host_root, "first-token").returncode == 0
    result = boot(host_root, None)
    assert result.returncode == 0 and "keeping the host token" in result.stderr


def test_boot_script_fails_closed_without_a_private_address(host_root):
    result = boot(host_root, "first-token", imds_address=None)
    assert result.returncode != 0 and "hostd cannot be advertised" in result.stderr
    assert not (host_root / "etc/berth/host-token").exists(), "hostd must not start advertising 0.0.0.0"
    assert "BERTH_HOSTD_ADVERTISE_URL" not in env_lines((host_root / "etc/berth/hostd.env").read_text())


def test_advertised_port_is_the_listen_port():
    hostd = env_lines((AMI / "files" / "hostd.env").read_text())
    advertised = set_keys(USER_DATA.read_text(), "/etc/berth/hostd.env")["BERTH_HOSTD_ADVERTISE_URL"]
    assert advertised.endswith(":" + hostd["BERTH_HOSTD_LISTEN"].rsplit(":", 1)[1])


def test_placement_attribute_is_what_the_ami_sets(module):
    ecs = env_lines((AMI / "files" / "ecs.config").read_text())
    attributes = json.loads(ecs["ECS_INSTANCE_ATTRIBUTES"])
    task = module("workspace").resource("aws_ecs_task_definition", "workspace")
    expr = one(task["placement_constraints"])["expression"]
    m = re.fullmatch(r"attribute:([\w.]+) == (\w+)", expr)
    assert m and attributes.get(m.group(1)) == m.group(2)


def test_ports_agree(module):
    hostd = env_lines((AMI / "files" / "hostd.env").read_text())
    assert hostd["BERTH_HOSTD_LISTEN"].endswith(":7701")
    sg = module("security_groups")
    assert sg.resource("aws_vpc_security_group_ingress_rule", "hosts_from_scheduler")["from_port"] == 7701
    assert sg.resource("aws_vpc_security_group_ingress_rule", "scheduler_from_backend")["from_port"] == 7700
    assert sg.resource("aws_vpc_security_group_ingress_rule", "workspace_from_backend")["from_port"] == 9000
    platform = module("platform").locals()
    assert platform["scheduler_url"].endswith(":7700")


def test_ecr_repositories_are_the_contract(module):
    ecr = module("ecr").blocks["variable"]
    default = next(v["repositories"]["default"] for v in ecr if "repositories" in v)
    assert default == ["berth-workspace", "berth-credential-proxy", "berth-scheduler"]
    assert set(module("platform").locals()["repository"].values()) == set(default)


# --- the AMI template and its workflow -------------------------------------------------


def test_packer_starts_from_the_latest_ecs_optimized_al2023(packer):
    src = packer.sources()["amazon-ebs.berth_host"]
    assert "source_ami" not in src, "no hard-coded source AMI id"
    flt = one(src["source_ami_filter"])
    assert flt["filters"]["name"].startswith("al2023-ami-ecs-hvm-")
    assert flt["owners"] == ["amazon"] and flt["most_recent"] is True
    assert src["encrypt_boot"] is True


def test_packer_installs_through_provision_sh(packer):
    build = one(packer.blocks["build"])
    provisioners = build["provisioner"]
    files = [p["file"] for p in provisioners if "file" in p]
    assert {f["source"] for f in files} == {
        "${path.root}/files",
        "${var.hostd_binary}",
        "${local.seccomp_profile}",
    }
    locals_ = {k: v for item in packer.blocks["locals"] for k, v in item.items()}
    assert locals_["seccomp_profile"].endswith('"${path.root}/../seccomp/workspace.json"}'), "the repository's profile by default"
    shell = [p["shell"] for p in provisioners if "shell" in p and "scripts" in p["shell"]]
    assert len(shell) == 1
    assert shell[0]["scripts"] == ["${path.root}/scripts/provision.sh", "${path.root}/scripts/finalize.sh"]
    env = dict(e.split("=", 1) for e in shell[0]["environment_vars"])
    assert env["BERTH_ROOT"] == "/"
    destinations = {f["destination"] for f in files}
    assert env["BERTH_INPUTS"] == "${local.inputs_dir}"
    assert "${local.inputs_dir}/hostd" in destinations and "${local.inputs_dir}/workspace.json" in destinations


def workflow() -> dict:
    return yaml.safe_load((REPO / ".github" / "workflows" / "ami.yml").read_text())


def test_ami_workflow_builds_on_tags():
    wf = workflow()
    triggers = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads "on" as true
    assert triggers["push"]["tags"] == ["v*"]
    assert wf["permissions"] == {"contents": "read"}
    job = wf["jobs"]["build"]
    assert job["permissions"]["id-token"] == "write", "AWS access through OIDC, not stored keys"
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "bash tests/infra/check.sh" in runs
    assert re.search(r"packer build .*ami/", runs)
    assert "AWS_SECRET_ACCESS_KEY" not in (REPO / ".github" / "workflows" / "ami.yml").read_text()


def test_ami_workflow_builds_the_hostd_package():
    cargo = tomllib.loads((REPO / "hostd" / "Cargo.toml").read_text())
    bins = [b["name"] for b in cargo.get("bin", [])]
    runs = "\n".join(s.get("run", "") for s in workflow()["jobs"]["build"]["steps"])
    assert f"-p {cargo['package']['name']}" in runs
    assert "hostd" in bins and "--bin hostd" in runs


def test_ami_workflow_and_template_name_the_same_plugin():
    env = workflow()["env"]
    header = (AMI / "berth-host.pkr.hcl").read_text()
    assert f"packer plugins install github.com/hashicorp/amazon {env['PACKER_AMAZON_PLUGIN_VERSION']}" in header


# --- checkov skips -------------------------------------------------------------------


def test_every_checkov_skip_is_justified():
    skips = []
    for tf in sorted(TERRAFORM.rglob("*.tf")):
        for n, line in enumerate(tf.read_text().splitlines(), 1):
            if "checkov:skip" in line:
                m = re.search(r"#checkov:skip=(CKV2?_[A-Z]+_\d+):(.+)$", line)
                assert m, f"{tf}:{n}: malformed skip"
                assert len(m.group(2).strip()) >= 25, f"{tf}:{n}: {m.group(1)} needs a real reason"
                skips.append(m.group(1))
    assert len(skips) <= 20, f"the skip list has grown to {len(skips)}: review it"


def test_only_staging_skips_checks_as_a_whole():
    prod = yaml.safe_load((TERRAFORM / "environments" / "production" / ".checkov.yaml").read_text())
    assert "skip-check" not in prod
    staging_text = (TERRAFORM / "environments" / "staging" / ".checkov.yaml").read_text()
    staging = yaml.safe_load(staging_text)
    assert set(staging["skip-check"]) <= {"CKV_AWS_157", "CKV2_AWS_50", "CKV_AWS_293"}
    for check in staging["skip-check"]:
        assert re.search(rf"- {check} # \S.{{20,}}", staging_text), f"{check} has no reason"

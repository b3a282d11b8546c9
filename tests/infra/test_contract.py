"""The contract between ami/, terraform/, the CI workflow and the Rust side:
names, ports and settings that hostd and the scheduler read must be the ones
the image and the infrastructure actually provide.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

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
    "BERTH_POOLS",
    "AWS_REGION",
}
SCHEDULER_SECRETS = {"BERTH_API_TOKEN", "BERTH_HOST_TOKEN"}
HOSTD_ENV = {
    "BERTH_HOST_RUNTIME",
    "BERTH_HOSTD_LISTEN",
    "BERTH_SCHEDULER_URL",
    "BERTH_HOST_TOKEN_FILE",
    "BERTH_ECS_CLUSTER",
}
USER_DATA = MODULES / "ecs_cluster" / "user-data.sh.tftpl"


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line))


def heredoc(text: str, target: str) -> str:
    """Body of the heredoc appended to target in the user-data template."""
    m = re.search(r"cat >>" + re.escape(target) + r" <<'(\w+)'\n(.*?)\n\1\n", text, re.S)
    assert m, f"user-data does not append to {target}"
    return m.group(2)


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
    secrets = {s["name"] for s in locals_["container"]["secrets"]}
    assert secrets == SCHEDULER_SECRETS


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


@pytest.mark.parametrize("env", ["staging", "production"])
def test_environments_output_the_scheduler_config(env):
    outputs = {k for o in HclDir(TERRAFORM / "environments" / env).blocks["output"] for k in o}
    assert {"scheduler_environment", "scheduler_secrets", "scheduler_url", "hostd_environment"} <= outputs


# --- hostd -----------------------------------------------------------------------


def test_hostd_environment_is_complete_at_boot():
    baked = env_lines((AMI / "files" / "hostd.env").read_text())
    added = env_lines(heredoc(USER_DATA.read_text(), "/etc/berth/hostd.env"))
    assert not set(baked) & set(added), "user-data must not repeat what the AMI sets"
    assert set(baked) | set(added) == HOSTD_ENV


def test_user_data_writes_the_token_where_hostd_reads_it():
    token_file = env_lines((AMI / "files" / "hostd.env").read_text())["BERTH_HOST_TOKEN_FILE"]
    text = USER_DATA.read_text()
    assert f"mv -f {token_file}.new {token_file}" in text
    assert "chmod 0600" in text
    unit = (AMI / "files" / "berth-hostd.service").read_text()
    assert "$$BERTH_HOST_TOKEN_FILE" in unit, "the unit must wait for the file named by BERTH_HOST_TOKEN_FILE"


def test_user_data_sets_the_cluster():
    body = heredoc(USER_DATA.read_text(), "/etc/ecs/ecs.config")
    assert env_lines(body) == {"ECS_CLUSTER": "${cluster_name}"}


def test_user_data_template_variables_are_all_passed(module):
    lt = module("ecs_cluster").resource("aws_launch_template", "host")
    passed = set(re.findall(r"(\w+)\s*=", lt["user_data"].split("templatefile(", 1)[1]))
    used = set(re.findall(r"(?<!\$)\$\{(\w+)\}", USER_DATA.read_text()))
    assert used <= passed, f"template variables not passed: {used - passed}"


def test_user_data_renders_to_a_clean_script(tmp_path):
    text = USER_DATA.read_text()
    rendered = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: f"rendered-{m.group(1)}", text).replace("$${", "${")
    script = tmp_path / "user-data.sh"
    script.write_text(rendered)
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


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

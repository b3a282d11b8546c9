"""The security properties of terraform/ that must not be lost in an edit.

Each test reads the HCL itself (no plan, no AWS) and names the protection it
guards, so that a failing run says what was removed.
"""

from __future__ import annotations

import re

import pytest

from conftest import TERRAFORM, HclDir, as_list, one

# ---------------------------------------------------------------------------
# workspace task definition
# ---------------------------------------------------------------------------


def workspace_containers(module) -> dict[str, dict]:
    ws = module("workspace")
    task = ws.resource("aws_ecs_task_definition", "workspace")
    refs = re.findall(r"local\.(\w+)", task["container_definitions"])
    assert task["container_definitions"].startswith("${jsonencode("), "container definitions must be built from locals"
    locals_ = ws.locals()
    containers = [locals_[r] for r in refs]
    return {c["name"]: c for c in containers}


def test_workspace_task_role_only_reads_claim_secrets(module):
    # A task role only when claims may name secrets, reading exactly those.
    ws = module("workspace")
    task = ws.resource("aws_ecs_task_definition", "workspace")
    assert task.get("task_role_arn") == "${one(aws_iam_role.proxy[*].arn)}", (
        "the workspace task's only role is the proxies' (or none): "
        f"task_role_arn = {task.get('task_role_arn')!r}"
    )
    role = ws.resource("aws_iam_role", "proxy")
    assert role["count"] == "${length(var.proxy_secret_arns) > 0 ? 1 : 0}", "the role exists only with proxy_secret_arns"
    doc = ws.data("aws_iam_policy_document", "proxy")
    got = {(tuple(st["actions"]), str(st["resources"])) for st in doc["statement"]}
    assert got == {
        (("secretsmanager:GetSecretValue",), "${var.proxy_secret_arns}"),
        (("kms:Decrypt",), "['${var.kms_key_arn}']"),
    }, f"the proxies' role may read the listed secrets and nothing else, not resource *: {got}"
    wiring = module("platform").modules()
    assert wiring["ecs_cluster"]["proxy_task_credentials"] == "${length(var.proxy_secret_arns) > 0}", (
        "hostd opens the credential endpoint to the proxy's uid exactly when the role exists"
    )
    assert task["network_mode"] == "awsvpc"
    assert task["requires_compatibilities"] == ["EC2"]
    assert task["execution_role_arn"] == "${aws_iam_role.execution.arn}"


def test_workspace_tasks_only_land_on_berth_hosts(module):
    task = module("workspace").resource("aws_ecs_task_definition", "workspace")
    constraint = one(task["placement_constraints"])
    assert constraint == {"type": "memberOf", "expression": "attribute:berth.hostd == 1"}


def test_workspace_has_exactly_agent_and_proxy(module):
    containers = workspace_containers(module)
    assert set(containers) == {"workspace-agent", "credential-proxy"}
    agent, proxy = containers["workspace-agent"], containers["credential-proxy"]
    assert agent["user"] == "1000:1000"
    assert proxy["user"] == "2000:2000"
    assert [p["containerPort"] for p in agent["portMappings"]] == [9000]
    # The proxy listens on the task's loopback only and publishes nothing.
    assert "portMappings" not in proxy
    assert {"name": "BERTH_PROXY_LISTEN", "value": "127.0.0.1:8080"} in proxy["environment"]


@pytest.mark.parametrize("name", ["workspace-agent", "credential-proxy"])
def test_workspace_containers_are_hardened(module, name):
    c = workspace_containers(module)[name]
    uid = c["user"].split(":")[0]
    assert uid not in ("0", "root") and int(uid) > 0, f"{name} must run as non-root, user = {c['user']!r}"
    assert c["readonlyRootFilesystem"] is True, f"{name}: read-only root filesystem"
    assert c["privileged"] is False, f"{name}: not privileged"
    caps = c["linuxParameters"]["capabilities"]
    assert caps["drop"] == ["ALL"], f"{name}: all capabilities dropped, got {caps}"
    assert not caps.get("add"), f"{name}: no capability added, got {caps.get('add')}"
    assert "no-new-privileges" in c["dockerSecurityOptions"], f"{name}: no-new-privileges"
    assert c["logConfiguration"]["logDriver"] == "awslogs", f"{name}: log configuration"
    assert c.get("memory"), f"{name}: hard memory limit"
    ulimits = {u["name"]: u for u in c["ulimits"]}
    assert "nofile" in ulimits, f"{name}: nofile ulimit"


def test_workspace_execution_role_reads_only_its_secret_and_images(module):
    doc = module("workspace").data("aws_iam_policy_document", "execution")
    for st in doc["statement"]:
        if st["actions"] == ["ecr:GetAuthorizationToken"]:
            continue  # account-wide by nature
        assert "*" not in st["resources"], f"execution role statement {st['sid']} uses resource *"
    actions = {a for st in doc["statement"] for a in st["actions"]}
    assert not any(a.endswith(":*") or a == "*" for a in actions), actions


# ---------------------------------------------------------------------------
# instance metadata: IMDSv2 only, one hop
# ---------------------------------------------------------------------------


def assert_imdsv2_hop_1(options: dict, where: str) -> None:
    assert options.get("http_tokens") == "required", f"{where}: IMDSv2 must be required, http_tokens = {options.get('http_tokens')!r}"
    assert options.get("http_put_response_hop_limit") == 1, (
        f"{where}: hop limit must be 1, got {options.get('http_put_response_hop_limit')!r}"
    )
    assert options.get("http_endpoint", "enabled") == "enabled"


def test_launch_template_requires_imdsv2_with_hop_limit_1(module):
    lt = module("ecs_cluster").resource("aws_launch_template", "host")
    assert "metadata_options" in lt, "launch template: metadata_options missing (IMDSv1 would be allowed)"
    assert_imdsv2_hop_1(one(lt["metadata_options"]), "launch template")


def test_packer_builder_requires_imdsv2_with_hop_limit_1(packer):
    src = packer.sources()["amazon-ebs.berth_host"]
    assert "metadata_options" in src, "packer source: metadata_options missing"
    assert_imdsv2_hop_1(one(src["metadata_options"]), "packer source")
    assert src.get("imds_support") == "v2.0", "the AMI itself must be marked IMDSv2-only (imds_support)"


def test_hosts_get_no_public_address_and_encrypted_disks(module):
    lt = module("ecs_cluster").resource("aws_launch_template", "host")
    assert "network_interfaces" not in lt or all(
        not ni.get("associate_public_ip_address") for ni in as_list(lt["network_interfaces"])
    )
    ebs = one(one(lt["block_device_mappings"])["ebs"])
    assert ebs["encrypted"] is True


# ---------------------------------------------------------------------------
# security groups
# ---------------------------------------------------------------------------


def rules_of(group: str, module, direction: str) -> list[tuple[str, dict]]:
    """All rules, in any module and in any of the three Terraform forms, that
    apply to aws_security_group.<group>."""
    ref = f"${{aws_security_group.{group}.id}}"
    found: list[tuple[str, dict]] = []
    for d in sorted(p.name for p in (TERRAFORM / "modules").iterdir() if p.is_dir()):
        m = module(d)
        for name, r in m.resources(f"aws_vpc_security_group_{direction}_rule").items():
            if r["security_group_id"] == ref:
                found.append((f"{d}.{name}", r))
        for name, r in m.resources("aws_security_group_rule").items():
            if r["security_group_id"] == ref and r["type"] == direction:
                found.append((f"{d}.{name}", r))
    return found


def test_workspace_security_group_egress_is_https_only(module):
    sg = module("security_groups").resource("aws_security_group", "workspace")
    assert "egress" not in sg and "ingress" not in sg, "the workspace group must not carry inline rules"
    egress = rules_of("workspace", module, "egress")
    assert egress, "the workspace group has no egress rule at all (expected HTTPS)"
    for name, rule in egress:
        proto = str(rule.get("ip_protocol", rule.get("protocol")))
        assert proto == "tcp" and rule["from_port"] == 443 and rule["to_port"] == 443, (
            f"workspace egress must be tcp/443 only; {name} allows {proto} {rule.get('from_port')}-{rule.get('to_port')}"
        )


def test_workspace_security_group_ingress_is_agent_port_from_platform_only(module):
    # The agent (9000) from the backend, the scheduler and hostd; the proxy's admin
    # channel (8081) from hostd alone.
    ingress = rules_of("workspace", module, "ingress")
    allowed = {9000: set(), 8081: set()}
    for name, rule in ingress:
        port = rule["from_port"]
        assert rule["ip_protocol"] == "tcp" and port in allowed and rule["to_port"] == port, (
            f"workspace ingress must be tcp/9000 or tcp/8081 only; {name}"
        )
        assert "cidr_ipv4" not in rule and "cidr_ipv6" not in rule, f"{name}: workspace ingress from an address range"
        allowed[port].add(rule["referenced_security_group_id"])
    assert allowed[9000] == {
        "${aws_security_group.backend.id}",
        "${aws_security_group.scheduler.id}",
        "${aws_security_group.hosts.id}",
    }
    assert allowed[8081] == {"${aws_security_group.hosts.id}"}, "only hostd may reach the proxy's admin channel"


def test_backend_only_reachable_from_alb(module):
    ingress = rules_of("backend", module, "ingress")
    assert [(r["from_port"], r["referenced_security_group_id"]) for _, r in ingress] == [
        (8000, "${aws_security_group.alb.id}")
    ]


def test_vpc_endpoints_not_reachable_from_workspaces(module):
    # Only when proxies read claims' secrets (they alone can leave a task).
    rule = module("security_groups").resource("aws_vpc_security_group_ingress_rule", "endpoints_from_platform")
    guarded = "var.workspaces_reach_endpoints ? {workspace = aws_security_group.workspace.id} : {}"
    unguarded = rule["for_each"].replace(guarded, "")
    assert "workspace" not in unguarded, "workspaces must not reach the interface endpoints unless proxies read secrets"
    wiring = module("platform").modules()["security_groups"]
    assert wiring.get("workspaces_reach_endpoints") == "${length(var.proxy_secret_arns) > 0}"


def test_no_rule_opens_all_protocols(module):
    for d in (TERRAFORM / "modules").iterdir():
        if not d.is_dir():
            continue
        m = module(d.name)
        for direction in ("ingress", "egress"):
            for name, r in m.resources(f"aws_vpc_security_group_{direction}_rule").items():
                assert str(r["ip_protocol"]) not in ("-1", "all"), f"{d.name}.{name} opens all protocols"


# ---------------------------------------------------------------------------
# DNS firewall
# ---------------------------------------------------------------------------


def test_dns_firewall_is_attached_to_the_vpc(module):
    fw = module("dns_firewall")
    assoc = fw.resource("aws_route53_resolver_firewall_rule_group_association", "vpc")
    assert assoc["vpc_id"] == "${var.vpc_id}"
    assert assoc["firewall_rule_group_id"] == "${aws_route53_resolver_firewall_rule_group.this.id}"
    platform = module("platform").modules()["dns_firewall"]
    assert platform["vpc_id"] == "${module.network.vpc_id}", "the firewall must be given the environment's VPC"


def test_dns_firewall_blocks_everything_not_allowed(module):
    fw = module("dns_firewall")
    rules = fw.resources("aws_route53_resolver_firewall_rule")
    allow, block = rules["allow_listed"], rules["block_rest"]
    assert allow["action"] == "ALLOW" and block["action"] == "BLOCK"
    assert allow["priority"] < block["priority"], "the allow list must be evaluated before the catch-all block"
    everything = fw.resource("aws_route53_resolver_firewall_domain_list", "everything")
    assert everything["domains"] == ["*."]
    assert block["firewall_domain_list_id"] == "${aws_route53_resolver_firewall_domain_list.everything.id}"
    config = fw.resource("aws_route53_resolver_firewall_config", "vpc")
    assert config["firewall_fail_open"] == "DISABLED", "the firewall must fail closed"


# ---------------------------------------------------------------------------
# ECS cluster
# ---------------------------------------------------------------------------


def test_eni_trunking_is_enabled_for_the_account(module):
    setting = module("ecs_cluster").resource("aws_ecs_account_setting_default", "trunking")
    assert (setting["name"], setting["value"]) == ("awsvpcTrunking", "enabled")
    # It may be left to another environment of the same account, but by default
    # every environment manages it.
    assert setting["count"] == "${var.manage_account_settings ? 1 : 0}"
    for env in ("staging", "production"):
        variables = HclDir(TERRAFORM / "environments" / env).blocks["variable"]
        default = next(v["manage_account_settings"]["default"] for v in variables if "manage_account_settings" in v)
        assert default is True, f"{env}: trunking must be managed by default"


def test_capacity_provider_scales_and_drains_with_a_warm_pool(module):
    c = module("ecs_cluster")
    cp = one(c.resource("aws_ecs_capacity_provider", "hosts")["auto_scaling_group_provider"])
    assert one(cp["managed_scaling"])["status"] == "ENABLED"
    assert cp["managed_termination_protection"] == "ENABLED"
    assert cp["managed_draining"] == "ENABLED"
    asg = c.resource("aws_autoscaling_group", "hosts")
    assert "warm_pool" in asg
    assert asg["protect_from_scale_in"] is True
    assert asg["launch_template"][0]["id"] == "${aws_launch_template.host.id}"


# ---------------------------------------------------------------------------
# scheduler IAM
# ---------------------------------------------------------------------------

SCHEDULER_ACTIONS = {
    "ecs:RunTask",
    "ecs:StopTask",
    "ecs:DescribeTasks",
    "ecs:ListTasks",
    "ecs:DescribeContainerInstances",
    "ecs:ListContainerInstances",
    "ecs:DescribeClusters",
    "ecs:TagResource",
    "iam:PassRole",
}


def scheduler_statements(module) -> list[dict]:
    return module("scheduler").data("aws_iam_policy_document", "task")["statement"]


def conditions(st: dict) -> list[tuple[str, str, list]]:
    return [(c["test"], c["variable"], c["values"]) for c in as_list(st.get("condition"))]


def test_scheduler_may_only_place_and_inspect_tasks(module):
    statements = scheduler_statements(module)
    actions = {a for st in statements for a in st["actions"]}
    assert actions <= SCHEDULER_ACTIONS, f"scheduler task role grants more than placement needs: {sorted(actions - SCHEDULER_ACTIONS)}"
    for st in statements:
        assert st.get("effect", "Allow") == "Allow"
        assert "*" not in st["resources"], f"{st['sid']}: resource *"
        assert not st.get("not_actions") and not st.get("not_resources"), f"{st['sid']}: Not* elements"


@pytest.mark.parametrize("action", ["ecs:RunTask", "ecs:StopTask"])
def test_scheduler_run_and_stop_are_conditioned_on_the_cluster(module, action):
    granting = [st for st in scheduler_statements(module) if action in st["actions"]]
    assert granting, f"{action} is not granted at all"
    for st in granting:
        assert ("ArnEquals", "ecs:cluster", ["${var.cluster_arn}"]) in conditions(st), (
            f"{st['sid']}: {action} must carry Condition ArnEquals ecs:cluster = the cluster ARN"
        )


def test_scheduler_ecs_permissions_stay_in_the_cluster(module):
    cluster_scoped = re.compile(r"(task|container-instance)/\$\{var\.cluster_name\}/\*")
    for st in scheduler_statements(module):
        if not any(a.startswith("ecs:") for a in st["actions"]):
            continue
        on_cluster = ("ArnEquals", "ecs:cluster", ["${var.cluster_arn}"]) in conditions(st)
        only_cluster = st["resources"] == ["${var.cluster_arn}"]
        tag_at_launch = st["actions"] == ["ecs:TagResource"] and ("StringEquals", "ecs:CreateAction", ["RunTask"]) in conditions(st)
        assert on_cluster or only_cluster or tag_at_launch, f"{st['sid']} is not limited to the cluster"
        if tag_at_launch:
            assert st["resources"] == ["${local.cluster_tasks}"]
    locals_ = module("scheduler").locals()
    assert cluster_scoped.search(locals_["cluster_tasks"])
    assert cluster_scoped.search(locals_["cluster_instances"])
    assert locals_["workspace_task_definitions"].endswith("task-definition/${var.workspace_task_definition_family}:*")


def test_scheduler_passes_only_the_workspace_execution_role(module):
    passing = [st for st in scheduler_statements(module) if "iam:PassRole" in st["actions"]]
    assert len(passing) == 1
    st = passing[0]
    assert st["actions"] == ["iam:PassRole"]
    assert st["resources"] == "${compact([var.workspace_execution_role_arn, var.workspace_task_role_arn])}"
    assert ("StringEquals", "iam:PassedToService", ["ecs-tasks.amazonaws.com"]) in conditions(st)
    wiring = module("platform").modules()["scheduler"]
    assert wiring["workspace_execution_role_arn"] == "${module.workspace.execution_role_arn}"
    assert wiring["workspace_task_role_arn"] == "${module.workspace.task_role_arn}"
    assert wiring["cluster_arn"] == "${module.ecs_cluster.cluster_arn}"


def test_scheduler_task_role_has_no_other_policy(module):
    s = module("scheduler")
    attached = [r for r in s.resources("aws_iam_role_policy_attachment").values() if "aws_iam_role.task" in r["role"]]
    assert not attached, f"managed policies attached to the scheduler task role: {attached}"
    inline = [r for r in s.resources("aws_iam_role_policy").values() if "aws_iam_role.task" in r["role"]]
    assert sorted(r["policy"] for r in inline) == [
        "${data.aws_iam_policy_document.task.json}",
        "${var.checkpoint_policy_json}",
    ]
    wiring = module("platform").modules()["scheduler"]
    assert wiring["checkpoint_policy_json"] == "${module.checkpoints.scheduler_policy_json}"


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def test_checkpoint_bucket_is_private_encrypted_and_tls_only(module):
    c = module("checkpoints")
    block = c.resource("aws_s3_bucket_public_access_block", "checkpoints")
    assert all(block[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"))
    sse = c.resource("aws_s3_bucket_server_side_encryption_configuration", "checkpoints")
    default = one(one(sse["rule"])["apply_server_side_encryption_by_default"])
    assert default == {"sse_algorithm": "aws:kms", "kms_master_key_id": "${var.kms_key_arn}"}
    tls = one([s for s in as_list(c.data("aws_iam_policy_document", "bucket")["statement"]) if s["sid"] == "TlsOnly"])
    assert tls["effect"] == "Deny" and one(tls["condition"])["values"] == ["false"]


def test_checkpoint_lifecycle_aborts_uploads_and_expires_what_nobody_deleted(module):
    rule = one(module("checkpoints").resource("aws_s3_bucket_lifecycle_configuration", "checkpoints")["rule"])
    assert one(rule["abort_incomplete_multipart_upload"]) == {"days_after_initiation": 1}
    assert one(rule["expiration"]) == {"days": "${var.retention_days}"}
    assert one(rule["noncurrent_version_expiration"]) == {"noncurrent_days": "${var.deleted_retention_days}"}


def test_checkpoint_access_is_hostd_and_the_scheduler_within_the_prefix(module):
    c = module("checkpoints")
    for who, actions in (
        ("hosts", {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}),
        ("scheduler", {"s3:GetObject", "s3:DeleteObject"}),
    ):
        doc = as_list(c.data("aws_iam_policy_document", who)["statement"])
        objects = one([s for s in doc if s["resources"] == ["${local.objects}"]])
        assert set(objects["actions"]) == actions, who
        listing = one([s for s in doc if s["actions"] == ["s3:ListBucket"]])
        assert one(listing["condition"])["values"] == ["${local.prefix}/*"], f"{who} lists only the prefix"
        assert all("*" not in str(s["resources"]).replace("${local.objects}", "") for s in doc), who
    wiring = module("platform").modules()["ecs_cluster"]
    assert wiring["checkpoint_policy_json"] == "${module.checkpoints.hosts_policy_json}"
    assert module("checkpoints").locals()["objects"] == "${aws_s3_bucket.checkpoints.arn}/${local.prefix}/*"


# ---------------------------------------------------------------------------
# environments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["staging", "production"])
def test_environments_are_built_from_the_same_modules(env):
    modules = HclDir(TERRAFORM / "environments" / env).modules()
    assert list(modules) == ["berth"]
    assert modules["berth"]["source"] == "../../modules/platform"


def test_production_is_multi_az_and_protected():
    prod = HclDir(TERRAFORM / "environments" / "production").modules()["berth"]
    assert prod["multi_az"] is True
    assert prod["deletion_protection"] is True


def test_data_stores_are_encrypted(module):
    d = module("data")
    redis = d.resource("aws_elasticache_replication_group", "redis")
    assert redis["at_rest_encryption_enabled"] is True
    assert redis["automatic_failover_enabled"] == "${var.multi_az}"
    pg = d.resource("aws_db_instance", "postgres")
    assert pg["storage_encrypted"] is True and pg["publicly_accessible"] is False
    assert pg["multi_az"] == "${var.multi_az}"
    assert pg["manage_master_user_password"] is True, "the database password must not pass through Terraform state"

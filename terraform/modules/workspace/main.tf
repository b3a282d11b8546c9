# The workspace task definition: what the scheduler starts with RunTask for
# every warm slot. Two containers share the task's network namespace (awsvpc,
# one ENI-trunk branch):
#
#   workspace-agent   :9000  runs the agent's commands and files; untrusted
#                            code runs here. uid 1000.
#   credential-proxy  :8080  on loopback only; the workspace's only door out,
#                            holding and injecting upstream credentials (a
#                            claim's, read with the task role). :8081 its admin
#                            channel, for hostd only. uid 2000
#                            (hostd's egress lock lets only this uid out).
#
# The task role exists only when claims may name secrets (proxy_secret_arns):
# it reads exactly those secrets, and hostd's egress lock lets only the
# proxy's uid reach the ECS credential endpoint (BERTH_PROXY_TASK_CREDENTIALS,
# set from this module's output). Without it nothing in the task can obtain AWS
# credentials. The execution role (which the containers never see) pulls the
# images and writes the logs.
#
# Every environment variable here is one the binary in that container reads:
# tests/tests/deploy_flags.rs checks them against the binaries' --help and
# code. The scheduler adds the per-task ones (BERTH_TEMPLATE,
# BERTH_CLAIM_SECRET_SHA256) to each RunTask as container overrides; they are
# never part of the task definition.
#
# Both containers run as non-root users with a read-only root filesystem, all
# capabilities dropped, no-new-privileges, memory limits and file-descriptor
# ulimits. ECS cannot set a pids limit (there is no pidsLimit in
# linuxParameters; an nproc ulimit would count the uid across all workspaces
# of a host), so hostd applies the pids cgroup limit to each container it
# discovers. The seccomp profile is the Docker daemon's default on the Berth
# AMI, and the placement constraint keeps these tasks off any other host.

data "aws_region" "current" {}

locals {
  region = data.aws_region.current.name

  log_options = {
    "awslogs-group"         = aws_cloudwatch_log_group.workspace.name
    "awslogs-region"        = local.region
    "awslogs-stream-prefix" = "workspace"
    # Never block a workspace on CloudWatch; drop lines instead.
    "mode"            = "non-blocking"
    "max-buffer-size" = "4m"
  }

  agent_container = {
    name                   = "workspace-agent"
    image                  = var.workspace_image
    essential              = true
    user                   = "1000:1000"
    readonlyRootFilesystem = true
    privileged             = false
    memory                 = var.agent_memory_mib
    memoryReservation      = var.agent_memory_reservation_mib
    cpu                    = var.agent_cpu_units
    portMappings           = [{ containerPort = 9000, protocol = "tcp" }]
    environment = [
      { name = "BERTH_AGENT_LISTEN", value = "0.0.0.0:9000" },
      { name = "BERTH_AGENT_ROOT", value = "/workspace" },
      # Ordinary tools go out through the credential-proxy, as in hostd's docker
      # runtime: the agent hands exactly these to every command it runs, and
      # hostd's egress lock lets only the proxy's uid out of the task.
      { name = "HTTPS_PROXY", value = "http://127.0.0.1:8080" },
      { name = "HTTP_PROXY", value = "http://127.0.0.1:8080" },
      { name = "https_proxy", value = "http://127.0.0.1:8080" },
      { name = "http_proxy", value = "http://127.0.0.1:8080" },
      { name = "NO_PROXY", value = "localhost,127.0.0.1,::1" },
      { name = "no_proxy", value = "localhost,127.0.0.1,::1" },
    ]
    dockerSecurityOptions = ["no-new-privileges"]
    linuxParameters = {
      capabilities       = { add = [], drop = ["ALL"] }
      initProcessEnabled = true
      tmpfs = [
        { containerPath = "/workspace", size = var.workspace_size_mib, mountOptions = ["rw", "nosuid", "nodev", "uid=1000", "gid=1000", "mode=0755"] },
        { containerPath = "/tmp", size = 256, mountOptions = ["rw", "nosuid", "nodev", "mode=1777"] },
      ]
    }
    ulimits = [
      { name = "nofile", softLimit = 4096, hardLimit = 8192 },
      { name = "core", softLimit = 0, hardLimit = 0 },
    ]
    dependsOn        = [{ containerName = "credential-proxy", condition = "START" }]
    logConfiguration = { logDriver = "awslogs", options = local.log_options }
  }

  proxy_container = {
    name                   = "credential-proxy"
    image                  = var.proxy_image
    essential              = true
    user                   = "2000:2000"
    readonlyRootFilesystem = true
    privileged             = false
    memory                 = var.proxy_memory_mib
    memoryReservation      = var.proxy_memory_mib
    cpu                    = var.proxy_cpu_units
    # No port mapping: the proxy listens on the task's loopback only
    # (BERTH_PROXY_LISTEN is one of the proxy's configuration overrides,
    # proxy/src/config.rs ENV_VARS).
    #
    # Upstream credentials come with each claim: hostd pushes the claim's
    # credential routes to the admin channel, and the proxy reads each route's
    # secret from Secrets Manager with the task role (only with
    # proxy_secret_arns; the endpoint is reachable from workspaces then too).
    # The admin channel (BERTH_PROXY_ADMIN_LISTEN, :8081) and the hash of the
    # claim secret it demands are per-RunTask overrides set by the scheduler.
    environment = [
      { name = "BERTH_PROXY_LISTEN", value = "127.0.0.1:8080" },
      # Where a claim's credential routes' secrets are read (task role).
      { name = "BERTH_PROXY_SECRETS_REGION", value = data.aws_region.current.name },
    ]
    dockerSecurityOptions = ["no-new-privileges"]
    linuxParameters = {
      capabilities       = { add = [], drop = ["ALL"] }
      initProcessEnabled = true
    }
    ulimits = [
      { name = "nofile", softLimit = 4096, hardLimit = 8192 },
      { name = "core", softLimit = 0, hardLimit = 0 },
    ]
    logConfiguration = { logDriver = "awslogs", options = local.log_options }
  }
}

resource "aws_cloudwatch_log_group" "workspace" {
  name              = "/berth/${var.name}/workspace"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

# === execution role (used by the ECS agent, never by the containers) ===

data "aws_iam_policy_document" "execution_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-ws-exec-"
  assume_role_policy = data.aws_iam_policy_document.execution_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid = "PullWorkspaceImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = var.image_repository_arns
  }
  statement {
    sid       = "WriteWorkspaceLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.workspace.arn}:*"]
  }
  statement {
    sid       = "DecryptWithEnvironmentKey"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "execution" {
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# === the proxies' task role (only with proxy_secret_arns) ===

resource "aws_iam_role" "proxy" {
  count              = length(var.proxy_secret_arns) > 0 ? 1 : 0
  name_prefix        = "${var.name}-ws-proxy-"
  assume_role_policy = data.aws_iam_policy_document.execution_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "proxy" {
  statement {
    sid       = "ReadClaimSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = var.proxy_secret_arns
  }
  statement {
    sid       = "DecryptClaimSecrets"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "proxy" {
  count  = length(var.proxy_secret_arns) > 0 ? 1 : 0
  role   = aws_iam_role.proxy[0].id
  policy = data.aws_iam_policy_document.proxy.json
}

# === task definition ===

resource "aws_ecs_task_definition" "workspace" {
  family                   = "${var.name}-workspace"
  network_mode             = "awsvpc"
  requires_compatibilities = ["EC2"]
  execution_role_arn       = aws_iam_role.execution.arn
  # Only with proxy_secret_arns; null (no role) otherwise.
  task_role_arn = one(aws_iam_role.proxy[*].arn)

  container_definitions = jsonencode([local.agent_container, local.proxy_container])

  # Only hosts built from the Berth AMI (hostd running) carry this attribute.
  placement_constraints {
    type       = "memberOf"
    expression = "attribute:berth.hostd == 1"
  }

  tags = var.tags
}

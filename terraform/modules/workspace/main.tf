# The workspace task definition: what the scheduler starts with RunTask for
# every warm slot. Two containers share the task's network namespace (awsvpc,
# one ENI-trunk branch):
#
#   workspace-agent   :9000  runs the agent's commands and files; untrusted
#                            code runs here. uid 1000.
#   credential-proxy  :8080  on loopback only; the workspace's only door out,
#                            holding and injecting upstream credentials (none
#                            reach it here yet: see proxy_container). uid 2000
#                            (hostd's egress lock lets only this uid out).
#
# There is no task role: nothing in the task can obtain AWS credentials from
# the ECS credential endpoint, because there are none to obtain. The execution
# role (which the containers never see) pulls the images and writes the logs.
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
    # No upstream credentials either, because nothing in this task could hand
    # them over the way the proxy takes them. It reads credentials only through
    # its TOML configuration (BERTH_PROXY_CONFIG, a file path): from Secrets
    # Manager with its own AWS credentials, or from a file. The task has no
    # role (and workspace ENIs cannot reach the Secrets Manager endpoint), ECS
    # delivers secrets only as environment variables, which the proxy does not
    # read credentials from, and hostd's audit refuses any mount but tmpfs on a
    # workspace container, so no init container can write a file for it. The
    # proxy therefore runs without a configuration, as in hostd's docker
    # runtime: /health and /metrics answer, everything else is refused. The
    # proxy-credentials secret stays in the secrets module for when the proxy
    # can read a secret from its environment (docs/DEPLOY.md, Known limits).
    # The admin channel (BERTH_PROXY_ADMIN_LISTEN, :8081) and the hash of the
    # claim secret it demands are per-RunTask overrides set by the scheduler.
    environment = [
      { name = "BERTH_PROXY_LISTEN", value = "127.0.0.1:8080" },
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

# === task definition ===

resource "aws_ecs_task_definition" "workspace" {
  family                   = "${var.name}-workspace"
  network_mode             = "awsvpc"
  requires_compatibilities = ["EC2"]
  execution_role_arn       = aws_iam_role.execution.arn
  # task_role_arn is left unset on purpose: workspaces get no IAM role.

  container_definitions = jsonencode([local.agent_container, local.proxy_container])

  # Only hosts built from the Berth AMI (hostd running) carry this attribute.
  placement_constraints {
    type       = "memberOf"
    expression = "attribute:berth.hostd == 1"
  }

  tags = var.tags
}

# The Berth scheduler as an ECS service on Fargate, registered in Cloud Map as
# scheduler.NAMESPACE:7700 (the backend and hostd call it there).
#
# Its task role may do exactly what placement needs and nothing else:
#   - RunTask of the workspace task definition, in this cluster only;
#   - StopTask, DescribeTasks, ListTasks, Describe/ListContainerInstances,
#     DescribeClusters, in this cluster only;
#   - TagResource only as part of RunTask (tags carry slot and template);
#   - PassRole for the workspace execution role only, and only to ECS tasks.
# The workspace task has no task role, so there is no other role to pass.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # ARN patterns of what lives in this cluster.
  cluster_tasks     = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${var.cluster_name}/*"
  cluster_instances = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:container-instance/${var.cluster_name}/*"
  # RunTask authorises against the task definition; any revision of the family.
  workspace_task_definitions = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${var.workspace_task_definition_family}:*"

  environment = [
    { name = "BERTH_LISTEN", value = "0.0.0.0:7700" },
    { name = "BERTH_RUNTIME", value = "ecs" },
    { name = "BERTH_STATE", value = var.state_url },
    { name = "BERTH_ECS_CLUSTER", value = var.cluster_name },
    { name = "BERTH_ECS_TASK_DEFINITION", value = var.workspace_task_definition_arn },
    { name = "BERTH_ECS_SUBNETS", value = join(",", var.workspace_subnet_ids) },
    { name = "BERTH_ECS_SECURITY_GROUPS", value = join(",", var.workspace_security_group_ids) },
    # A slot whose agent answers outside these ranges (the VPC) is discarded.
    { name = "BERTH_AGENT_NETWORKS", value = join(",", var.agent_networks) },
    { name = "BERTH_POOLS", value = var.pools },
    { name = "BERTH_CHECKPOINT_STORE", value = var.checkpoint_store },
    # Scale-out: when no host has room for the pools plus the headroom, tasks are
    # started with this capacity provider and no instance constraint, so ECS
    # managed scaling adds instances (managed termination protection keeps every
    # instance that runs a task).
    { name = "BERTH_ECS_CAPACITY_PROVIDER", value = var.capacity_provider_name },
    { name = "BERTH_SCALE_OUT_HEADROOM", value = tostring(var.scale_out_headroom) },
    { name = "AWS_REGION", value = local.region },
  ]

  container = {
    name                   = "scheduler"
    image                  = var.image
    essential              = true
    user                   = "65534:65534"
    readonlyRootFilesystem = true
    privileged             = false
    portMappings           = [{ containerPort = 7700, protocol = "tcp" }]
    environment            = local.environment
    secrets = [
      { name = "BERTH_API_TOKEN", valueFrom = var.api_token_secret_arn },
      { name = "BERTH_OPERATOR_TOKEN", valueFrom = var.operator_token_secret_arn },
      { name = "BERTH_HOST_TOKEN", valueFrom = var.host_token_secret_arn },
    ]
    linuxParameters = {
      capabilities = { add = [], drop = ["ALL"] }
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.scheduler.name
        "awslogs-region"        = local.region
        "awslogs-stream-prefix" = "scheduler"
      }
    }
  }
}

resource "aws_cloudwatch_log_group" "scheduler" {
  name              = "/berth/${var.name}/scheduler"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# === task role: what the scheduler itself may do ===

resource "aws_iam_role" "task" {
  name_prefix        = "${var.name}-sched-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "RunWorkspaceTasksInThisCluster"
    actions   = ["ecs:RunTask"]
    resources = [local.workspace_task_definitions]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.cluster_arn]
    }
  }

  statement {
    sid       = "StopAndDescribeTasksInThisCluster"
    actions   = ["ecs:StopTask", "ecs:DescribeTasks"]
    resources = [local.cluster_tasks]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.cluster_arn]
    }
  }

  statement {
    sid       = "TagTasksAtLaunch"
    actions   = ["ecs:TagResource"]
    resources = [local.cluster_tasks]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask"]
    }
  }

  statement {
    sid       = "ListTasksAndInstancesInThisCluster"
    actions   = ["ecs:ListTasks", "ecs:DescribeContainerInstances"]
    resources = [local.cluster_instances]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.cluster_arn]
    }
  }

  statement {
    sid       = "DescribeThisCluster"
    actions   = ["ecs:ListContainerInstances", "ecs:DescribeClusters"]
    resources = [var.cluster_arn]
  }

  statement {
    sid       = "PassOnlyTheWorkspaceExecutionRole"
    actions   = ["iam:PassRole"]
    resources = compact([var.workspace_execution_role_arn, var.workspace_task_role_arn])
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "task" {
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# The latest checkpoint of a conversation, and deleting a conversation's.
resource "aws_iam_role_policy" "task_checkpoints" {
  count  = var.checkpoint_store == "" ? 0 : 1
  role   = aws_iam_role.task.id
  policy = var.checkpoint_policy_json
}

# === execution role: what ECS does to start the scheduler ===

resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-sched-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid = "PullSchedulerImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [var.image_repository_arn]
  }
  statement {
    sid       = "WriteSchedulerLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.scheduler.arn}:*"]
  }
  statement {
    sid       = "ReadSchedulerTokens"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.api_token_secret_arn, var.operator_token_secret_arn, var.host_token_secret_arn]
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

# === service ===

resource "aws_ecs_task_definition" "scheduler" {
  family                   = "${var.name}-scheduler"
  network_mode             = "awsvpc"
  requires_compatibilities = ["FARGATE"]
  cpu                      = var.cpu
  memory                   = var.memory_mib
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode([local.container])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  tags = var.tags
}

resource "aws_service_discovery_service" "scheduler" {
  name = "scheduler"

  dns_config {
    namespace_id   = var.namespace_id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }

  health_check_custom_config {
    failure_threshold = 1
  }

  tags = var.tags
}

resource "aws_ecs_service" "scheduler" {
  name                   = "scheduler"
  cluster                = var.cluster_arn
  task_definition        = aws_ecs_task_definition.scheduler.arn
  desired_count          = var.desired_count
  enable_execute_command = false
  propagate_tags         = "SERVICE"

  capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [var.security_group_id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.scheduler.arn
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  tags = var.tags
}

# The ECS cluster and the fleet of hosts it places workspaces on.
#
# Hosts are EC2 instances from the Berth AMI (ami/), launched by an Auto
# Scaling group that an ECS capacity provider scales (managed scaling) and
# drains (managed draining), with a warm pool of stopped, already initialised
# instances for fast scale-out. ENI trunking is switched on for the account,
# without which an instance holds only 2-3 awsvpc tasks.
#
# The scheduler and the backend run on Fargate in the same cluster: the hosts
# then carry workspace tasks only, so every branch ENI on a host is a
# workspace (the scheduler's capacity arithmetic relies on it) and no task
# with an IAM role ever shares a host with untrusted code.

data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  region    = data.aws_region.current.name
  partition = data.aws_partition.current.partition
  ami_id    = var.ami_id != "" ? var.ami_id : data.aws_ami.berth_host[0].id
}

# The newest Berth host image built by ami/ (name prefix berth-host-), unless
# an id is pinned.
data "aws_ami" "berth_host" {
  count       = var.ami_id == "" ? 1 : 0
  owners      = var.ami_owners
  most_recent = true
  filter {
    name   = "name"
    values = ["berth-host-*-${var.architecture}-*"]
  }
  filter {
    name   = "tag:berth:component"
    values = ["host-ami"]
  }
}

# awsvpcTrunking for every principal of the account that has no explicit
# setting, including the hosts' instance role: each instance then gets a trunk
# ENI and up to 10/20/40/60 branch ENIs (large/xlarge/2xlarge/4xlarge).
resource "aws_ecs_account_setting_default" "trunking" {
  count = var.manage_account_settings ? 1 : 0
  name  = "awsvpcTrunking"
  value = "enabled"
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = var.tags
}

# Private DNS for the scheduler (scheduler.NAMESPACE), used by hostd and the backend.
resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = var.namespace
  description = "Berth ${var.name} service discovery"
  vpc         = var.vpc_id
  tags        = var.tags
}

# === instance role ===

data "aws_iam_policy_document" "instance_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name_prefix        = "${var.name}-host-"
  assume_role_policy = data.aws_iam_policy_document.instance_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "instance_ecs" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

# Shell access for on-call through Session Manager; no SSH port is open.
resource "aws_iam_role_policy_attachment" "instance_ssm" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "instance_host_token" {
  statement {
    sid       = "ReadHostToken"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.host_token_secret_arn]
  }
  statement {
    sid       = "DecryptHostToken"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "instance_host_token" {
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.instance_host_token.json
}

# hostd carries checkpoints between workspaces' agents and the bucket (the
# workspaces themselves cannot reach the instance role: hostd blocks IMDS).
resource "aws_iam_role_policy" "instance_checkpoints" {
  count  = var.checkpoint_store == "" ? 0 : 1
  role   = aws_iam_role.instance.id
  policy = var.checkpoint_policy_json
}

resource "aws_iam_instance_profile" "instance" {
  name_prefix = "${var.name}-host-"
  role        = aws_iam_role.instance.name
  tags        = var.tags
}

# === launch template ===

resource "aws_launch_template" "host" {
  name_prefix   = "${var.name}-host-"
  image_id      = local.ami_id
  instance_type = var.instance_type
  ebs_optimized = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }

  vpc_security_group_ids = [var.hosts_security_group_id]

  # IMDSv2 only, one hop: a container behind a bridge or in its own network
  # namespace is a hop further away and gets no answer. (hostd and the ECS
  # agent use the host network and are not affected.)
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  # The boot script runs on every boot (user-data.mime.tftpl), see the script.
  user_data = base64encode(templatefile("${path.module}/user-data.mime.tftpl", {
    script = templatefile("${path.module}/user-data.sh.tftpl", {
      cluster_name           = aws_ecs_cluster.this.name
      scheduler_url          = var.scheduler_url
      region                 = local.region
      host_token_secret_arn  = var.host_token_secret_arn
      proxy_task_credentials = var.proxy_task_credentials ? "true" : "false"
      checkpoint_store       = var.checkpoint_store
    })
  }))

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-host", "berth:role" = "host" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-host" })
  }

  tags = var.tags
}

# === Auto Scaling group ===

resource "aws_autoscaling_group" "hosts" {
  name_prefix         = "${var.name}-hosts-"
  vpc_zone_identifier = var.subnet_ids
  min_size            = var.min_hosts
  max_size            = var.max_hosts
  # Managed termination protection needs every instance protected; ECS lifts
  # the protection from hosts it has drained.
  protect_from_scale_in     = true
  health_check_type         = "EC2"
  health_check_grace_period = 120
  default_instance_warmup   = 120

  launch_template {
    id      = aws_launch_template.host.id
    version = aws_launch_template.host.latest_version
  }

  # A new AMI or launch template version rolls through the fleet; managed
  # draining moves workspaces off each host before it goes.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 90
      instance_warmup        = 120
    }
  }

  # Pre-initialised, stopped instances: scale-out skips the boot and first-run
  # work (the ECS agent registers only once an instance leaves the pool, see
  # ECS_WARM_POOLS_CHECK in the AMI).
  warm_pool {
    pool_state                  = "Stopped"
    min_size                    = var.warm_pool_min_size
    max_group_prepared_capacity = var.warm_pool_max_prepared
  }

  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = var.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # The capacity provider owns the desired capacity.
    ignore_changes = [desired_capacity]
  }
}

resource "aws_ecs_capacity_provider" "hosts" {
  name = "${var.name}-hosts"

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.hosts.arn
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"

    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = var.target_capacity
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = var.max_scaling_step
      instance_warmup_period    = 120
    }
  }

  tags = var.tags
}

# Workspaces go to the hosts by default; services opt into Fargate.
resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = [aws_ecs_capacity_provider.hosts.name, "FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = aws_ecs_capacity_provider.hosts.name
    weight            = 1
    base              = 0
  }
}

# Who may talk to whom, in one place. Every rule is a separate resource so that
# security groups can name each other without cycles, and so that the checks in
# tests/infra can read the whole policy from this file:
#
#   internet ─443─▶ alb ─8000─▶ backend ─7700─▶ scheduler
#   backend, scheduler, hosts ─9000─▶ workspace        (the agent)
#   hosts ─8081─▶ workspace                           (hostd pushes a claim's policy
#                                                      to the proxy's admin channel)
#   scheduler, operators ─7701─▶ hosts                (hostd status)
#   hosts ─7700─▶ scheduler                           (hostd reports)
#   scheduler, backend ─6379─▶ redis;  backend ─5432─▶ postgres
#   workspace ─443─▶ anywhere, and nothing else       (the proxy's upstreams)
#
# The workspace group is what RunTask attaches to each workspace ENI. Its only
# egress is HTTPS; inside the task, hostd further limits that to the proxy's
# uid, and the DNS Firewall limits which names resolve. The interface VPC
# endpoints are deliberately not reachable from workspaces.

locals {
  anywhere = "0.0.0.0/0"
}

# === groups ===

resource "aws_security_group" "alb" {
  #checkov:skip=CKV2_AWS_5:attached outside this module (see the module that takes security_groups.alb_id); checkov does not follow module outputs
  name        = "${var.name}-alb"
  description = "Public ALB in front of the backend"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-alb" })
}

resource "aws_security_group" "backend" {
  #checkov:skip=CKV2_AWS_5:attached outside this module (see the module that takes security_groups.backend_id); checkov does not follow module outputs
  name        = "${var.name}-backend"
  description = "Backend service tasks"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-backend" })
}

resource "aws_security_group" "scheduler" {
  #checkov:skip=CKV2_AWS_5:attached outside this module (see the module that takes security_groups.scheduler_id); checkov does not follow module outputs
  name        = "${var.name}-scheduler"
  description = "Berth scheduler tasks"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-scheduler" })
}

resource "aws_security_group" "workspace" {
  #checkov:skip=CKV2_AWS_5:attached outside this module (to each workspace ENI by the scheduler's RunTask); checkov does not follow module outputs
  name        = "${var.name}-workspace"
  description = "Workspace task ENIs: agent 9000 in from the platform, HTTPS out only"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-workspace" })
}

resource "aws_security_group" "hosts" {
  #checkov:skip=CKV2_AWS_5:attached outside this module (see the module that takes security_groups.hosts_id); checkov does not follow module outputs
  name        = "${var.name}-hosts"
  description = "Container instances (primary ENI): hostd, ECS agent"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-hosts" })
}

resource "aws_security_group" "redis" {
  #checkov:skip=CKV2_AWS_5:attached outside this module (see the module that takes security_groups.redis_id); checkov does not follow module outputs
  name        = "${var.name}-redis"
  description = "ElastiCache Redis holding the scheduler state"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-redis" })
}

resource "aws_security_group" "postgres" {
  #checkov:skip=CKV2_AWS_5:attached outside this module (see the module that takes security_groups.postgres_id); checkov does not follow module outputs
  name        = "${var.name}-postgres"
  description = "RDS PostgreSQL of the backend"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-postgres" })
}

# === alb ===

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = toset(var.alb_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from clients"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_backend" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the backend tasks"
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
  referenced_security_group_id = aws_security_group.backend.id
}

# === backend ===

resource "aws_vpc_security_group_ingress_rule" "backend_from_alb" {
  security_group_id            = aws_security_group.backend.id
  description                  = "From the ALB"
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_egress_rule" "backend_to_workspace" {
  security_group_id            = aws_security_group.backend.id
  description                  = "To workspace agents"
  ip_protocol                  = "tcp"
  from_port                    = 9000
  to_port                      = 9000
  referenced_security_group_id = aws_security_group.workspace.id
}

resource "aws_vpc_security_group_egress_rule" "backend_to_scheduler" {
  security_group_id            = aws_security_group.backend.id
  description                  = "To the scheduler API"
  ip_protocol                  = "tcp"
  from_port                    = 7700
  to_port                      = 7700
  referenced_security_group_id = aws_security_group.scheduler.id
}

resource "aws_vpc_security_group_egress_rule" "backend_to_postgres" {
  security_group_id            = aws_security_group.backend.id
  description                  = "To PostgreSQL"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.postgres.id
}

resource "aws_vpc_security_group_egress_rule" "backend_to_redis" {
  security_group_id            = aws_security_group.backend.id
  description                  = "To Redis"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.redis.id
}

resource "aws_vpc_security_group_egress_rule" "backend_https" {
  security_group_id = aws_security_group.backend.id
  description       = "HTTPS to AWS APIs and the backend's upstreams"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = local.anywhere
}

# === scheduler ===

resource "aws_vpc_security_group_ingress_rule" "scheduler_from_backend" {
  security_group_id            = aws_security_group.scheduler.id
  description                  = "API calls from the backend"
  ip_protocol                  = "tcp"
  from_port                    = 7700
  to_port                      = 7700
  referenced_security_group_id = aws_security_group.backend.id
}

resource "aws_vpc_security_group_ingress_rule" "scheduler_from_hosts" {
  security_group_id            = aws_security_group.scheduler.id
  description                  = "Reports from hostd"
  ip_protocol                  = "tcp"
  from_port                    = 7700
  to_port                      = 7700
  referenced_security_group_id = aws_security_group.hosts.id
}

resource "aws_vpc_security_group_egress_rule" "scheduler_to_workspace" {
  security_group_id            = aws_security_group.scheduler.id
  description                  = "To workspace agents (claim, health)"
  ip_protocol                  = "tcp"
  from_port                    = 9000
  to_port                      = 9000
  referenced_security_group_id = aws_security_group.workspace.id
}

resource "aws_vpc_security_group_egress_rule" "scheduler_to_hosts" {
  security_group_id            = aws_security_group.scheduler.id
  description                  = "To hostd"
  ip_protocol                  = "tcp"
  from_port                    = 7701
  to_port                      = 7701
  referenced_security_group_id = aws_security_group.hosts.id
}

resource "aws_vpc_security_group_egress_rule" "scheduler_to_redis" {
  security_group_id            = aws_security_group.scheduler.id
  description                  = "To Redis (state)"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.redis.id
}

resource "aws_vpc_security_group_egress_rule" "scheduler_https" {
  security_group_id = aws_security_group.scheduler.id
  description       = "HTTPS to the ECS API and other AWS endpoints"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = local.anywhere
}

# === workspace ===

resource "aws_vpc_security_group_ingress_rule" "workspace_from_backend" {
  security_group_id            = aws_security_group.workspace.id
  description                  = "Agent API from the backend"
  ip_protocol                  = "tcp"
  from_port                    = 9000
  to_port                      = 9000
  referenced_security_group_id = aws_security_group.backend.id
}

resource "aws_vpc_security_group_ingress_rule" "workspace_from_scheduler" {
  security_group_id            = aws_security_group.workspace.id
  description                  = "Agent API from the scheduler"
  ip_protocol                  = "tcp"
  from_port                    = 9000
  to_port                      = 9000
  referenced_security_group_id = aws_security_group.scheduler.id
}

resource "aws_vpc_security_group_ingress_rule" "workspace_from_hosts" {
  security_group_id            = aws_security_group.workspace.id
  description                  = "Agent health checks from hostd"
  ip_protocol                  = "tcp"
  from_port                    = 9000
  to_port                      = 9000
  referenced_security_group_id = aws_security_group.hosts.id
}

resource "aws_vpc_security_group_ingress_rule" "workspace_proxy_admin_from_hosts" {
  security_group_id            = aws_security_group.workspace.id
  description                  = "Proxy admin channel from hostd (claim policy, egress changes)"
  ip_protocol                  = "tcp"
  from_port                    = 8081
  to_port                      = 8081
  referenced_security_group_id = aws_security_group.hosts.id
}

# The only way out of a workspace task: HTTPS, for the credential proxy.
resource "aws_vpc_security_group_egress_rule" "workspace_https" {
  security_group_id = aws_security_group.workspace.id
  description       = "HTTPS to Bedrock and allowlisted MCP servers (via the credential proxy)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = local.anywhere
}

# === hosts ===

resource "aws_vpc_security_group_ingress_rule" "hosts_from_scheduler" {
  security_group_id            = aws_security_group.hosts.id
  description                  = "hostd API from the scheduler"
  ip_protocol                  = "tcp"
  from_port                    = 7701
  to_port                      = 7701
  referenced_security_group_id = aws_security_group.scheduler.id
}

resource "aws_vpc_security_group_ingress_rule" "hosts_from_operators" {
  for_each          = toset(var.operator_cidrs)
  security_group_id = aws_security_group.hosts.id
  description       = "hostd status page for on-call"
  ip_protocol       = "tcp"
  from_port         = 7701
  to_port           = 7701
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "hosts_https" {
  security_group_id = aws_security_group.hosts.id
  description       = "HTTPS to ECS, ECR, S3, Secrets Manager, CloudWatch"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = local.anywhere
}

resource "aws_vpc_security_group_egress_rule" "hosts_to_scheduler" {
  security_group_id            = aws_security_group.hosts.id
  description                  = "hostd reports to the scheduler"
  ip_protocol                  = "tcp"
  from_port                    = 7700
  to_port                      = 7700
  referenced_security_group_id = aws_security_group.scheduler.id
}

resource "aws_vpc_security_group_egress_rule" "hosts_to_workspace_proxy_admin" {
  security_group_id            = aws_security_group.hosts.id
  description                  = "hostd pushes claim policies to workspace proxies"
  ip_protocol                  = "tcp"
  from_port                    = 8081
  to_port                      = 8081
  referenced_security_group_id = aws_security_group.workspace.id
}

resource "aws_vpc_security_group_egress_rule" "hosts_to_workspace" {
  security_group_id            = aws_security_group.hosts.id
  description                  = "hostd health checks of workspace agents"
  ip_protocol                  = "tcp"
  from_port                    = 9000
  to_port                      = 9000
  referenced_security_group_id = aws_security_group.workspace.id
}

# === data stores ===

resource "aws_vpc_security_group_ingress_rule" "redis_from_scheduler" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Scheduler state"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.scheduler.id
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_backend" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Backend sessions"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.backend.id
}

resource "aws_vpc_security_group_ingress_rule" "postgres_from_backend" {
  security_group_id            = aws_security_group.postgres.id
  description                  = "Backend database"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.backend.id
}

# === VPC endpoints (the group lives in the network module) ===

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_platform" {
  for_each = merge(
    {
      backend   = aws_security_group.backend.id
      scheduler = aws_security_group.scheduler.id
      hosts     = aws_security_group.hosts.id
    },
    # Proxies reading claims' secrets (Secrets Manager) with the task role.
    var.workspaces_reach_endpoints ? { workspace = aws_security_group.workspace.id } : {},
  )
  security_group_id            = var.endpoints_security_group_id
  description                  = "HTTPS to VPC endpoints from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = each.value
}

# One Berth environment, composed from the modules beside this one. The
# environments (terraform/environments/*) call this with their sizes; nothing
# else differs between staging and production.
#
# How the settings flow (docs/DEPLOY.md has the whole picture):
#   network, security_groups, ecs_cluster, workspace, data
#        └──▶ scheduler container environment (BERTH_*; output scheduler_environment)
#   ecs_cluster launch template user-data
#        └──▶ /etc/ecs/ecs.config ECS_CLUSTER, /etc/berth/hostd.env
#             BERTH_SCHEDULER_URL + BERTH_ECS_CLUSTER, /etc/berth/host-token

locals {
  name          = "berth-${var.environment}"
  namespace     = "${local.name}.internal"
  scheduler_url = "http://scheduler.${local.namespace}:7700"
  tags          = merge(var.tags, { "berth:environment" = var.environment })

  repository = {
    workspace = "berth-workspace"
    proxy     = "berth-credential-proxy"
    scheduler = "berth-scheduler"
  }

  # What the hosts, the scheduler and the backend must resolve through the
  # DNS Firewall, besides the operator's allow list.
  platform_domains = [
    "amazonaws.com.",
    "*.amazonaws.com.",
    "*.compute.internal.",
    "*.ec2.internal.",
    "${local.namespace}.",
    "*.${local.namespace}.",
  ]
}

module "kms" {
  source = "../kms"
  name   = local.name
  tags   = local.tags
}

module "network" {
  source             = "../network"
  name               = local.name
  cidr_block         = var.vpc_cidr_block
  availability_zones = var.availability_zones
  single_nat_gateway = !var.multi_az
  kms_key_arn        = module.kms.key_arn
  log_retention_days = var.log_retention_days
  tags               = local.tags
}

module "dns_firewall" {
  source             = "../dns_firewall"
  name               = local.name
  vpc_id             = module.network.vpc_id
  platform_domains   = local.platform_domains
  allowed_domains    = var.allowed_domains
  kms_key_arn        = module.kms.key_arn
  log_retention_days = var.log_retention_days
  tags               = local.tags
}

module "security_groups" {
  source                      = "../security_groups"
  name                        = local.name
  vpc_id                      = module.network.vpc_id
  endpoints_security_group_id = module.network.endpoints_security_group_id
  workspaces_reach_endpoints  = length(var.proxy_secret_arns) > 0
  alb_ingress_cidrs           = var.alb_ingress_cidrs
  operator_cidrs              = var.operator_cidrs
  tags                        = local.tags
}

module "ecr" {
  count       = var.create_ecr_repositories ? 1 : 0
  source      = "../ecr"
  kms_key_arn = module.kms.key_arn
  tags        = local.tags
}

data "aws_ecr_repository" "existing" {
  for_each = var.create_ecr_repositories ? {} : local.repository
  name     = each.value
}

locals {
  repository_urls = var.create_ecr_repositories ? module.ecr[0].repository_urls : { for k, r in data.aws_ecr_repository.existing : r.name => r.repository_url }
  repository_arns = var.create_ecr_repositories ? module.ecr[0].repository_arns : { for k, r in data.aws_ecr_repository.existing : r.name => r.arn }
}

module "secrets" {
  source      = "../secrets"
  name        = local.name
  kms_key_arn = module.kms.key_arn
  tags        = local.tags
}

module "data" {
  source                     = "../data"
  name                       = local.name
  subnet_ids                 = module.network.private_subnet_ids
  multi_az                   = var.multi_az
  kms_key_arn                = module.kms.key_arn
  redis_security_group_id    = module.security_groups.redis_id
  postgres_security_group_id = module.security_groups.postgres_id
  redis_node_type            = var.redis_node_type
  postgres_instance_class    = var.postgres_instance_class
  deletion_protection        = var.deletion_protection
  tags                       = local.tags
}

module "ecs_cluster" {
  source                  = "../ecs_cluster"
  name                    = local.name
  vpc_id                  = module.network.vpc_id
  subnet_ids              = module.network.private_subnet_ids
  namespace               = local.namespace
  scheduler_url           = local.scheduler_url
  hosts_security_group_id = module.security_groups.hosts_id
  host_token_secret_arn   = module.secrets.host_token_arn
  proxy_task_credentials  = length(var.proxy_secret_arns) > 0
  checkpoint_store        = module.checkpoints.store_url
  checkpoint_policy_json  = module.checkpoints.hosts_policy_json
  kms_key_arn             = module.kms.key_arn
  ami_id                  = var.host_ami_id
  manage_account_settings = var.manage_account_settings
  instance_type           = var.host_instance_type
  min_hosts               = var.min_hosts
  max_hosts               = var.max_hosts
  warm_pool_min_size      = var.host_warm_pool_size
  tags                    = local.tags
}

module "workspace" {
  source          = "../workspace"
  name            = local.name
  workspace_image = "${local.repository_urls[local.repository.workspace]}:${var.image_tag}"
  proxy_image     = "${local.repository_urls[local.repository.proxy]}:${var.image_tag}"
  image_repository_arns = [
    local.repository_arns[local.repository.workspace],
    local.repository_arns[local.repository.proxy],
  ]
  kms_key_arn        = module.kms.key_arn
  proxy_secret_arns  = var.proxy_secret_arns
  agent_memory_mib   = var.workspace_memory_mib
  log_retention_days = var.log_retention_days
  tags               = local.tags
}

module "scheduler" {
  source                           = "../scheduler"
  name                             = local.name
  image                            = "${local.repository_urls[local.repository.scheduler]}:${var.image_tag}"
  image_repository_arn             = local.repository_arns[local.repository.scheduler]
  cluster_name                     = module.ecs_cluster.cluster_name
  cluster_arn                      = module.ecs_cluster.cluster_arn
  namespace_id                     = module.ecs_cluster.namespace_id
  subnet_ids                       = module.network.private_subnet_ids
  security_group_id                = module.security_groups.scheduler_id
  state_url                        = module.data.redis_url
  workspace_task_definition_arn    = module.workspace.task_definition_arn
  workspace_task_definition_family = module.workspace.task_definition_family
  workspace_execution_role_arn     = module.workspace.execution_role_arn
  workspace_task_role_arn          = module.workspace.task_role_arn
  workspace_subnet_ids             = module.network.private_subnet_ids
  workspace_security_group_ids     = [module.security_groups.workspace_id]
  agent_networks                   = [module.network.vpc_cidr_block]
  capacity_provider_name           = module.ecs_cluster.capacity_provider_name
  scale_out_headroom               = var.scale_out_headroom
  pools                            = var.pools
  api_token_secret_arn             = module.secrets.api_token_arn
  operator_token_secret_arn        = module.secrets.operator_token_arn
  host_token_secret_arn            = module.secrets.host_token_arn
  checkpoint_store                 = module.checkpoints.store_url
  checkpoint_policy_json           = module.checkpoints.scheduler_policy_json
  kms_key_arn                      = module.kms.key_arn
  desired_count                    = var.scheduler_count
  log_retention_days               = var.log_retention_days
  tags                             = local.tags
}

module "checkpoints" {
  source            = "../checkpoints"
  name              = local.name
  kms_key_arn       = module.kms.key_arn
  access_log_bucket = module.backend.log_bucket
  retention_days    = var.checkpoint_retention_days
  tags              = local.tags
}

module "backend" {
  source                    = "../backend"
  name                      = local.name
  vpc_id                    = module.network.vpc_id
  public_subnet_ids         = module.network.public_subnet_ids
  private_subnet_ids        = module.network.private_subnet_ids
  alb_security_group_id     = module.security_groups.alb_id
  backend_security_group_id = module.security_groups.backend_id
  certificate_arn           = var.certificate_arn
  cluster_name              = module.ecs_cluster.cluster_name
  cluster_arn               = module.ecs_cluster.cluster_arn
  image                     = var.backend_image
  image_repository_arns     = var.backend_repository_arns
  environment               = var.backend_environment
  scheduler_url             = local.scheduler_url
  api_token_secret_arn      = module.secrets.api_token_arn
  database_host             = module.data.postgres_endpoint
  database_secret_arn       = module.data.postgres_master_secret_arn
  redis_url                 = module.data.redis_url
  kms_key_arn               = module.kms.key_arn
  desired_count             = var.backend_count
  max_count                 = var.backend_max_count
  deletion_protection       = var.deletion_protection
  log_retention_days        = var.log_retention_days
  tags                      = local.tags
}

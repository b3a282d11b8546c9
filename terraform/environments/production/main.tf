# Berth production: Multi-AZ data stores, a NAT gateway per AZ, deletion
# protection, and a fleet that scales from 2 to 20 hosts (up to ~280
# workspaces at 1 GiB, more with smaller limits or larger instances; see the
# sizing table in docs/DEPLOY.md).

module "berth" {
  source = "../../modules/platform"

  environment         = "production"
  availability_zones  = var.availability_zones
  vpc_cidr_block      = "10.50.0.0/16"
  multi_az            = true
  deletion_protection = true

  image_tag               = var.image_tag
  create_ecr_repositories = var.create_ecr_repositories
  manage_account_settings = var.manage_account_settings
  host_ami_id             = var.host_ami_id

  host_instance_type  = var.host_instance_type
  min_hosts           = var.min_hosts
  max_hosts           = var.max_hosts
  host_warm_pool_size = 2
  pools               = var.pools
  proxy_secret_arns   = var.proxy_secret_arns
  scheduler_count     = 3

  backend_image           = var.backend_image
  backend_repository_arns = var.backend_repository_arns
  backend_environment     = var.backend_environment
  backend_count           = 2
  backend_max_count       = 8
  certificate_arn         = var.certificate_arn

  allowed_domains   = var.allowed_domains
  alb_ingress_cidrs = var.alb_ingress_cidrs
  operator_cidrs    = var.operator_cidrs

  redis_node_type         = "cache.m7g.large"
  postgres_instance_class = "db.m7g.large"

  tags = var.tags
}

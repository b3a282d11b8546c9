# Berth staging: the production shape at the smallest size that still shows
# every moving part (ENI trunking, managed scaling, a warm pool, the DNS
# Firewall). Single-AZ data stores and one NAT gateway keep it near the seed
# study's ~$390/month at idle; see docs/DEPLOY.md.

module "berth" {
  source = "../../modules/platform"

  environment         = "staging"
  availability_zones  = var.availability_zones
  vpc_cidr_block      = "10.40.0.0/16"
  multi_az            = false
  deletion_protection = false

  image_tag               = var.image_tag
  create_ecr_repositories = var.create_ecr_repositories
  manage_account_settings = var.manage_account_settings
  host_ami_id             = var.host_ami_id

  # c6i.2xlarge: 40 branch ENIs with trunking; 16 GiB holds ~14 workspaces
  # at a 1 GiB limit (512 MiB reserved), so memory binds first.
  host_instance_type  = "c6i.2xlarge"
  min_hosts           = 1
  max_hosts           = 4
  host_warm_pool_size = 1
  pools               = var.pools
  proxy_secret_arns   = var.proxy_secret_arns
  scheduler_count     = 2

  backend_image           = var.backend_image
  backend_repository_arns = var.backend_repository_arns
  backend_environment     = var.backend_environment
  backend_count           = 1
  backend_max_count       = 2
  certificate_arn         = var.certificate_arn

  allowed_domains   = var.allowed_domains
  alb_ingress_cidrs = var.alb_ingress_cidrs
  operator_cidrs    = var.operator_cidrs

  redis_node_type         = "cache.t4g.small"
  postgres_instance_class = "db.t4g.medium"

  tags = var.tags
}

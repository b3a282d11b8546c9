output "scheduler_environment" {
  description = "Non-secret settings of the scheduler container, exactly as set (BERTH_LISTEN, BERTH_RUNTIME, BERTH_STATE, BERTH_ECS_*, BERTH_AGENT_NETWORKS, BERTH_POOLS, AWS_REGION)."
  value       = module.berth.scheduler_environment
}

output "scheduler_secrets" {
  description = "Secrets injected into the scheduler container: variable name => Secrets Manager ARN."
  value       = module.berth.scheduler_secrets
}

output "scheduler_url" {
  description = "Where the backend and hostd reach the scheduler (Cloud Map)."
  value       = module.berth.scheduler_url
}

output "hostd_environment" {
  description = "What the launch template's user-data adds to /etc/berth/hostd.env at boot from Terraform (it also sets BERTH_HOSTD_ADVERTISE_URL from the instance's own address; the AMI holds the rest)."
  value       = module.berth.hostd_environment
}

output "host_token_secret_arn" {
  description = "Secret written to /etc/berth/host-token on each host at boot."
  value       = module.berth.host_token_secret_arn
}

output "proxy_credentials_secret_arn" {
  description = "Secret meant for the credential proxy's upstream credentials; not yet delivered to the proxy (docs/DEPLOY.md, Known limits)."
  value       = module.berth.proxy_credentials_secret_arn
}

output "ecr_repository_urls" {
  description = "Where CI pushes the images."
  value       = module.berth.ecr_repository_urls
}

output "cluster_name" {
  description = "ECS cluster."
  value       = module.berth.cluster_name
}

output "autoscaling_group_name" {
  description = "Host Auto Scaling group (instance refresh after a new AMI)."
  value       = module.berth.autoscaling_group_name
}

output "workspace_task_definition_arn" {
  description = "Workspace task definition with revision."
  value       = module.berth.workspace_task_definition_arn
}

output "alb_dns_name" {
  description = "ALB name to point the public hostname at."
  value       = module.berth.alb_dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the ALB, for an alias record."
  value       = module.berth.alb_zone_id
}

output "redis_url" {
  description = "BERTH_STATE."
  value       = module.berth.redis_url
}

output "postgres_endpoint" {
  description = "Backend database address."
  value       = module.berth.postgres_endpoint
}

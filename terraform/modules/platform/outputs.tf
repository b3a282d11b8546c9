output "scheduler_environment" {
  description = "Non-secret settings of the scheduler container, exactly as set (BERTH_LISTEN, BERTH_RUNTIME, BERTH_STATE, BERTH_ECS_*, BERTH_AGENT_NETWORKS, BERTH_POOLS, BERTH_SCALE_OUT_HEADROOM, BERTH_CHECKPOINT_STORE, AWS_REGION)."
  value       = module.scheduler.environment
}

output "scheduler_secrets" {
  description = "Secrets injected into the scheduler container: variable name => Secrets Manager ARN."
  value = {
    BERTH_API_TOKEN      = module.secrets.api_token_arn
    BERTH_OPERATOR_TOKEN = module.secrets.operator_token_arn
    BERTH_HOST_TOKEN     = module.secrets.host_token_arn
  }
}

output "scheduler_url" {
  description = "Where the backend and hostd reach the scheduler (Cloud Map)."
  value       = local.scheduler_url
}

output "hostd_environment" {
  description = "What the launch template's user-data adds to /etc/berth/hostd.env at boot from Terraform (it also sets BERTH_HOSTD_ADVERTISE_URL from the instance's own address; the AMI holds the rest)."
  value = {
    BERTH_SCHEDULER_URL = local.scheduler_url
    BERTH_ECS_CLUSTER   = module.ecs_cluster.cluster_name
    # The credential endpoint opens to the proxy's uid only when proxies have a role.
    BERTH_PROXY_TASK_CREDENTIALS = length(var.proxy_secret_arns) > 0 ? "true" : "false"
    BERTH_CHECKPOINT_STORE       = module.checkpoints.store_url
  }
}

output "host_token_secret_arn" {
  description = "Secret written to /etc/berth/host-token on each host at boot."
  value       = module.secrets.host_token_arn
}

output "proxy_credentials_secret_arn" {
  description = "Secret meant for the credential proxy's upstream credentials; not yet delivered to the proxy (docs/DEPLOY.md, Known limits)."
  value       = module.secrets.proxy_credentials_arn
}

output "ecr_repository_urls" {
  description = "Where CI pushes the images."
  value       = local.repository_urls
}

output "cluster_name" {
  description = "ECS cluster."
  value       = module.ecs_cluster.cluster_name
}

output "autoscaling_group_name" {
  description = "Host Auto Scaling group (instance refresh after a new AMI)."
  value       = module.ecs_cluster.autoscaling_group_name
}

output "workspace_task_definition_arn" {
  description = "Workspace task definition with revision."
  value       = module.workspace.task_definition_arn
}

output "alb_dns_name" {
  description = "ALB name to point the public hostname at."
  value       = module.backend.alb_dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the ALB, for an alias record."
  value       = module.backend.alb_zone_id
}

output "redis_url" {
  description = "BERTH_STATE."
  value       = module.data.redis_url
}

output "postgres_endpoint" {
  description = "Backend database address."
  value       = module.data.postgres_endpoint
}

output "checkpoint_bucket" {
  description = "The bucket of conversations' /workspace checkpoints."
  value       = module.checkpoints.bucket
}

output "alb_id" {
  description = "Security group of the ALB."
  value       = aws_security_group.alb.id
}

output "backend_id" {
  description = "Security group of the backend tasks."
  value       = aws_security_group.backend.id
}

output "scheduler_id" {
  description = "Security group of the scheduler tasks."
  value       = aws_security_group.scheduler.id
}

output "workspace_id" {
  description = "Security group attached to every workspace task (BERTH_ECS_SECURITY_GROUPS)."
  value       = aws_security_group.workspace.id
}

output "hosts_id" {
  description = "Security group of the container instances."
  value       = aws_security_group.hosts.id
}

output "redis_id" {
  description = "Security group of ElastiCache Redis."
  value       = aws_security_group.redis.id
}

output "postgres_id" {
  description = "Security group of RDS PostgreSQL."
  value       = aws_security_group.postgres.id
}

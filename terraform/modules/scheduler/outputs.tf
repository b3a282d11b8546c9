output "environment" {
  description = "The scheduler's non-secret settings, as set on its container."
  value       = { for e in local.environment : e.name => e.value }
}

output "task_role_arn" {
  description = "The scheduler's task role."
  value       = aws_iam_role.task.arn
}

output "service_name" {
  description = "ECS service name."
  value       = aws_ecs_service.scheduler.name
}

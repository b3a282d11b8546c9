output "task_definition_arn" {
  description = "Workspace task definition, with revision (BERTH_ECS_TASK_DEFINITION)."
  value       = aws_ecs_task_definition.workspace.arn
}

output "task_definition_family" {
  description = "Workspace task definition family."
  value       = aws_ecs_task_definition.workspace.family
}

output "execution_role_arn" {
  description = "Execution role of workspace tasks; the only role the scheduler may pass."
  value       = aws_iam_role.execution.arn
}

output "task_role_arn" {
  description = "The proxies' task role (null without proxy_secret_arns); the scheduler passes it with RunTask."
  value       = one(aws_iam_role.proxy[*].arn)
}

output "proxy_task_credentials" {
  description = "Whether proxies read secrets with the task role (hostd must then open the credential endpoint to the proxy's uid)."
  value       = length(var.proxy_secret_arns) > 0
}

output "log_group_name" {
  description = "Log group of workspace containers."
  value       = aws_cloudwatch_log_group.workspace.name
}

# Services name capacity providers (FARGATE); they may only be created once the
# providers are associated with the cluster, hence the depends_on.
output "cluster_name" {
  description = "ECS cluster name (BERTH_ECS_CLUSTER)."
  value       = aws_ecs_cluster.this.name
  depends_on  = [aws_ecs_cluster_capacity_providers.this]
}

output "cluster_arn" {
  description = "ECS cluster ARN."
  value       = aws_ecs_cluster.this.arn
  depends_on  = [aws_ecs_cluster_capacity_providers.this]
}

output "capacity_provider_name" {
  description = "Capacity provider of the host Auto Scaling group."
  value       = aws_ecs_capacity_provider.hosts.name
}

output "autoscaling_group_name" {
  description = "Auto Scaling group of the hosts."
  value       = aws_autoscaling_group.hosts.name
}

output "launch_template_id" {
  description = "Launch template of the hosts."
  value       = aws_launch_template.host.id
}

output "namespace_id" {
  description = "Cloud Map namespace id."
  value       = aws_service_discovery_private_dns_namespace.this.id
}

output "instance_role_name" {
  description = "IAM role of the hosts."
  value       = aws_iam_role.instance.name
}

output "rule_group_id" {
  description = "Id of the DNS Firewall rule group."
  value       = aws_route53_resolver_firewall_rule_group.this.id
}

output "association_id" {
  description = "Id of the rule group's association with the VPC."
  value       = aws_route53_resolver_firewall_rule_group_association.vpc.id
}

output "query_log_group_name" {
  description = "CloudWatch log group of the resolver query log."
  value       = aws_cloudwatch_log_group.queries.name
}

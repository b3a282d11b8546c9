# Route 53 Resolver DNS Firewall for the whole VPC: names on the allow list
# resolve, every other name gets NXDOMAIN. Security groups do not filter
# queries to the VPC resolver, so without this a workspace could tunnel data
# out through DNS lookups of a name server it controls.
#
# The allow list is per VPC, not per task: it holds what the workspaces'
# credential proxy reaches (Bedrock, the configured MCP servers) and what the
# platform itself needs (AWS service endpoints, the Cloud Map namespace, EC2
# internal names). Names under amazonaws.com are answered by AWS's own servers,
# so allowing them does not open a channel to a third-party name server.
#
# Queries are logged so that a blocked name an operator forgot shows up.

locals {
  allowed = distinct(concat(var.platform_domains, var.allowed_domains))
}

resource "aws_route53_resolver_firewall_domain_list" "allowed" {
  name    = "${var.name}-allowed"
  domains = local.allowed
  tags    = var.tags
}

resource "aws_route53_resolver_firewall_domain_list" "everything" {
  name    = "${var.name}-everything"
  domains = ["*."]
  tags    = var.tags
}

resource "aws_route53_resolver_firewall_rule_group" "this" {
  name = var.name
  tags = var.tags
}

resource "aws_route53_resolver_firewall_rule" "allow_listed" {
  name                    = "allow-listed"
  action                  = "ALLOW"
  firewall_domain_list_id = aws_route53_resolver_firewall_domain_list.allowed.id
  firewall_rule_group_id  = aws_route53_resolver_firewall_rule_group.this.id
  priority                = 100
}

resource "aws_route53_resolver_firewall_rule" "block_rest" {
  name                    = "block-everything-else"
  action                  = "BLOCK"
  block_response          = "NXDOMAIN"
  firewall_domain_list_id = aws_route53_resolver_firewall_domain_list.everything.id
  firewall_rule_group_id  = aws_route53_resolver_firewall_rule_group.this.id
  priority                = 200
}

resource "aws_route53_resolver_firewall_rule_group_association" "vpc" {
  name                   = var.name
  firewall_rule_group_id = aws_route53_resolver_firewall_rule_group.this.id
  vpc_id                 = var.vpc_id
  priority               = 101
  mutation_protection    = "ENABLED"
  tags                   = var.tags
}

# If the firewall cannot answer, queries fail rather than pass unfiltered.
resource "aws_route53_resolver_firewall_config" "vpc" {
  resource_id        = var.vpc_id
  firewall_fail_open = "DISABLED"
}

resource "aws_cloudwatch_log_group" "queries" {
  name              = "/berth/${var.name}/dns-queries"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_route53_resolver_query_log_config" "this" {
  name            = var.name
  destination_arn = aws_cloudwatch_log_group.queries.arn
  tags            = var.tags
}

resource "aws_route53_resolver_query_log_config_association" "vpc" {
  resolver_query_log_config_id = aws_route53_resolver_query_log_config.this.id
  resource_id                  = var.vpc_id
}

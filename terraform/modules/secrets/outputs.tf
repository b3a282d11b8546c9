output "api_token_arn" {
  description = "Secret holding BERTH_API_TOKEN."
  value       = aws_secretsmanager_secret.this["api-token"].arn
}

output "operator_token_arn" {
  description = "Secret holding BERTH_OPERATOR_TOKEN (the fleet page, /metrics, hosts, drain, pools)."
  value       = aws_secretsmanager_secret.this["operator-token"].arn
}

output "host_token_arn" {
  description = "Secret holding BERTH_HOST_TOKEN (also written to /etc/berth/host-token on each host)."
  value       = aws_secretsmanager_secret.this["host-token"].arn
}

output "proxy_credentials_arn" {
  description = "Secret meant for the credential proxy's upstream credentials (not yet delivered to it)."
  value       = aws_secretsmanager_secret.this["proxy-credentials"].arn
}

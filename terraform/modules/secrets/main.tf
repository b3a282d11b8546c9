# The secrets Berth reads at run time. Terraform creates the containers only:
# values are put by an operator (docs/DEPLOY.md), so they never pass through
# Terraform state.
#
#   api-token          bearer token the backend presents to the scheduler
#   operator-token     token on-call presents for the fleet page, /metrics,
#                      hosts, drain and pools (never the backend's)
#   host-token         token hostd presents to the scheduler; read by the
#                      launch template's user-data at boot
#   proxy-credentials  per-route upstream credentials (JSON) for the credential
#                      proxy, such as MCP bearer tokens. Not yet handed to the
#                      proxy: it reads credentials only through its
#                      configuration file (terraform/modules/workspace/main.tf
#                      explains; docs/DEPLOY.md, Known limits)

resource "aws_secretsmanager_secret" "this" {
  #checkov:skip=CKV2_AWS_57:tokens and upstream credentials are rotated by the runbook in docs/DEPLOY.md (no rotation Lambda can mint upstream MCP credentials)
  for_each                = toset(["api-token", "operator-token", "host-token", "proxy-credentials"])
  name                    = "${var.name}/${each.value}"
  description             = "Berth ${var.name}: ${each.value}"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.recovery_window_in_days
  tags                    = var.tags
}

variable "name" {
  description = "Name prefix of the environment, e.g. berth-staging."
  type        = string
}

variable "vpc_id" {
  description = "VPC the groups belong to."
  type        = string
}

variable "endpoints_security_group_id" {
  description = "Security group of the interface VPC endpoints (from the network module)."
  type        = string
}

variable "alb_ingress_cidrs" {
  description = "Client address ranges allowed to the public ALB."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "operator_cidrs" {
  description = "Address ranges of on-call (VPN, bastion) allowed to hostd's status page on 7701. Empty: only the scheduler."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

variable "workspaces_reach_endpoints" {
  description = "Let workspace ENIs reach the VPC's interface endpoints (HTTPS): needed when proxies read claims' secrets from Secrets Manager; only the proxy's uid can leave a workspace task."
  type        = bool
  default     = false
}

variable "name" {
  description = "Name prefix of the environment, e.g. berth-staging."
  type        = string
}

variable "cidr_block" {
  description = "VPC address range; a /16 leaves room for two /20 private subnets of workspace addresses."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zones" {
  description = "Availability zones to use; the first two are taken."
  type        = list(string)
  validation {
    condition     = length(var.availability_zones) >= 2
    error_message = "Two availability zones are required."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for both AZs (cheaper, for staging) instead of one per AZ."
  type        = bool
  default     = false
}

variable "interface_endpoints" {
  description = "Interface endpoint service names (without the com.amazonaws.REGION. prefix)."
  type        = list(string)
  default = [
    "ecr.api",
    "ecr.dkr",
    "logs",
    "secretsmanager",
    "ecs",
    "ecs-agent",
    "ecs-telemetry",
  ]
}

variable "kms_key_arn" {
  description = "KMS key for the flow log group."
  type        = string
}

variable "log_retention_days" {
  description = "Days flow logs are kept."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

variable "name" {
  description = "Name prefix of the environment, e.g. berth-staging."
  type        = string
}

variable "image" {
  description = "Scheduler image (berth-scheduler repository, immutable tag)."
  type        = string
}

variable "image_repository_arn" {
  description = "ECR repository of the scheduler image."
  type        = string
}

variable "cluster_name" {
  description = "ECS cluster the scheduler places workspaces in (BERTH_ECS_CLUSTER)."
  type        = string
}

variable "cluster_arn" {
  description = "ARN of that cluster; the task role's ECS permissions are conditioned on it."
  type        = string
}

variable "namespace_id" {
  description = "Cloud Map namespace the scheduler registers in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the scheduler tasks."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the scheduler tasks."
  type        = string
}

variable "state_url" {
  description = "BERTH_STATE: redis://ENDPOINT:6379 of the ElastiCache group."
  type        = string
}

variable "workspace_task_definition_arn" {
  description = "BERTH_ECS_TASK_DEFINITION: the workspace task definition, with revision."
  type        = string
}

variable "workspace_task_definition_family" {
  description = "Family of the workspace task definition (RunTask is allowed for its revisions only)."
  type        = string
}

variable "workspace_execution_role_arn" {
  description = "The only role the scheduler may pass (the workspace execution role)."
  type        = string
}

variable "workspace_subnet_ids" {
  description = "BERTH_ECS_SUBNETS: subnets of workspace task ENIs."
  type        = list(string)
}

variable "workspace_security_group_ids" {
  description = "BERTH_ECS_SECURITY_GROUPS: security groups of workspace task ENIs."
  type        = list(string)
}

variable "agent_networks" {
  description = "BERTH_AGENT_NETWORKS: CIDRs workspace agents may be reached in (the VPC's); a slot whose agent address is elsewhere is discarded."
  type        = list(string)

  validation {
    condition     = length(var.agent_networks) > 0 && alltrue([for c in var.agent_networks : can(cidrhost(c, 0))])
    error_message = "agent_networks must name at least one CIDR (an empty list would let agents be anywhere)."
  }
}

variable "pools" {
  description = "BERTH_POOLS: warm slots per template, e.g. default=20."
  type        = string
  default     = "default=20"
}

variable "api_token_secret_arn" {
  description = "Secret of BERTH_API_TOKEN."
  type        = string
}

variable "operator_token_secret_arn" {
  description = "Secret of BERTH_OPERATOR_TOKEN."
  type        = string
}

variable "host_token_secret_arn" {
  description = "Secret of BERTH_HOST_TOKEN."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the log group and the secrets."
  type        = string
}

variable "desired_count" {
  description = "Scheduler replicas (one leader runs the reconcilers)."
  type        = number
  default     = 2
}

variable "cpu" {
  description = "Fargate CPU units of a scheduler task."
  type        = number
  default     = 512
}

variable "memory_mib" {
  description = "Fargate memory of a scheduler task."
  type        = number
  default     = 1024
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64; must match the image."
  type        = string
  default     = "X86_64"
}

variable "log_retention_days" {
  description = "Days scheduler logs are kept."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

variable "capacity_provider_name" {
  description = "BERTH_ECS_CAPACITY_PROVIDER: the hosts' capacity provider, used to scale out when no host has room."
  type        = string
}

variable "scale_out_headroom" {
  description = "BERTH_SCALE_OUT_HEADROOM: slots of room kept free across the fleet before scaling out."
  type        = number
  default     = 0

  validation {
    condition     = var.scale_out_headroom >= 0 && floor(var.scale_out_headroom) == var.scale_out_headroom
    error_message = "scale_out_headroom must be a whole number of slots, 0 or more."
  }
}

variable "workspace_task_role_arn" {
  description = "The workspace proxies' task role, passed with RunTask too; null when workspaces have none."
  type        = string
  default     = null
}

variable "checkpoint_store" {
  description = "The scheduler's --checkpoint-store (s3://BUCKET/PREFIX), the hosts' too; empty: no checkpoints (BERTH_CHECKPOINT_STORE)."
  type        = string
  default     = ""
}

variable "checkpoint_policy_json" {
  description = "What the scheduler may do in the checkpoint bucket (the checkpoints module's scheduler_policy_json)."
  type        = string
  default     = "{}"
}

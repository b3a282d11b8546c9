variable "name" {
  description = "Name prefix of the environment, e.g. berth-staging."
  type        = string
}

variable "workspace_image" {
  description = "Image of the workspace-agent container (berth-workspace repository, immutable tag)."
  type        = string
}

variable "proxy_image" {
  description = "Image of the credential-proxy container (berth-credential-proxy repository, immutable tag)."
  type        = string
}

variable "image_repository_arns" {
  description = "ECR repositories the execution role may pull from (workspace and proxy)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key of the log group."
  type        = string
}

variable "agent_memory_mib" {
  description = "Hard memory limit of the workspace-agent container (the seed studies size a workspace at 1 GiB)."
  type        = number
  default     = 1024
}

variable "agent_memory_reservation_mib" {
  description = "Memory the scheduler and ECS reserve per workspace-agent container."
  type        = number
  default     = 512
}

variable "agent_cpu_units" {
  description = "CPU shares of the workspace-agent container (1024 = one vCPU)."
  type        = number
  default     = 512
}

variable "workspace_size_mib" {
  description = "Size of the /workspace tmpfs (counts against the memory limit)."
  type        = number
  default     = 256
}

variable "proxy_memory_mib" {
  description = "Hard memory limit of the credential-proxy container."
  type        = number
  default     = 64
}

variable "proxy_cpu_units" {
  description = "CPU shares of the credential-proxy container."
  type        = number
  default     = 64
}

variable "log_retention_days" {
  description = "Days workspace container logs are kept."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

variable "proxy_secret_arns" {
  description = "Secrets Manager secret ARNs (a trailing * matches a prefix) that claims' credential routes may name. Non-empty: workspace tasks get a task role that reads exactly these, which only the proxy's uid can use (hostd's BERTH_PROXY_TASK_CREDENTIALS). Empty: no task role."
  type        = list(string)
  default     = []
}

variable "environment" {
  description = "Environment name: staging or production. Resources are named berth-ENVIRONMENT."
  type        = string
}

variable "availability_zones" {
  description = "Two availability zones of the region."
  type        = list(string)
}

variable "vpc_cidr_block" {
  description = "VPC address range (a /16)."
  type        = string
}

variable "multi_az" {
  description = "Production shape: Multi-AZ Redis and PostgreSQL, one NAT gateway per AZ."
  type        = bool
}

variable "deletion_protection" {
  description = "Protect the database and the ALB from deletion."
  type        = bool
}

variable "image_tag" {
  description = "Release tag of the berth-workspace, berth-credential-proxy and berth-scheduler images."
  type        = string
}

variable "create_ecr_repositories" {
  description = "Create the three ECR repositories here. Set false in the second environment of a shared account, which then looks them up by name."
  type        = bool
  default     = true
}

variable "manage_account_settings" {
  description = "Manage account-wide settings (awsvpcTrunking) in this environment; false in the second environment of a shared account."
  type        = bool
  default     = true
}

variable "host_ami_id" {
  description = "Pinned Berth host AMI; empty takes the newest berth-host-* image of this account."
  type        = string
  default     = ""
}

variable "host_instance_type" {
  description = "Host instance type (ENI-trunking capable; see docs/DEPLOY.md for sizing)."
  type        = string
}

variable "min_hosts" {
  description = "Fewest running hosts."
  type        = number
}

variable "max_hosts" {
  description = "Most running hosts."
  type        = number
}

variable "host_warm_pool_size" {
  description = "Stopped, pre-initialised hosts in the Auto Scaling warm pool."
  type        = number
}

variable "workspace_memory_mib" {
  description = "Hard memory limit of a workspace's agent container."
  type        = number
  default     = 1024
}

variable "pools" {
  description = "BERTH_POOLS: warm workspaces kept per template, e.g. default=20."
  type        = string
}

variable "scale_out_headroom" {
  description = "BERTH_SCALE_OUT_HEADROOM: slots of room kept free across the fleet; below it the scheduler starts tasks through the capacity provider so ECS adds hosts."
  type        = number
  default     = 0
}

variable "scheduler_count" {
  description = "Scheduler replicas."
  type        = number
}

variable "backend_image" {
  description = "Backend image (the application's repository and tag)."
  type        = string
}

variable "backend_repository_arns" {
  description = "ECR repositories of the backend image."
  type        = list(string)
}

variable "backend_environment" {
  description = "Extra environment variables of the backend."
  type        = map(string)
  default     = {}
}

variable "backend_count" {
  description = "Fewest backend tasks."
  type        = number
}

variable "backend_max_count" {
  description = "Most backend tasks."
  type        = number
}

variable "certificate_arn" {
  description = "ACM certificate for the ALB's HTTPS listener."
  type        = string
}

variable "allowed_domains" {
  description = "Names workspaces' credential proxy may resolve besides AWS (MCP servers), fully qualified with trailing dot."
  type        = list(string)
  default     = []
}

variable "alb_ingress_cidrs" {
  description = "Client ranges allowed to the ALB."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "operator_cidrs" {
  description = "On-call ranges allowed to hostd's status page (7701)."
  type        = list(string)
  default     = []
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
}

variable "postgres_instance_class" {
  description = "RDS instance class."
  type        = string
}

variable "log_retention_days" {
  description = "Days every log group keeps its logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "proxy_secret_arns" {
  description = "Secrets Manager ARNs (trailing * for a prefix) that claims' credential routes may name (the templates' `secrets` should list the same). Empty: workspaces get no task role, and credential routes with secrets cannot be served on this fleet."
  type        = list(string)
  default     = []
}

variable "checkpoint_retention_days" {
  description = "A checkpoint of a workspace's files untouched this long is deleted by the bucket's lifecycle (the scheduler keeps the newest few per conversation)."
  type        = number
  default     = 90
}

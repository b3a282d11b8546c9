variable "name" {
  description = "Name prefix of the environment, e.g. berth-staging."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the target group."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets of the ALB."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets of the backend tasks."
  type        = list(string)
}

variable "alb_security_group_id" {
  description = "Security group of the ALB."
  type        = string
}

variable "backend_security_group_id" {
  description = "Security group of the backend tasks."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate of the public hostname, served by the HTTPS listener."
  type        = string
}

variable "cluster_name" {
  description = "ECS cluster of the backend service."
  type        = string
}

variable "cluster_arn" {
  description = "ARN of that cluster."
  type        = string
}

variable "image" {
  description = "Backend image (the application's own repository, immutable tag)."
  type        = string
}

variable "image_repository_arns" {
  description = "ECR repositories the backend's execution role may pull from."
  type        = list(string)
}

variable "environment" {
  description = "Extra non-secret environment variables of the backend container."
  type        = map(string)
  default     = {}
}

variable "task_role_arn" {
  description = "IAM role of the backend tasks, if the application needs AWS access; none by default."
  type        = string
  default     = null
}

variable "scheduler_url" {
  description = "BERTH_SCHEDULER_URL the backend calls."
  type        = string
}

variable "api_token_secret_arn" {
  description = "Secret of BERTH_API_TOKEN, which the backend presents to the scheduler."
  type        = string
}

variable "database_host" {
  description = "PostgreSQL address."
  type        = string
}

variable "database_secret_arn" {
  description = "Secret (managed by RDS) with the database credentials."
  type        = string
}

variable "redis_url" {
  description = "Redis URL for the backend's own use."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the log groups and secrets."
  type        = string
}

variable "health_check_path" {
  description = "Path the ALB checks on the backend."
  type        = string
  default     = "/health"
}

variable "desired_count" {
  description = "Fewest backend tasks."
  type        = number
  default     = 2
}

variable "max_count" {
  description = "Most backend tasks under CPU target tracking."
  type        = number
  default     = 4
}

variable "cpu" {
  description = "Fargate CPU units of a backend task."
  type        = number
  default     = 512
}

variable "memory_mib" {
  description = "Fargate memory of a backend task."
  type        = number
  default     = 1024
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64; must match the image."
  type        = string
  default     = "X86_64"
}

variable "deletion_protection" {
  description = "Refuse to delete the ALB."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Days logs are kept (ALB access logs, WAF, backend)."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

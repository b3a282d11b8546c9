variable "name" {
  description = "Name prefix of the environment, e.g. berth-staging."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the data stores."
  type        = list(string)
}

variable "multi_az" {
  description = "Two Redis nodes with automatic failover and a Multi-AZ PostgreSQL standby (production)."
  type        = bool
}

variable "kms_key_arn" {
  description = "KMS key for storage encryption, the RDS master secret and Performance Insights."
  type        = string
}

variable "redis_security_group_id" {
  description = "Security group of Redis (security_groups module)."
  type        = string
}

variable "postgres_security_group_id" {
  description = "Security group of PostgreSQL (security_groups module)."
  type        = string
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "redis_engine_version" {
  description = "Redis engine version."
  type        = string
  default     = "7.1"
}

variable "redis_transit_encryption" {
  description = "TLS between clients and Redis. Needs a rediss:// BERTH_STATE, which the environments derive from this flag."
  type        = bool
  default     = false
}

variable "postgres_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "postgres_engine_version" {
  description = "PostgreSQL major version."
  type        = string
  default     = "16"
}

variable "postgres_storage_gb" {
  description = "Initial storage; autoscaling may grow it to four times this."
  type        = number
  default     = 50
}

variable "deletion_protection" {
  description = "Refuse to delete the database (production)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

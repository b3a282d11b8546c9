variable "name" {
  description = "Name prefix of the environment's resources."
  type        = string
}

variable "kms_key_arn" {
  description = "The environment's key; checkpoints are encrypted with it."
  type        = string
}

variable "access_log_bucket" {
  description = "Bucket that takes the checkpoint bucket's S3 access logs."
  type        = string
}

variable "prefix" {
  description = "Key prefix of checkpoints in the bucket (hostd's and the scheduler's --checkpoint-store s3://BUCKET/PREFIX)."
  type        = string
  default     = "checkpoints"
}

variable "retention_days" {
  description = "A checkpoint untouched this long is deleted by the bucket's lifecycle (a backstop: the scheduler keeps the newest few per conversation and deletes a deleted conversation's)."
  type        = number
  default     = 90
}

variable "deleted_retention_days" {
  description = "Deleted or replaced checkpoint objects stay recoverable (as noncurrent versions) this long."
  type        = number
  default     = 7
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

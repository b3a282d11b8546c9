variable "name" {
  description = "Name prefix of the environment, e.g. berth-staging; secrets are named NAME/api-token etc."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key the secrets are encrypted with."
  type        = string
}

variable "recovery_window_in_days" {
  description = "Days a deleted secret can still be restored."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

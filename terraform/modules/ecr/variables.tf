variable "repositories" {
  description = "Repository names. Shared by staging and production when both live in one account; see docs/DEPLOY.md."
  type        = list(string)
  default     = ["berth-workspace", "berth-credential-proxy", "berth-scheduler"]
}

variable "kms_key_arn" {
  description = "KMS key the images are encrypted with."
  type        = string
}

variable "untagged_expiry_days" {
  description = "Days after which untagged images are removed."
  type        = number
  default     = 14
}

variable "keep_tagged_images" {
  description = "Tagged images kept per repository (rollbacks reach this far back)."
  type        = number
  default     = 50
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

variable "name" {
  description = "Name prefix of the environment, e.g. berth-staging."
  type        = string
}

variable "vpc_id" {
  description = "VPC the firewall is attached to."
  type        = string
}

variable "allowed_domains" {
  description = "Names workspaces may resolve besides the platform's own, e.g. [\"mcp.example.com.\", \"*.mcp.example.com.\"]. Give fully qualified names with the trailing dot; a leading *. allows subdomains."
  type        = list(string)
  default     = []
}

variable "platform_domains" {
  description = "Names the platform itself needs: AWS endpoints (ECS, ECR, S3, Logs, Secrets Manager, Bedrock), EC2 internal names and the environment's Cloud Map namespace."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key for the query log group."
  type        = string
}

variable "log_retention_days" {
  description = "Days DNS query logs are kept."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

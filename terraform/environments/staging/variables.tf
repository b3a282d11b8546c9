variable "region" {
  description = "AWS region of the environment."
  type        = string
  default     = "us-east-1"
}

variable "availability_zones" {
  description = "Two availability zones of the region; pick ones that offer the host instance type."
  type        = list(string)
  default     = ["us-east-1a", "us-east-1b"]
}

variable "image_tag" {
  description = "Release tag of the berth-workspace, berth-credential-proxy and berth-scheduler images (immutable tags, e.g. v0.3.0)."
  type        = string
}

variable "create_ecr_repositories" {
  description = "Create the ECR repositories in this environment. False when another environment in the same account already did."
  type        = bool
  default     = true
}

variable "manage_account_settings" {
  description = "Manage the account-wide awsvpcTrunking default here. False when another environment in the same account and region already does."
  type        = bool
  default     = true
}

variable "host_ami_id" {
  description = "Pinned Berth host AMI id; empty takes the newest berth-host-* image owned by this account."
  type        = string
  default     = ""
}

variable "pools" {
  description = "BERTH_POOLS: warm workspaces per template, e.g. default=20."
  type        = string
  default     = "default=10"
}

variable "backend_image" {
  description = "Backend application image, repository and tag."
  type        = string
}

variable "backend_repository_arns" {
  description = "ECR repositories the backend image is pulled from."
  type        = list(string)
}

variable "backend_environment" {
  description = "Extra environment variables of the backend container."
  type        = map(string)
  default     = {}
}

variable "certificate_arn" {
  description = "ACM certificate (in this region) of the public hostname."
  type        = string
}

variable "allowed_domains" {
  description = "Names the workspaces' credential proxy may resolve besides AWS endpoints, e.g. [\"mcp.example.com.\"]."
  type        = list(string)
  default     = []
}

variable "alb_ingress_cidrs" {
  description = "Client address ranges allowed to reach the ALB."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "operator_cidrs" {
  description = "On-call address ranges (VPN) allowed to hostd's status page on port 7701."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Extra tags for every resource (cost allocation, owner)."
  type        = map(string)
  default     = {}
}

variable "proxy_secret_arns" {
  description = "Secrets Manager ARNs (trailing * for a prefix) that claims' credential routes may name; empty: no workspace task role."
  type        = list(string)
  default     = []
}

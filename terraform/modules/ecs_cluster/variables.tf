variable "name" {
  description = "Name of the cluster and prefix of its resources, e.g. berth-staging."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the cluster (for the Cloud Map namespace)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets the hosts are launched into."
  type        = list(string)
}

variable "namespace" {
  description = "Private DNS namespace for service discovery, e.g. berth-staging.internal."
  type        = string
}

variable "scheduler_url" {
  description = "URL hostd reports to (BERTH_SCHEDULER_URL), e.g. http://scheduler.berth-staging.internal:7700."
  type        = string
}

variable "hosts_security_group_id" {
  description = "Security group of the hosts' primary ENI."
  type        = string
}

variable "host_token_secret_arn" {
  description = "Secret the hosts read their token from at every boot."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key the host token secret is encrypted with."
  type        = string
}

variable "ami_id" {
  description = "Pinned Berth host AMI id. Empty: the newest image named berth-host-* owned by ami_owners."
  type        = string
  default     = ""
}

variable "ami_owners" {
  description = "Accounts whose Berth host images are considered when ami_id is empty."
  type        = list(string)
  default     = ["self"]
}

variable "architecture" {
  description = "Image architecture, x86_64 or arm64; must match instance_type."
  type        = string
  default     = "x86_64"
}

variable "instance_type" {
  description = "Host instance type. Must support ENI trunking (c5/c6i/m5/m6i/r5/r6i and newer); branch ENIs, i.e. workspaces, per host: large 10, xlarge 20, 2xlarge 40, 4xlarge 60."
  type        = string
  default     = "c6i.2xlarge"
}

variable "root_volume_gb" {
  description = "Root volume size of each host (images and container layers)."
  type        = number
  default     = 60
}

variable "min_hosts" {
  description = "Fewest running hosts."
  type        = number
  default     = 1
}

variable "max_hosts" {
  description = "Most running hosts."
  type        = number
  default     = 10
}

variable "target_capacity" {
  description = "Managed scaling target in percent; below 100 keeps headroom for warm-pool refills."
  type        = number
  default     = 90
}

variable "max_scaling_step" {
  description = "Most hosts managed scaling adds or removes at once."
  type        = number
  default     = 4
}

variable "warm_pool_min_size" {
  description = "Stopped, pre-initialised hosts kept in the Auto Scaling warm pool."
  type        = number
  default     = 1
}

variable "warm_pool_max_prepared" {
  description = "Most instances (running plus warm) the group prepares; -1 lets it follow max_hosts."
  type        = number
  default     = -1
}

variable "tags" {
  description = "Tags for every resource of the module."
  type        = map(string)
  default     = {}
}

variable "manage_account_settings" {
  description = "Manage the account-wide awsvpcTrunking default here. Exactly one environment per account and region may (false in the second environment of a shared account)."
  type        = bool
  default     = true
}

variable "proxy_task_credentials" {
  description = "Workspace proxies have a task role (claims' secrets): hostd opens the ECS credential endpoint to the proxy's uid (BERTH_PROXY_TASK_CREDENTIALS)."
  type        = bool
  default     = false
}

variable "checkpoint_store" {
  description = "hostd's --checkpoint-store (s3://BUCKET/PREFIX); empty: no checkpoints (BERTH_CHECKPOINT_STORE)."
  type        = string
  default     = ""
}

variable "checkpoint_policy_json" {
  description = "What hostd may do in the checkpoint bucket (the checkpoints module's hosts_policy_json)."
  type        = string
  default     = "{}"
}

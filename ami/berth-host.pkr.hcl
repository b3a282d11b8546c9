# The Berth host image: the ECS-optimized Amazon Linux 2023 AMI plus hostd, the
# ECS agent settings our placement relies on, the Docker daemon defaults that
# hold every workspace container (seccomp profile, no-new-privileges, icc off,
# bounded logs) and a few kernel settings.
#
# Everything that is written to disk is written by scripts/provision.sh, which
# the checks in tests/infra run against a scratch root directory; this template
# only uploads the inputs and runs it. See docs/DEPLOY.md for how to build.
#
#   packer plugins install github.com/hashicorp/amazon v1.8.0
#   packer build -var version=1.2.3 -var hostd_binary=target/release/hostd ami/
#
# There is deliberately no `packer { required_plugins { ... } }` block: the
# checks parse this directory with Debian's packer (1.6.6), which predates that
# block, so the plugin is installed by name and version instead (as the CI
# workflow .github/workflows/ami.yml does). Builds need Packer >= 1.10.

variable "region" {
  type        = string
  description = "Region the image is built in (copy it elsewhere with ami_regions)."
  default     = "us-east-1"
}

variable "ami_regions" {
  type        = list(string)
  description = "Extra regions the finished image is copied to."
  default     = []
}

variable "ami_users" {
  type        = list(string)
  description = "Account ids the image is shared with (e.g. production when built in a tooling account)."
  default     = []
}

variable "version" {
  type        = string
  description = "Berth release the image carries; ends up in the AMI name, its tags and /etc/berth/ami-release."
  default     = "dev"
}

variable "git_sha" {
  type        = string
  description = "Commit the hostd binary was built from."
  default     = "unknown"
}

variable "hostd_binary" {
  type        = string
  description = "Path of the release hostd binary to install as /usr/local/bin/hostd (built for the image's architecture)."
  default     = "target/release/hostd"
}

variable "seccomp_profile" {
  type        = string
  description = "Docker seccomp profile made the daemon default; the repository's seccomp/workspace.json unless overridden."
  default     = ""
}

variable "architecture" {
  type        = string
  description = "x86_64 (c6i, m6i, r6i) or arm64 (Graviton); must match hostd_binary."
  default     = "x86_64"
}

variable "instance_type" {
  type        = string
  description = "Builder instance type; any trunking-capable type of the chosen architecture."
  default     = "c6i.large"
}

variable "subnet_id" {
  type        = string
  description = "Subnet for the builder instance; empty lets Packer use the default VPC."
  default     = ""
}

variable "kms_key_id" {
  type        = string
  description = "KMS key for the encrypted root volume and snapshot; empty uses the account's default EBS key."
  default     = ""
}

locals {
  build_stamp     = formatdate("YYYYMMDDhhmmss", timestamp())
  seccomp_profile = var.seccomp_profile != "" ? var.seccomp_profile : "${path.root}/../seccomp/workspace.json"
  inputs_dir      = "/tmp/berth-ami"
}

source "amazon-ebs" "berth_host" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id != "" ? var.subnet_id : null

  # The newest ECS-optimized AL2023 image published by Amazon, found by name
  # rather than pinned, so every build starts from the current agent and kernel.
  source_ami_filter {
    filters = {
      name                = "al2023-ami-ecs-hvm-*-kernel-6.1-${var.architecture}"
      architecture        = var.architecture
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  # SSH from the build machine only: Packer opens a temporary security group to
  # the public address it sees itself coming from, with a throwaway key pair.
  communicator                              = "ssh"
  ssh_username                              = "ec2-user"
  temporary_security_group_source_public_ip = true

  # The builder itself runs with IMDSv2 only and a hop limit of 1, like the
  # fleet's launch template; the image is marked IMDSv2-only too (imds_support),
  # so an instance started from it by hand does not fall back to IMDSv1.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"

  ami_name        = "berth-host-${var.version}-${var.architecture}-${local.build_stamp}"
  ami_description = "Berth host: ECS-optimized AL2023 + hostd ${var.version} (${var.git_sha})"
  ami_regions     = var.ami_regions
  ami_users       = var.ami_users
  encrypt_boot    = true
  kms_key_id      = var.kms_key_id != "" ? var.kms_key_id : null

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = 30
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  tags = {
    Name              = "berth-host-${var.version}"
    "berth:component" = "host-ami"
    "berth:version"   = var.version
    "berth:git-sha"   = var.git_sha
    "berth:base-ami"  = "{{ .SourceAMI }}"
    "berth:base-name" = "{{ .SourceAMIName }}"
  }
  run_tags = {
    Name              = "berth-ami-builder"
    "berth:component" = "ami-builder"
  }
}

build {
  sources = ["source.amazon-ebs.berth_host"]

  provisioner "shell" {
    inline = ["mkdir -p ${local.inputs_dir}"]
  }

  # Inputs: the static files, the release binary and the repository's seccomp profile.
  provisioner "file" {
    source      = "${path.root}/files"
    destination = local.inputs_dir
  }

  provisioner "file" {
    source      = var.hostd_binary
    destination = "${local.inputs_dir}/hostd"
  }

  provisioner "file" {
    source      = local.seccomp_profile
    destination = "${local.inputs_dir}/workspace.json"
  }

  provisioner "shell" {
    execute_command = "sudo -E bash '{{ .Path }}'"
    environment_vars = [
      "BERTH_ROOT=/",
      "BERTH_INPUTS=${local.inputs_dir}",
      "BERTH_VERSION=${var.version}",
      "BERTH_GIT_SHA=${var.git_sha}",
      "BERTH_BUILD_STAMP=${local.build_stamp}",
    ]
    scripts = [
      "${path.root}/scripts/provision.sh",
      "${path.root}/scripts/finalize.sh",
    ]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {
      version = var.version
      git_sha = var.git_sha
    }
  }
}

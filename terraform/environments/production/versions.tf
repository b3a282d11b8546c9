terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.70, < 7.0"
    }
  }

  # State lives in S3 with locking; the bucket is named at init time:
  #   terraform init -backend-config=backend.hcl   (see docs/DEPLOY.md)
  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "berth:managed-by" = "terraform"
      "berth:stack"      = "environments/production"
    }
  }
}

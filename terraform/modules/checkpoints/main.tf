# Checkpoints of workspaces' /workspace: one bucket, encrypted with the
# environment's key, private, TLS only. hostd (the hosts' instance role) writes
# and reads archives; the scheduler (its task role) lists and deletes them.
# Workspace tasks get nothing here: their task role has no S3 statement, and
# hostd blocks them from the instance role (IMDS) and the ECS credential
# endpoint.
#
# Retention: the scheduler keeps the newest N checkpoints of a conversation
# (the template's `checkpoint.keep`) and deletes a conversation's on
# DELETE /v1/conversations/{id}; the lifecycle rules below are the backstop:
# interrupted multipart uploads are aborted, deleted versions expire, and a
# checkpoint nobody touched for `retention_days` goes.

resource "aws_s3_bucket" "checkpoints" {
  #checkov:skip=CKV_AWS_144:checkpoints are a cache of a conversation's files within one region; a region's loss costs the files, as it costs the fleet
  #checkov:skip=CKV2_AWS_62:nothing consumes events of the checkpoint bucket
  bucket_prefix = "${var.name}-checkpoints-"
  force_destroy = false
  tags          = var.tags
}

resource "aws_s3_bucket_logging" "checkpoints" {
  bucket        = aws_s3_bucket.checkpoints.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3/checkpoints/"
}

resource "aws_s3_bucket_public_access_block" "checkpoints" {
  bucket                  = aws_s3_bucket.checkpoints.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id

  rule {
    id     = "backstop"
    status = "Enabled"
    filter {}
    expiration {
      days = var.retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = var.deleted_retention_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "TlsOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.checkpoints.arn, "${aws_s3_bucket.checkpoints.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  policy = data.aws_iam_policy_document.bucket.json
}

locals {
  prefix  = trim(var.prefix, "/")
  objects = "${aws_s3_bucket.checkpoints.arn}/${local.prefix}/*"
}

# hostd: archives in and out, and pruning a conversation's older checkpoints.
data "aws_iam_policy_document" "hosts" {
  statement {
    sid       = "ListCheckpoints"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.checkpoints.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.prefix}/*"]
    }
  }
  statement {
    sid = "ReadWriteCheckpoints"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [local.objects]
  }
  statement {
    sid       = "CheckpointKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
}

# The scheduler: the latest checkpoint of a conversation (list, one manifest
# read) and deleting a conversation's.
data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "ListCheckpoints"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.checkpoints.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.prefix}/*"]
    }
  }
  statement {
    sid       = "ReadManifestsDeleteCheckpoints"
    actions   = ["s3:GetObject", "s3:DeleteObject"]
    resources = [local.objects]
  }
  statement {
    sid       = "CheckpointKey"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
}

data "aws_region" "current" {}

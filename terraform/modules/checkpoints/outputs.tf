output "bucket" {
  description = "The checkpoint bucket's name."
  value       = aws_s3_bucket.checkpoints.bucket
}

output "store_url" {
  description = "--checkpoint-store of hostd and the scheduler."
  value       = "s3://${aws_s3_bucket.checkpoints.bucket}/${local.prefix}"
}

output "hosts_policy_json" {
  description = "What hostd (the hosts' instance role) may do in the bucket."
  value       = data.aws_iam_policy_document.hosts.json
}

output "scheduler_policy_json" {
  description = "What the scheduler (its task role) may do in the bucket."
  value       = data.aws_iam_policy_document.scheduler.json
}

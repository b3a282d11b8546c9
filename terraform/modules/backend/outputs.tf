output "alb_dns_name" {
  description = "DNS name of the ALB; point the public hostname at it (alias record)."
  value       = aws_lb.this.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the ALB, for an alias record."
  value       = aws_lb.this.zone_id
}

output "log_bucket" {
  description = "The environment's log bucket (ALB access logs under alb/, S3 server access logs under s3/)."
  value       = aws_s3_bucket.alb_logs.id
}

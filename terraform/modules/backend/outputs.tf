output "alb_dns_name" {
  description = "DNS name of the ALB; point the public hostname at it (alias record)."
  value       = aws_lb.this.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the ALB, for an alias record."
  value       = aws_lb.this.zone_id
}

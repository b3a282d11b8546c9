output "vpc_id" {
  description = "Id of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr_block" {
  description = "Address range of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "public_subnet_ids" {
  description = "Public subnets (ALB, NAT gateways)."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnets (container instances, awsvpc tasks, data stores, endpoints)."
  value       = aws_subnet.private[*].id
}

output "endpoints_security_group_id" {
  description = "Security group of the interface endpoints; callers are allowed in by the security_groups module."
  value       = aws_security_group.endpoints.id
}

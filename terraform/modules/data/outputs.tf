output "redis_endpoint" {
  description = "Primary endpoint of the Redis replication group."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "redis_url" {
  description = "BERTH_STATE for the scheduler."
  value       = "${var.redis_transit_encryption ? "rediss" : "redis"}://${aws_elasticache_replication_group.redis.primary_endpoint_address}:6379"
}

output "postgres_endpoint" {
  description = "Address of PostgreSQL."
  value       = aws_db_instance.postgres.address
}

output "postgres_master_secret_arn" {
  description = "Secret (managed by RDS) holding the master user's password."
  value       = aws_db_instance.postgres.master_user_secret[0].secret_arn
}

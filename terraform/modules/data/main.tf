# The environment's data stores: ElastiCache Redis for the scheduler's state
# (warm slots, claims, leases, heartbeats) and RDS PostgreSQL for the backend.
# Production runs both Multi-AZ with automatic failover; staging runs one node
# of each.

# === Redis ===

resource "aws_elasticache_subnet_group" "redis" {
  name       = "${var.name}-redis"
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

resource "aws_elasticache_parameter_group" "redis" {
  name   = "${var.name}-redis7"
  family = "redis7"

  # Warm slots and claims must never be evicted to make room.
  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }

  tags = var.tags
}

resource "aws_elasticache_replication_group" "redis" {
  #checkov:skip=CKV_AWS_30:the scheduler's BERTH_STATE is redis:// (no TLS yet); reachable only from the scheduler and backend groups in private subnets; see redis_transit_encryption
  #checkov:skip=CKV_AWS_31:as above; an AUTH token comes with TLS
  replication_group_id = "${var.name}-state"
  description          = "Berth ${var.name} scheduler state"
  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  port                 = 6379
  parameter_group_name = aws_elasticache_parameter_group.redis.name
  subnet_group_name    = aws_elasticache_subnet_group.redis.name
  security_group_ids   = [var.redis_security_group_id]

  num_cache_clusters         = var.multi_az ? 2 : 1
  multi_az_enabled           = var.multi_az
  automatic_failover_enabled = var.multi_az

  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  # The scheduler's BERTH_STATE is redis:// (plain TCP inside the private
  # subnets, reachable only from the scheduler and backend groups). Turn this
  # on together with a rediss:// BERTH_STATE once the scheduler speaks TLS.
  transit_encryption_enabled = var.redis_transit_encryption

  snapshot_retention_limit   = var.multi_az ? 7 : 1
  auto_minor_version_upgrade = true
  apply_immediately          = !var.multi_az

  tags = var.tags
}

# === PostgreSQL ===

resource "aws_db_subnet_group" "postgres" {
  name       = "${var.name}-postgres"
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

resource "aws_db_parameter_group" "postgres" {
  name   = "${var.name}-postgres16"
  family = "postgres16"

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  tags = var.tags
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name_prefix        = "${var.name}-rds-mon-"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "postgres" {
  identifier     = "${var.name}-backend"
  engine         = "postgres"
  engine_version = var.postgres_engine_version
  instance_class = var.postgres_instance_class

  allocated_storage     = var.postgres_storage_gb
  max_allocated_storage = var.postgres_storage_gb * 4
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  db_name  = "backend"
  username = "berth_admin"
  # RDS keeps the master password in Secrets Manager itself; it never appears
  # in Terraform state.
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = var.kms_key_arn
  iam_database_authentication_enabled = true

  multi_az               = var.multi_az
  db_subnet_group_name   = aws_db_subnet_group.postgres.name
  vpc_security_group_ids = [var.postgres_security_group_id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.postgres.name

  backup_retention_period   = var.multi_az ? 14 : 7
  copy_tags_to_snapshot     = true
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-backend-final"

  auto_minor_version_upgrade      = true
  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]
  monitoring_interval             = 60
  monitoring_role_arn             = aws_iam_role.rds_monitoring.arn
  performance_insights_enabled    = true
  performance_insights_kms_key_id = var.kms_key_arn

  tags = var.tags
}

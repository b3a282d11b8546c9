//! What a host can hold: ENI-trunk branches and memory.
//!
//! ECS does not report free branch ENIs (`remainingResources` has CPU, memory and
//! ports only), so hostd reports them. The limits follow AWS's table of awsvpc tasks
//! per instance with ENI trunking (ECS developer guide, "Elastic network interface
//! trunking"); the seed study's 12/22/42 were ENI counts one size off. Operators can
//! override the limit in config.

/// awsvpc tasks an instance type can run with ENI trunking on, or `None` if the type
/// is not in our table.
pub fn trunk_branch_limit(instance_type: &str) -> Option<u32> {
    let (family, size) = instance_type.split_once('.')?;
    if !matches!(family, "c5" | "c6i" | "m5" | "m6i" | "r5" | "r6i") {
        return None;
    }
    match size {
        "large" => Some(10),
        "xlarge" => Some(20),
        "2xlarge" => Some(40),
        "4xlarge" => Some(60),
        _ => None,
    }
}

/// Total memory of this machine in MiB, from `/proc/meminfo`.
pub fn memory_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total_kib(&s))
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

fn parse_meminfo_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_limits_follow_the_aws_table() {
        assert_eq!(trunk_branch_limit("c6i.large"), Some(10));
        assert_eq!(trunk_branch_limit("c6i.xlarge"), Some(20));
        assert_eq!(trunk_branch_limit("m5.2xlarge"), Some(40));
        assert_eq!(trunk_branch_limit("r6i.4xlarge"), Some(60));
        assert_eq!(trunk_branch_limit("t3.micro"), None);
        assert_eq!(trunk_branch_limit("c6i"), None);
    }

    #[test]
    fn meminfo_total_is_parsed() {
        let s = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        assert_eq!(parse_meminfo_total_kib(s), Some(24_576_000));
        assert_eq!(parse_meminfo_total_kib("garbage"), None);
    }
}

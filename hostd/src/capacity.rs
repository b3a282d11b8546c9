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

/// Where a host's branch limit came from; reported so nobody mistakes a guess for
/// a fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchSource {
    /// `--branch-limit` / `BERTH_BRANCH_LIMIT`.
    Configured,
    /// AWS's ENI-trunking table for the instance type.
    Table,
    /// The docker runtime on a machine that is not an EC2 instance (`local`).
    Local,
    /// An instance type not in the table: a conservative default, with a warning.
    Unknown,
}

impl BranchSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BranchSource::Configured => "configured",
            BranchSource::Table => "eni-trunking table",
            BranchSource::Local => "local machine",
            BranchSource::Unknown => "unknown instance type: conservative default",
        }
    }
}

/// Slots a `local` (docker runtime, not EC2) machine may run unless configured.
pub const LOCAL_BRANCH_LIMIT: u32 = 400;
/// awsvpc tasks assumed for an instance type not in the table: the fewest any type
/// in it runs without trunking, so placement never overfills an unknown host.
pub const UNKNOWN_BRANCH_LIMIT: u32 = 2;

/// The branch limit and where it came from: the configured value, else the table,
/// else the local default for `local`, else [`UNKNOWN_BRANCH_LIMIT`].
pub fn branch_limit(instance_type: &str, configured: Option<u32>) -> (u32, BranchSource) {
    if let Some(n) = configured {
        return (n, BranchSource::Configured);
    }
    if let Some(n) = trunk_branch_limit(instance_type) {
        return (n, BranchSource::Table);
    }
    if instance_type == "local" {
        return (LOCAL_BRANCH_LIMIT, BranchSource::Local);
    }
    (UNKNOWN_BRANCH_LIMIT, BranchSource::Unknown)
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
    fn an_unknown_type_gets_a_conservative_limit_and_says_so() {
        assert_eq!(branch_limit("c6i.xlarge", None), (20, BranchSource::Table));
        assert_eq!(
            branch_limit("c6i.xlarge", Some(7)),
            (7, BranchSource::Configured)
        );
        assert_eq!(
            branch_limit("local", None),
            (LOCAL_BRANCH_LIMIT, BranchSource::Local)
        );
        assert_eq!(branch_limit("c7g.large", None), (2, BranchSource::Unknown));
    }

    #[test]
    fn meminfo_total_is_parsed() {
        let s = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        assert_eq!(parse_meminfo_total_kib(s), Some(24_576_000));
        assert_eq!(parse_meminfo_total_kib("garbage"), None);
    }
}

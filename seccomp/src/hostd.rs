//! hostd's own seccomp filter, compiled from `seccomp/hostd.json` at build time.
//!
//! hostd is privileged (root, the capabilities it keeps for setns and iptables), so a
//! bug in it is a host compromise. Once started it installs this filter, which lets
//! through what a tokio daemon does — memory, threads, files and /proc, epoll, unix and
//! TCP sockets, netlink, spawning `iptables`/`ip6tables` (children inherit the filter,
//! so it covers them too) and `setns` — and nothing else: no mount, no module or kexec,
//! no bpf, ptrace, keyrings, io_uring or new namespaces.
//!
//! Default action: **kill the process**. hostd's code is ours and fixed, so a call
//! outside the list is either a bug the tests missed or an attacker probing; either
//! way stopping is right — systemd restarts hostd, its heartbeat lapses and the
//! scheduler stops placing work on the host until it is back. An `EPERM` default would
//! instead leave a half-working enforcer that might skip a rule silently. To find a
//! missing syscall on a live host, install [`HostdFilterMode::Audit`], which logs
//! (`SECCOMP_RET_LOG`, in the audit log or dmesg) instead of killing.
//!
//! Two programs are installed, for the same reason as the workspace translation (one
//! action per `seccompiler` filter): `hostd` (allow-list) and `hostd_clone3`, which
//! answers `clone3` with `ENOSYS` so that glibc falls back to `clone`, whose namespace
//! flags the allow-list checks.

use seccompiler::{BpfProgram, sock_filter};

include!(concat!(env!("OUT_DIR"), "/hostd_filters.rs"));

/// The filter definitions, as written.
pub const HOSTD_FILTER_JSON: &str = include_str!("../hostd.json");

/// Whether a call outside the list kills hostd or is only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostdFilterMode {
    /// Kill the process (production).
    Enforce,
    /// Allow and log (finding what a new code path needs).
    Audit,
}

/// Why hostd's filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum HostdFilterError {
    #[error("hostd has no seccomp filter for {arch}")]
    UnsupportedArch { arch: &'static str },
    #[error("installing hostd's `{filter}` filter on all threads failed: {source}")]
    Install {
        filter: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// hostd's allow-list in enforcing mode (the main program; see [`hostd_filters`]).
pub fn hostd_filter() -> BpfProgram {
    program(HOSTD_ENFORCE)
}

/// Every program hostd installs for `mode`, in installation order, with its name.
pub fn hostd_filters(mode: HostdFilterMode) -> Vec<(&'static str, BpfProgram)> {
    let main = match mode {
        HostdFilterMode::Enforce => ("hostd", program(HOSTD_ENFORCE)),
        HostdFilterMode::Audit => ("hostd_audit", program(HOSTD_AUDIT)),
    };
    // The clone3 filter first: once the allow-list is in, `seccomp` itself is refused.
    vec![("hostd_clone3", program(HOSTD_CLONE3)), main]
}

/// Syscalls `hostd.json` names that this architecture does not have (dropped at build).
pub fn hostd_absent_syscalls() -> &'static [&'static str] {
    HOSTD_ABSENT
}

/// Installs hostd's filter, enforcing, on every thread of the process.
pub fn apply_hostd_filter() -> Result<(), HostdFilterError> {
    apply_hostd_filter_in(HostdFilterMode::Enforce)
}

/// Installs hostd's filter in `mode` on every thread (`SECCOMP_FILTER_FLAG_TSYNC`), so
/// it can be called after the tokio runtime has started its workers.
pub fn apply_hostd_filter_in(mode: HostdFilterMode) -> Result<(), HostdFilterError> {
    if HOSTD_ENFORCE.is_empty() {
        return Err(HostdFilterError::UnsupportedArch {
            arch: std::env::consts::ARCH,
        });
    }
    for (filter, program) in hostd_filters(mode) {
        seccompiler::apply_filter_all_threads(&program)
            .map_err(|source| HostdFilterError::Install { filter, source })?;
    }
    Ok(())
}

fn program(insns: &[(u16, u8, u8, u32)]) -> BpfProgram {
    insns
        .iter()
        .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_built_into_the_crate() {
        assert!(hostd_filter().len() > 100);
        assert_eq!(hostd_filters(HostdFilterMode::Audit).len(), 2);
        assert_ne!(program(HOSTD_ENFORCE), program(HOSTD_AUDIT));
        assert_eq!(program(HOSTD_ENFORCE).len(), program(HOSTD_AUDIT).len());
    }

    #[test]
    fn every_name_is_a_syscall_somewhere() {
        let filters: serde_json::Value = serde_json::from_str(HOSTD_FILTER_JSON).unwrap();
        for (name, filter) in filters.as_object().unwrap() {
            for rule in filter["filter"].as_array().unwrap() {
                let syscall = rule["syscall"].as_str().unwrap();
                assert!(crate::syscalls::is_known(syscall), "{name}: {syscall}");
            }
        }
        if cfg!(target_arch = "x86_64") {
            assert!(
                hostd_absent_syscalls().is_empty(),
                "{:?}",
                hostd_absent_syscalls()
            );
        }
    }

    #[test]
    fn refuses_what_a_compromised_hostd_would_want() {
        let filters: serde_json::Value = serde_json::from_str(HOSTD_FILTER_JSON).unwrap();
        let listed: Vec<&str> = filters["hostd"]["filter"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["syscall"].as_str().unwrap())
            .collect();
        for forbidden in [
            "mount",
            "umount2",
            "pivot_root",
            "init_module",
            "finit_module",
            "kexec_load",
            "bpf",
            "perf_event_open",
            "ptrace",
            "process_vm_writev",
            "keyctl",
            "add_key",
            "userfaultfd",
            "io_uring_setup",
            "unshare",
            "chroot",
            "reboot",
            "swapon",
        ] {
            assert!(
                !listed.contains(&forbidden),
                "hostd.json allows {forbidden}"
            );
        }
    }
}

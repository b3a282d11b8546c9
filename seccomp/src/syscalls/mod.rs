//! Syscall names and numbers for the architectures Berth runs on.
//!
//! Docker's profile format names syscalls, BPF matches numbers, and a name that means
//! nothing on an architecture must be noticed rather than silently dropped. The tables
//! are generated from the kernel headers by `seccomp/tools/gen_syscall_tables.py` and
//! cross-checked against the tables `seccompiler` ships (which `hostd.json` is compiled
//! with), so both halves of this crate agree on every number.

mod aarch64;
mod x86_64;

use std::fmt;

/// A CPU architecture we build filters for (64-bit native ABI only: no compat ABIs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture this crate was compiled for, if it is one we support.
    pub fn native() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The libseccomp name used in Docker profiles' `archMap`.
    pub fn scmp_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "SCMP_ARCH_X86_64",
            Arch::Aarch64 => "SCMP_ARCH_AARCH64",
        }
    }

    /// The Go architecture name Docker compares `includes.arches` against.
    pub fn go_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    pub fn from_scmp_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.scmp_name() == name)
    }

    pub fn seccompiler(self) -> seccompiler::TargetArch {
        match self {
            Arch::X86_64 => seccompiler::TargetArch::x86_64,
            Arch::Aarch64 => seccompiler::TargetArch::aarch64,
        }
    }

    fn table(self) -> &'static [(&'static str, i64)] {
        match self {
            Arch::X86_64 => x86_64::TABLE,
            Arch::Aarch64 => aarch64::TABLE,
        }
    }

    /// The syscall number of `name` on this architecture.
    pub fn number(self, name: &str) -> Option<i64> {
        let table = self.table();
        table
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| table[i].1)
    }

    /// The name of syscall number `nr` on this architecture.
    pub fn name(self, nr: i64) -> Option<&'static str> {
        self.table().iter().find(|(_, n)| *n == nr).map(|(n, _)| *n)
    }

    /// Every syscall name of this architecture, sorted.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        self.table().iter().map(|(n, _)| *n)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// Whether any supported architecture has a syscall called `name`.
pub fn is_known(name: &str) -> bool {
    Arch::ALL.into_iter().any(|a| a.number(name).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_unique() {
        for arch in Arch::ALL {
            let names: Vec<_> = arch.names().collect();
            assert!(
                names.windows(2).all(|w| w[0] < w[1]),
                "{arch} table unsorted"
            );
            let mut numbers: Vec<_> = arch.table().iter().map(|(_, n)| *n).collect();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), names.len(), "{arch} has a duplicate number");
        }
    }

    #[test]
    fn well_known_numbers() {
        assert_eq!(Arch::X86_64.number("read"), Some(0));
        assert_eq!(Arch::X86_64.number("clone3"), Some(435));
        assert_eq!(Arch::X86_64.number("io_uring_setup"), Some(425));
        assert_eq!(Arch::Aarch64.number("openat"), Some(56));
        assert_eq!(Arch::Aarch64.number("open"), None, "arm64 has only openat");
        assert_eq!(Arch::Aarch64.number("clone3"), Some(435));
        assert_eq!(Arch::X86_64.name(321), Some("bpf"));
    }

    #[test]
    fn native_table_matches_libc() {
        let Some(arch) = Arch::native() else { return };
        for (name, nr) in [
            ("keyctl", libc::SYS_keyctl),
            ("unshare", libc::SYS_unshare),
            ("perf_event_open", libc::SYS_perf_event_open),
            ("userfaultfd", libc::SYS_userfaultfd),
            ("socket", libc::SYS_socket),
            ("personality", libc::SYS_personality),
        ] {
            assert_eq!(arch.number(name), Some(nr), "{name}");
        }
    }
}

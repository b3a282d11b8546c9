//! A profile resolved for one runtime: one architecture, one capability set, one kernel.
//!
//! Docker decides per container which rules of a profile apply (`includes` and
//! `excludes` by capabilities, architecture and kernel version) and hands the rest to
//! libseccomp. To apply the same policy outside Docker, or to reason about it, we make
//! that decision ourselves. Berth's runtime is fixed: every capability dropped, on the
//! host's native architecture. The result also answers "what happens to this call?"
//! ([`ResolvedProfile::evaluate`]), which the tests hold against the real kernel.

use std::{collections::BTreeMap, fmt};

use crate::{
    profile::{Action, ArgCondition, CmpOp, Condition, Profile},
    syscalls::Arch,
};

/// `EPERM`: what libseccomp and runc return for `SCMP_ACT_ERRNO` without an `errnoRet`.
pub const DEFAULT_ERRNO: u32 = 1;

/// Every capability name Docker's profiles may mention, in kernel order.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The Go architecture names moby compares `includes.arches` with (its `runtime.GOARCH`
/// plus the historical names its own default profile uses).
pub const GO_ARCH_NAMES: [&str; 16] = [
    "386", "amd64", "x86", "x32", "arm", "arm64", "ppc64", "ppc64le", "s390", "s390x", "mips",
    "mipsle", "mips64", "mips64le", "riscv64", "loong64",
];

/// The container a profile is resolved for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub arch: Arch,
    /// Capabilities in the container's bounding set (Docker's test for `caps`).
    pub caps: Vec<String>,
    pub kernel: KernelVersion,
}

/// `major.minor`, the precision of moby's `minKernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

/// What the kernel does with a call: an action with its data, as installed in BPF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Allow,
    Log,
    Trace(u32),
    Notify,
    Errno(u32),
    Trap,
    KillThread,
    KillProcess,
}

/// One rule that survived resolution, for one syscall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRule {
    /// AND-ed conditions; empty means "any arguments".
    pub args: Vec<ArgCondition>,
    pub verdict: Verdict,
    /// Index into the profile's `syscalls`, for messages.
    pub rule_index: usize,
    pub comment: String,
}

/// A profile with includes/excludes decided and names turned into this arch's numbers.
#[derive(Debug, Clone)]
pub struct ResolvedProfile {
    pub runtime: Runtime,
    pub default: Verdict,
    /// By syscall name; only names that exist on `runtime.arch`.
    pub rules: BTreeMap<&'static str, Vec<ResolvedRule>>,
    /// Names the profile lists that this architecture does not have (libseccomp, and
    /// therefore Docker, skips them the same way).
    pub absent_here: Vec<String>,
}

// === impl Runtime ===

impl Runtime {
    /// Berth's workspace containers: `CapDrop: ["ALL"]`, on `arch`, on the AMI's kernel
    /// line (Amazon Linux 2023's 6.1 is the oldest we support).
    pub fn workspace(arch: Arch) -> Runtime {
        Runtime {
            arch,
            caps: Vec::new(),
            kernel: KernelVersion { major: 6, minor: 1 },
        }
    }

    /// The workspace runtime on the architecture this crate was built for.
    pub fn workspace_native() -> Option<Runtime> {
        Arch::native().map(Runtime::workspace)
    }

    fn has_cap(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c == cap)
    }

    /// moby's test: every `includes` item must hold, and no `excludes` item may.
    pub fn applies(&self, includes: &Condition, excludes: &Condition) -> bool {
        let go = self.arch.go_name();
        let included = includes.caps.iter().all(|c| self.has_cap(c))
            && (includes.arches.is_empty() || includes.arches.iter().any(|a| a == go))
            && includes
                .min_kernel
                .as_deref()
                .is_none_or(|k| KernelVersion::parse(k).is_some_and(|k| self.kernel >= k));
        let excluded = excludes.caps.iter().any(|c| self.has_cap(c))
            || excludes.arches.iter().any(|a| a == go)
            || excludes
                .min_kernel
                .as_deref()
                .is_some_and(|k| KernelVersion::parse(k).is_some_and(|k| self.kernel >= k));
        included && !excluded
    }
}

// === impl KernelVersion ===

impl KernelVersion {
    /// Parses moby's `"4.8"` form (a third component, if any, is ignored like moby does).
    pub fn parse(text: &str) -> Option<KernelVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

// === impl Verdict ===

impl Verdict {
    /// The verdict a profile action stands for, with runc's defaults for missing data.
    pub fn from_action(action: Action, errno_ret: Option<u32>) -> Verdict {
        match action {
            Action::Allow => Verdict::Allow,
            Action::Log => Verdict::Log,
            Action::Notify => Verdict::Notify,
            Action::Errno => Verdict::Errno(errno_ret.unwrap_or(DEFAULT_ERRNO)),
            Action::Trace => Verdict::Trace(errno_ret.unwrap_or(DEFAULT_ERRNO)),
            Action::Trap => Verdict::Trap,
            Action::Kill | Action::KillThread => Verdict::KillThread,
            Action::KillProcess => Verdict::KillProcess,
        }
    }

    /// The kernel's precedence when several filters answer (higher wins; see seccomp(2)).
    pub fn precedence(self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::Log => 1,
            Verdict::Trace(_) => 2,
            Verdict::Notify => 3,
            Verdict::Errno(_) => 4,
            Verdict::Trap => 5,
            Verdict::KillThread => 6,
            Verdict::KillProcess => 7,
        }
    }

    /// Whether the call goes ahead (possibly logged or traced).
    pub fn runs(self) -> bool {
        matches!(self, Verdict::Allow | Verdict::Log | Verdict::Trace(_))
    }

    pub fn seccompiler(self) -> Option<seccompiler::SeccompAction> {
        use seccompiler::SeccompAction as A;
        Some(match self {
            Verdict::Allow => A::Allow,
            Verdict::Log => A::Log,
            Verdict::Trace(d) => A::Trace(d),
            Verdict::Notify => return None,
            Verdict::Errno(e) => A::Errno(e),
            Verdict::Trap => A::Trap,
            Verdict::KillThread => A::KillThread,
            Verdict::KillProcess => A::KillProcess,
        })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allow => f.write_str("allow"),
            Verdict::Log => f.write_str("log"),
            Verdict::Trace(d) => write!(f, "trace({d})"),
            Verdict::Notify => f.write_str("notify"),
            Verdict::Errno(e) => match errno_name(*e) {
                Some(name) => f.write_str(name),
                None => write!(f, "errno {e}"),
            },
            Verdict::Trap => f.write_str("trap"),
            Verdict::KillThread => f.write_str("kill thread"),
            Verdict::KillProcess => f.write_str("kill process"),
        }
    }
}

/// Names for the errnos a profile is likely to return.
pub fn errno_name(errno: u32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        13 => "EACCES",
        22 => "EINVAL",
        38 => "ENOSYS",
        93 => "EPROTONOSUPPORT",
        95 => "EOPNOTSUPP",
        97 => "EAFNOSUPPORT",
        _ => return None,
    })
}

// === impl ResolvedProfile ===

impl ResolvedProfile {
    /// Decides includes/excludes for `runtime` and keeps the rules that apply.
    ///
    /// Does not judge the profile; [`crate::validate`] does, using this.
    pub fn resolve(profile: &Profile, runtime: &Runtime) -> ResolvedProfile {
        let default = Verdict::from_action(profile.default_action, profile.default_errno_ret);
        let mut rules: BTreeMap<&'static str, Vec<ResolvedRule>> = BTreeMap::new();
        let mut absent_here = Vec::new();
        for (rule_index, rule) in profile.syscalls.iter().enumerate() {
            if !runtime.applies(&rule.includes, &rule.excludes) {
                continue;
            }
            let verdict = Verdict::from_action(rule.action, rule.errno_ret);
            for name in rule.all_names() {
                let Some(nr) = runtime.arch.number(name) else {
                    absent_here.push(name.to_owned());
                    continue;
                };
                let name = runtime.arch.name(nr).unwrap_or("?");
                rules.entry(name).or_default().push(ResolvedRule {
                    args: rule.args.clone(),
                    verdict,
                    rule_index,
                    comment: rule.comment.clone(),
                });
            }
        }
        absent_here.sort();
        absent_here.dedup();
        ResolvedProfile {
            runtime: runtime.clone(),
            default,
            rules,
            absent_here,
        }
    }

    /// What the kernel will do with `name(args)` once this profile is installed: the
    /// strongest verdict among matching rules, else the default.
    pub fn evaluate(&self, name: &str, args: [u64; 6]) -> Verdict {
        self.rules
            .get(name)
            .into_iter()
            .flatten()
            .filter(|r| r.args.iter().all(|c| condition_holds(c, &args)))
            .map(|r| r.verdict)
            .max_by_key(|v| v.precedence())
            .unwrap_or(self.default)
    }

    /// How a syscall is treated, summarised for people (the report's view).
    pub fn treatment(&self, name: &str) -> Treatment {
        let rules: Vec<&ResolvedRule> = self.rules.get(name).into_iter().flatten().collect();
        if let Some(r) = rules.iter().find(|r| r.args.is_empty()) {
            return Treatment::Always(r.verdict);
        }
        if rules.iter().all(|r| r.verdict == self.default) {
            return Treatment::Always(self.default);
        }
        Treatment::ByArguments {
            when: rules
                .iter()
                .filter(|r| r.verdict != self.default)
                .map(|r| (r.verdict, r.args.clone()))
                .collect(),
            otherwise: self.default,
        }
    }

    /// The comments of the rules that decide `name`, first the unconditional ones.
    pub fn reasons(&self, name: &str) -> Vec<&str> {
        let mut rules: Vec<&ResolvedRule> = self.rules.get(name).into_iter().flatten().collect();
        rules.sort_by_key(|r| !r.args.is_empty());
        let mut out: Vec<&str> = Vec::new();
        for r in rules {
            if !r.comment.is_empty() && !out.contains(&r.comment.as_str()) {
                out.push(&r.comment);
            }
        }
        out
    }
}

/// A syscall's treatment under a resolved profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Treatment {
    Always(Verdict),
    /// These argument patterns (each AND-ed) get these verdicts; anything else the default.
    ByArguments {
        when: Vec<(Verdict, Vec<ArgCondition>)>,
        otherwise: Verdict,
    },
}

impl Treatment {
    /// Whether some call of this syscall runs.
    pub fn allows_some(&self) -> bool {
        match self {
            Treatment::Always(v) => v.runs(),
            Treatment::ByArguments { when, otherwise } => {
                otherwise.runs() || when.iter().any(|(v, _)| v.runs())
            }
        }
    }
}

impl fmt::Display for Treatment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Treatment::Always(v) => write!(f, "{v}"),
            Treatment::ByArguments { when, otherwise } => {
                let mut verdicts: Vec<Verdict> = when.iter().map(|(v, _)| *v).collect();
                verdicts.dedup();
                for v in verdicts {
                    let alternatives: Vec<String> = when
                        .iter()
                        .filter(|(w, _)| *w == v)
                        .map(|(_, args)| {
                            let c: Vec<String> = args.iter().map(ToString::to_string).collect();
                            c.join(" && ")
                        })
                        .collect();
                    write!(f, "{v} if {}; ", alternatives.join(" or "))?;
                }
                write!(f, "else {otherwise}")
            }
        }
    }
}

/// libseccomp's comparison on 64-bit arguments (the BPF we generate compares qwords too).
pub fn condition_holds(c: &ArgCondition, args: &[u64; 6]) -> bool {
    let Some(&arg) = args.get(c.index as usize) else {
        return false;
    };
    match c.op {
        CmpOp::Ne => arg != c.value,
        CmpOp::Lt => arg < c.value,
        CmpOp::Le => arg <= c.value,
        CmpOp::Eq => arg == c.value,
        CmpOp::Ge => arg >= c.value,
        CmpOp::Gt => arg > c.value,
        CmpOp::MaskedEq => arg & c.value == c.value_two,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::SyscallRule;

    fn rule(names: &[&str], action: Action) -> SyscallRule {
        SyscallRule {
            name: None,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            action,
            errno_ret: None,
            args: Vec::new(),
            comment: String::new(),
            includes: Condition::default(),
            excludes: Condition::default(),
        }
    }

    #[test]
    fn includes_and_excludes_follow_moby() {
        let rt = Runtime::workspace(Arch::X86_64);
        let sys_admin = Condition {
            caps: vec!["CAP_SYS_ADMIN".into()],
            ..Condition::default()
        };
        assert!(!rt.applies(&sys_admin, &Condition::default()));
        assert!(rt.applies(&Condition::default(), &sys_admin));
        let amd64 = Condition {
            arches: vec!["amd64".into(), "x32".into()],
            ..Condition::default()
        };
        assert!(rt.applies(&amd64, &Condition::default()));
        assert!(!Runtime::workspace(Arch::Aarch64).applies(&amd64, &Condition::default()));
        let new_kernel = Condition {
            min_kernel: Some("6.9".into()),
            ..Condition::default()
        };
        assert!(!rt.applies(&new_kernel, &Condition::default()));
        let old_kernel = Condition {
            min_kernel: Some("4.8".into()),
            ..Condition::default()
        };
        assert!(rt.applies(&old_kernel, &Condition::default()));
    }

    #[test]
    fn evaluate_picks_the_strongest_match() {
        let mut socket_allow = rule(&["socket"], Action::Allow);
        socket_allow.args = vec![ArgCondition {
            index: 0,
            value: 1,
            value_two: 0,
            op: CmpOp::Eq,
        }];
        let mut clone3 = rule(&["clone3"], Action::Errno);
        clone3.errno_ret = Some(38);
        let profile = Profile {
            default_action: Action::Errno,
            default_errno_ret: Some(1),
            architectures: vec!["SCMP_ARCH_X86_64".into()],
            arch_map: Vec::new(),
            syscalls: vec![rule(&["read", "open"], Action::Allow), socket_allow, clone3],
            flags: Vec::new(),
            listener_path: None,
            listener_metadata: None,
        };
        let x86 = ResolvedProfile::resolve(&profile, &Runtime::workspace(Arch::X86_64));
        assert_eq!(x86.evaluate("read", [0; 6]), Verdict::Allow);
        assert_eq!(x86.evaluate("socket", [1, 0, 0, 0, 0, 0]), Verdict::Allow);
        assert_eq!(
            x86.evaluate("socket", [38, 0, 0, 0, 0, 0]),
            Verdict::Errno(1)
        );
        assert_eq!(x86.evaluate("clone3", [0; 6]), Verdict::Errno(38));
        assert_eq!(x86.evaluate("keyctl", [0; 6]), Verdict::Errno(1));
        let arm = ResolvedProfile::resolve(&profile, &Runtime::workspace(Arch::Aarch64));
        assert_eq!(arm.absent_here, ["open"]);
    }

    #[test]
    fn masked_eq_compares_the_masked_bits() {
        let c = ArgCondition {
            index: 0,
            value: 0x7E02_0000,
            value_two: 0,
            op: CmpOp::MaskedEq,
        };
        assert!(condition_holds(&c, &[0x0111_0000 | 17, 0, 0, 0, 0, 0]));
        assert!(
            !condition_holds(&c, &[0x1000_0000, 0, 0, 0, 0, 0]),
            "CLONE_NEWUSER"
        );
    }
}

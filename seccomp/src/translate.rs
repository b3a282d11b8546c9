//! Turns a resolved Docker-format profile into `seccompiler` BPF, so the workspace
//! policy can be applied outside Docker (tests, a future non-Docker runtime) and proven
//! against the real kernel.
//!
//! Why several filters: a `seccompiler` filter has exactly one match action and one
//! mismatch action, while a Docker profile gives each rule its own action (allow,
//! `ENOSYS` for `clone3`, `EPROTONOSUPPORT` for some netlink sockets, `EPERM` for the
//! rest). The kernel runs every installed filter and keeps the highest-precedence
//! answer (seccomp(2)), so one profile becomes a stack:
//!
//! * the **base** filter matches every syscall that has a rule with a verdict other
//!   than the default, answers `allow` on a match and the default verdict otherwise;
//! * one filter per other verdict `V` (e.g. `errno 38`) matches exactly the rules with
//!   verdict `V`, answers `V` on a match and `allow` otherwise.
//!
//! A call matching a `V` rule gets `allow` from the base and `V` from its filter, and
//! `V` wins; a call matching nothing gets the default from the base and `allow` from
//! the rest. This is exact only because [`crate::validate`] refuses rules with
//! different verdicts that can match the same call, so no two filters ever disagree
//! with equal precedence. Arguments are compared as 64-bit values, as libseccomp does.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule,
};

use crate::{
    profile::{ArgCondition, CmpOp},
    resolve::{ResolvedProfile, ResolvedRule, Verdict},
    syscalls::Arch,
};

/// One program of the stack, with what it is for.
#[derive(Debug, Clone)]
pub struct StackedFilter {
    /// `"base"` or the verdict it carries, e.g. `"ENOSYS"`.
    pub purpose: String,
    pub program: BpfProgram,
}

/// The BPF stack for one resolved profile; install with [`CompiledProfile::apply`].
#[derive(Debug, Clone)]
pub struct CompiledProfile {
    pub arch: Arch,
    /// In installation order: the base filter is last, so that until it is in place
    /// the `seccomp` and `prctl` calls that install the others are still allowed.
    pub filters: Vec<StackedFilter>,
}

/// Why a profile could not become BPF.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// `SCMP_ACT_NOTIFY` needs a user-space agent; nothing here provides one.
    #[error("syscalls[{rule}] (`{name}`) uses SCMP_ACT_NOTIFY, which has no BPF-only meaning")]
    Notify { rule: usize, name: String },
    #[error("the default action SCMP_ACT_NOTIFY has no BPF-only meaning")]
    DefaultNotify,
    /// `seccompiler` refused a condition or the filter (too long, bad index...).
    #[error("cannot build the {purpose} filter for {arch}: {source}")]
    Backend {
        arch: Arch,
        purpose: String,
        #[source]
        source: BackendError,
    },
}

/// Why a compiled profile could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{arch} filters cannot be installed on this {native} machine")]
    WrongArch { arch: Arch, native: String },
    #[error("installing the {purpose} filter failed: {source}")]
    Install {
        purpose: String,
        #[source]
        source: seccompiler::Error,
    },
}

/// Builds the filter stack for `resolved` (see the module docs for the scheme).
pub fn compile(resolved: &ResolvedProfile) -> Result<CompiledProfile, TranslateError> {
    let arch = resolved.runtime.arch;
    let default = resolved.default;
    if default == Verdict::Notify {
        return Err(TranslateError::DefaultNotify);
    }
    // Verdict → syscall number → rules with that verdict.
    let mut by_verdict: BTreeMap<Verdict, BTreeMap<i64, Vec<&ResolvedRule>>> = BTreeMap::new();
    // Syscalls whose non-default rules the base filter must let through.
    let mut base: BTreeMap<i64, Vec<&ResolvedRule>> = BTreeMap::new();
    for (name, rules) in &resolved.rules {
        let Some(nr) = arch.number(name) else {
            continue;
        };
        for rule in rules {
            if rule.verdict == Verdict::Notify {
                return Err(TranslateError::Notify {
                    rule: rule.rule_index,
                    name: (*name).to_owned(),
                });
            }
            if rule.verdict == default {
                continue;
            }
            base.entry(nr).or_default().push(rule);
            if rule.verdict != Verdict::Allow {
                by_verdict
                    .entry(rule.verdict)
                    .or_default()
                    .entry(nr)
                    .or_default()
                    .push(rule);
            }
        }
    }

    let mut filters = Vec::new();
    for (verdict, rules) in by_verdict {
        let purpose = verdict.to_string();
        let action = verdict.seccompiler().unwrap_or(SeccompAction::Allow);
        let program = build(arch, &purpose, rules, SeccompAction::Allow, action)?;
        filters.push(StackedFilter { purpose, program });
    }
    // With an allow-by-default profile the base filter would say "allow" both ways.
    if default != Verdict::Allow {
        let mismatch = default.seccompiler().unwrap_or(SeccompAction::Allow);
        let program = build(arch, "base", base, mismatch, SeccompAction::Allow)?;
        filters.push(StackedFilter {
            purpose: "base".to_owned(),
            program,
        });
    }
    Ok(CompiledProfile { arch, filters })
}

fn build(
    arch: Arch,
    purpose: &str,
    rules: BTreeMap<i64, Vec<&ResolvedRule>>,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, TranslateError> {
    let backend = |source| TranslateError::Backend {
        arch,
        purpose: purpose.to_owned(),
        source,
    };
    let mut chains: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, rules) in rules {
        // An unconditional rule matches every call: the chain must be empty ("any").
        let chain = if rules.iter().any(|r| r.args.is_empty()) {
            Vec::new()
        } else {
            rules
                .iter()
                .map(|r| {
                    let conditions = r
                        .args
                        .iter()
                        .map(condition)
                        .collect::<Result<Vec<_>, _>>()?;
                    SeccompRule::new(conditions)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?
        };
        chains.insert(nr, chain);
    }
    let filter =
        SeccompFilter::new(chains, mismatch, on_match, arch.seccompiler()).map_err(backend)?;
    BpfProgram::try_from(filter).map_err(backend)
}

fn condition(c: &ArgCondition) -> Result<SeccompCondition, BackendError> {
    let (op, value) = match c.op {
        CmpOp::Ne => (SeccompCmpOp::Ne, c.value),
        CmpOp::Lt => (SeccompCmpOp::Lt, c.value),
        CmpOp::Le => (SeccompCmpOp::Le, c.value),
        CmpOp::Eq => (SeccompCmpOp::Eq, c.value),
        CmpOp::Ge => (SeccompCmpOp::Ge, c.value),
        CmpOp::Gt => (SeccompCmpOp::Gt, c.value),
        // libseccomp: `value` is the mask, `valueTwo` the expected masked value.
        CmpOp::MaskedEq => (SeccompCmpOp::MaskedEq(c.value), c.value_two),
    };
    let index = u8::try_from(c.index).map_err(|_| BackendError::InvalidArgumentNumber)?;
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
}

// === impl CompiledProfile ===

impl CompiledProfile {
    /// Installs the stack on the calling thread (and so on every process it forks or
    /// execs). Sets `no_new_privs`, as an unprivileged process must.
    pub fn apply(&self) -> Result<(), ApplyError> {
        self.install(seccompiler::apply_filter)
    }

    /// Installs the stack on every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`).
    pub fn apply_all_threads(&self) -> Result<(), ApplyError> {
        self.install(seccompiler::apply_filter_all_threads)
    }

    fn install(
        &self,
        apply: fn(seccompiler::BpfProgramRef<'_>) -> Result<(), seccompiler::Error>,
    ) -> Result<(), ApplyError> {
        if Arch::native() != Some(self.arch) {
            return Err(ApplyError::WrongArch {
                arch: self.arch,
                native: std::env::consts::ARCH.to_owned(),
            });
        }
        for f in &self.filters {
            apply(&f.program).map_err(|source| ApplyError::Install {
                purpose: f.purpose.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Total BPF instructions the kernel runs through, at most, per syscall.
    pub fn instruction_count(&self) -> usize {
        self.filters.iter().map(|f| f.program.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Runtime;

    #[test]
    fn workspace_profile_compiles_for_both_arches() {
        let profile = crate::workspace_profile().unwrap();
        for arch in Arch::ALL {
            let resolved = ResolvedProfile::resolve(&profile, &Runtime::workspace(arch));
            let compiled = compile(&resolved).unwrap();
            let purposes: Vec<_> = compiled
                .filters
                .iter()
                .map(|f| f.purpose.as_str())
                .collect();
            assert_eq!(purposes, ["ENOSYS", "EPROTONOSUPPORT", "base"], "{arch}");
            assert!(compiled.instruction_count() < 4096, "{arch}");
        }
    }

    #[test]
    fn notify_is_refused_with_its_rule() {
        let profile = crate::profile::Profile::parse(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                             {"names": ["openat"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "t",
        )
        .unwrap();
        let resolved = ResolvedProfile::resolve(&profile, &Runtime::workspace(Arch::X86_64));
        let err = compile(&resolved).unwrap_err().to_string();
        assert!(
            err.contains("syscalls[1]") && err.contains("openat"),
            "{err}"
        );
    }
}

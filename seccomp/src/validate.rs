//! Checks a Docker-format profile before anyone relies on it.
//!
//! Docker and runc are lenient: an unknown syscall name is skipped, a repeated argument
//! index silently turns a rule's AND into an OR, two rules for one call with different
//! actions are resolved by libseccomp's tree in ways nobody reviews. A security policy
//! must not depend on any of that, so every such case is a [`Problem`] here, and
//! [`check`] reports all of them at once so a reviewer fixes a profile in one pass.

use std::{collections::HashMap, fmt};

use crate::{
    profile::{ArgCondition, CmpOp, Condition, ParseError, Profile},
    resolve::{CAPABILITIES, GO_ARCH_NAMES, KernelVersion, ResolvedProfile, Runtime, Verdict},
    syscalls::{self, Arch},
};

/// The architecture names libseccomp knows (`SCMP_ARCH_*`).
pub const SCMP_ARCHES: [&str; 19] = [
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
];

/// Largest errno a filter can return meaningfully (the kernel's `MAX_ERRNO`).
pub const MAX_ERRNO: u32 = 4095;

/// One thing wrong with a profile. `syscalls[N]` is the rule's index in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the profile names no architecture (archMap or architectures)")]
    NoArchitectures,
    #[error("architecture `{arch}` is not a libseccomp architecture (SCMP_ARCH_*)")]
    UnknownArchitecture { arch: String },
    #[error("architecture `{arch}` is listed more than once")]
    DuplicateArchitecture { arch: String },
    #[error("defaultErrnoRet {value} is outside 1..={MAX_ERRNO}")]
    DefaultErrnoOutOfRange { value: u32 },
    #[error("defaultErrnoRet is set but defaultAction {action} returns no errno")]
    DefaultErrnoWithoutErrnoAction { action: String },
    #[error("syscalls[{rule}] names no syscall")]
    NoNames { rule: usize },
    #[error("syscalls[{rule}]: `{name}` is not a syscall on x86_64 or aarch64")]
    UnknownSyscall { rule: usize, name: String },
    #[error("syscalls[{rule}]: `{name}` is listed twice in the rule")]
    NameRepeated { rule: usize, name: String },
    #[error("syscalls[{rule}]: errnoRet {value} is outside 1..={MAX_ERRNO}")]
    ErrnoOutOfRange { rule: usize, value: u32 },
    #[error("syscalls[{rule}]: errnoRet is set but {action} returns no errno (runc refuses it)")]
    ErrnoWithoutErrnoAction { rule: usize, action: String },
    #[error("syscalls[{rule}]: argument index {index} is beyond the six syscall arguments")]
    ArgIndexOutOfRange { rule: usize, index: u32 },
    #[error(
        "syscalls[{rule}]: argument {index} is compared more than once; runc then ORs every \
         condition of the rule instead of ANDing them"
    )]
    RepeatedArgIndex { rule: usize, index: u32 },
    #[error("syscalls[{rule}]: valueTwo on argument {index} is only read by SCMP_CMP_MASKED_EQ")]
    ValueTwoIgnored { rule: usize, index: u32 },
    #[error("syscalls[{rule}]: `{cap}` is not a capability")]
    UnknownCapability { rule: usize, cap: String },
    #[error("syscalls[{rule}]: `{arch}` is not an architecture name Docker compares with")]
    UnknownArchName { rule: usize, arch: String },
    #[error("syscalls[{rule}]: minKernel `{value}` is not `major.minor`")]
    BadMinKernel { rule: usize, value: String },
    #[error(
        "syscalls[{first}] and syscalls[{second}] both give `{name}` the same verdict under \
         the same conditions"
    )]
    DuplicateRule {
        name: String,
        first: usize,
        second: usize,
    },
    #[error(
        "syscalls[{first}] ({first_verdict}) and syscalls[{second}] ({second_verdict}) give \
         `{name}` different verdicts under the same conditions"
    )]
    ConflictingRules {
        name: String,
        first: usize,
        first_verdict: String,
        second: usize,
        second_verdict: String,
    },
    #[error(
        "on {arch} with every capability dropped, syscalls[{first}] ({first_verdict}) and \
         syscalls[{second}] ({second_verdict}) can both match `{name}`; make their argument \
         conditions disjoint"
    )]
    AmbiguousRules {
        arch: Arch,
        name: String,
        first: usize,
        first_verdict: String,
        second: usize,
        second_verdict: String,
    },
}

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Every problem found, one per line.
    #[error("{source_name} has {} problem(s):\n{}", problems.len(), ProblemList(problems))]
    Invalid {
        source_name: String,
        problems: Vec<Problem>,
    },
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// Parses and checks a profile; the text's `source_name` is named in every error.
pub fn load(text: &str, source_name: &str) -> Result<Profile, ProfileError> {
    let profile = Profile::parse(text, source_name)?;
    let problems = check(&profile);
    if problems.is_empty() {
        Ok(profile)
    } else {
        Err(ProfileError::Invalid {
            source_name: source_name.to_owned(),
            problems,
        })
    }
}

/// Every problem of `profile`; empty means it is fit to use.
///
/// Rule overlap is judged after resolution for Berth's runtime (all capabilities
/// dropped) on each supported architecture the profile names.
pub fn check(profile: &Profile) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_architectures(profile, &mut problems);
    check_default(profile, &mut problems);
    for (rule, entry) in profile.syscalls.iter().enumerate() {
        check_rule(rule, entry, &mut problems);
    }
    check_duplicates(profile, &mut problems);
    for (arch, _) in profile.architecture_entries() {
        if let Some(arch) = Arch::from_scmp_name(&arch) {
            let resolved = ResolvedProfile::resolve(profile, &Runtime::workspace(arch));
            check_overlaps(&resolved, &mut problems);
        }
    }
    problems
}

fn check_architectures(profile: &Profile, problems: &mut Vec<Problem>) {
    let entries = profile.architecture_entries();
    if entries.is_empty() {
        problems.push(Problem::NoArchitectures);
    }
    let mut seen = Vec::new();
    for (arch, subs) in entries {
        for a in std::iter::once(arch).chain(subs) {
            if !SCMP_ARCHES.contains(&a.as_str()) {
                problems.push(Problem::UnknownArchitecture { arch: a });
            } else if seen.contains(&a) {
                problems.push(Problem::DuplicateArchitecture { arch: a });
            } else {
                seen.push(a);
            }
        }
    }
}

fn check_default(profile: &Profile, problems: &mut Vec<Problem>) {
    if let Some(value) = profile.default_errno_ret {
        if !profile.default_action.takes_errno() {
            problems.push(Problem::DefaultErrnoWithoutErrnoAction {
                action: profile.default_action.to_string(),
            });
        } else if !(1..=MAX_ERRNO).contains(&value) {
            problems.push(Problem::DefaultErrnoOutOfRange { value });
        }
    }
}

fn check_rule(rule: usize, entry: &crate::profile::SyscallRule, problems: &mut Vec<Problem>) {
    let names: Vec<&str> = entry.all_names().collect();
    if names.is_empty() {
        problems.push(Problem::NoNames { rule });
    }
    for (i, name) in names.iter().enumerate() {
        if !syscalls::is_known(name) {
            problems.push(Problem::UnknownSyscall {
                rule,
                name: (*name).to_owned(),
            });
        }
        if names[..i].contains(name) {
            problems.push(Problem::NameRepeated {
                rule,
                name: (*name).to_owned(),
            });
        }
    }
    if let Some(value) = entry.errno_ret {
        if !entry.action.takes_errno() {
            problems.push(Problem::ErrnoWithoutErrnoAction {
                rule,
                action: entry.action.to_string(),
            });
        } else if !(1..=MAX_ERRNO).contains(&value) {
            problems.push(Problem::ErrnoOutOfRange { rule, value });
        }
    }
    let mut seen_index = Vec::new();
    for arg in &entry.args {
        if arg.index > 5 {
            problems.push(Problem::ArgIndexOutOfRange {
                rule,
                index: arg.index,
            });
        }
        if seen_index.contains(&arg.index) {
            problems.push(Problem::RepeatedArgIndex {
                rule,
                index: arg.index,
            });
        }
        seen_index.push(arg.index);
        if arg.value_two != 0 && arg.op != CmpOp::MaskedEq {
            problems.push(Problem::ValueTwoIgnored {
                rule,
                index: arg.index,
            });
        }
    }
    for cond in [&entry.includes, &entry.excludes] {
        check_condition(rule, cond, problems);
    }
}

fn check_condition(rule: usize, cond: &Condition, problems: &mut Vec<Problem>) {
    for cap in &cond.caps {
        if !CAPABILITIES.contains(&cap.as_str()) {
            problems.push(Problem::UnknownCapability {
                rule,
                cap: cap.clone(),
            });
        }
    }
    for arch in &cond.arches {
        if !GO_ARCH_NAMES.contains(&arch.as_str()) {
            problems.push(Problem::UnknownArchName {
                rule,
                arch: arch.clone(),
            });
        }
    }
    if let Some(k) = &cond.min_kernel
        && KernelVersion::parse(k).is_none()
    {
        problems.push(Problem::BadMinKernel {
            rule,
            value: k.clone(),
        });
    }
}

/// Same name, same arguments, same includes/excludes: a copy (same verdict) or a
/// contradiction (different verdicts), whatever the runtime.
fn check_duplicates(profile: &Profile, problems: &mut Vec<Problem>) {
    type Key<'a> = (&'a str, Vec<ArgCondition>, &'a Condition, &'a Condition);
    let mut seen: HashMap<Key<'_>, (usize, Verdict)> = HashMap::new();
    for (rule, entry) in profile.syscalls.iter().enumerate() {
        let verdict = Verdict::from_action(entry.action, entry.errno_ret);
        let mut args = entry.args.clone();
        args.sort();
        for name in entry.all_names() {
            let key = (name, args.clone(), &entry.includes, &entry.excludes);
            match seen.get(&key) {
                Some(&(first, _)) if first == rule => {}
                Some(&(first, first_verdict)) if first_verdict == verdict => {
                    problems.push(Problem::DuplicateRule {
                        name: name.to_owned(),
                        first,
                        second: rule,
                    });
                }
                Some(&(first, first_verdict)) => problems.push(Problem::ConflictingRules {
                    name: name.to_owned(),
                    first,
                    first_verdict: first_verdict.to_string(),
                    second: rule,
                    second_verdict: verdict.to_string(),
                }),
                None => {
                    seen.insert(key, (rule, verdict));
                }
            }
        }
    }
}

/// After resolution, rules with different verdicts for one syscall must be disjoint:
/// otherwise the outcome depends on libseccomp's internals (in Docker) or on filter
/// precedence (in our stacked translation), and a reader cannot tell which.
fn check_overlaps(resolved: &ResolvedProfile, problems: &mut Vec<Problem>) {
    for (name, rules) in &resolved.rules {
        for (i, a) in rules.iter().enumerate() {
            for b in &rules[i + 1..] {
                if a.verdict != b.verdict && may_overlap(&a.args, &b.args) {
                    let problem = Problem::AmbiguousRules {
                        arch: resolved.runtime.arch,
                        name: (*name).to_owned(),
                        first: a.rule_index,
                        first_verdict: a.verdict.to_string(),
                        second: b.rule_index,
                        second_verdict: b.verdict.to_string(),
                    };
                    if !problems.contains(&problem) {
                        problems.push(problem);
                    }
                }
            }
        }
    }
}

/// False only when some argument is constrained by both rules in ways no value meets.
/// Conservative: anything it cannot prove disjoint counts as overlapping.
pub fn may_overlap(a: &[ArgCondition], b: &[ArgCondition]) -> bool {
    !a.iter().any(|x| {
        b.iter()
            .any(|y| x.index == y.index && (disjoint(x, y) || disjoint(y, x)))
    })
}

fn disjoint(x: &ArgCondition, y: &ArgCondition) -> bool {
    let v = x.value;
    match (x.op, y.op) {
        (CmpOp::Eq, CmpOp::Eq) => v != y.value,
        (CmpOp::Eq, CmpOp::Ne) => v == y.value,
        (CmpOp::Eq, CmpOp::MaskedEq) => v & y.value != y.value_two,
        (CmpOp::Eq, CmpOp::Lt) => v >= y.value,
        (CmpOp::Eq, CmpOp::Le) => v > y.value,
        (CmpOp::Eq, CmpOp::Gt) => v <= y.value,
        (CmpOp::Eq, CmpOp::Ge) => v < y.value,
        (CmpOp::MaskedEq, CmpOp::MaskedEq) => {
            let common = x.value & y.value;
            x.value_two & common != y.value_two & common
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> Vec<Problem> {
        check(&Profile::parse(text, "test").unwrap())
    }

    const HEAD: &str = r#""defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}]"#;

    #[test]
    fn the_workspace_profile_is_clean() {
        let profile = Profile::parse(crate::WORKSPACE_PROFILE_JSON, "workspace.json").unwrap();
        assert_eq!(check(&profile), Vec::new());
    }

    #[test]
    fn finds_unknown_names_actions_and_errnos() {
        let p = problems_of(&format!(
            r#"{{{HEAD}, "syscalls": [
                {{"names": ["read", "frobnicate", "read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}},
                {{"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}},
                {{"names": [], "action": "SCMP_ACT_ALLOW"}}
            ]}}"#
        ));
        assert!(p.contains(&Problem::UnknownSyscall {
            rule: 0,
            name: "frobnicate".into()
        }));
        assert!(p.contains(&Problem::NameRepeated {
            rule: 0,
            name: "read".into()
        }));
        assert!(p.contains(&Problem::ErrnoWithoutErrnoAction {
            rule: 0,
            action: "SCMP_ACT_ALLOW".into()
        }));
        assert!(p.contains(&Problem::ErrnoOutOfRange {
            rule: 1,
            value: 70000
        }));
        assert!(p.contains(&Problem::NoNames { rule: 2 }));
    }

    #[test]
    fn finds_duplicates_and_conflicts() {
        let p = problems_of(&format!(
            r#"{{{HEAD}, "syscalls": [
                {{"names": ["read", "ptrace"], "action": "SCMP_ACT_ALLOW"}},
                {{"names": ["read"], "action": "SCMP_ACT_ALLOW"}},
                {{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"}}
            ]}}"#
        ));
        assert!(p.contains(&Problem::DuplicateRule {
            name: "read".into(),
            first: 0,
            second: 1
        }));
        assert!(p.iter().any(|x| matches!(x,
            Problem::ConflictingRules { name, first: 0, second: 2, .. } if name == "ptrace")));
    }

    #[test]
    fn finds_runc_or_trap_and_overlapping_verdicts() {
        let p = problems_of(&format!(
            r#"{{{HEAD}, "syscalls": [
                {{"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [
                    {{"index": 0, "value": 38, "op": "SCMP_CMP_NE"}},
                    {{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}}]}},
                {{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97, "args": [
                    {{"index": 0, "value": 17, "op": "SCMP_CMP_EQ"}}]}}
            ]}}"#
        ));
        assert!(p.contains(&Problem::RepeatedArgIndex { rule: 0, index: 0 }));
        assert!(p.iter().any(|x| matches!(x,
            Problem::AmbiguousRules { name, first: 0, second: 1, .. } if name == "socket")));
    }

    #[test]
    fn disjoint_conditions_are_not_ambiguous() {
        let p = problems_of(&format!(
            r#"{{{HEAD}, "syscalls": [
                {{"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [
                    {{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}},
                    {{"index": 2, "value": 0, "op": "SCMP_CMP_EQ"}}]}},
                {{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 93, "args": [
                    {{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}},
                    {{"index": 2, "value": 0, "op": "SCMP_CMP_NE"}}]}},
                {{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {{"caps": ["CAP_SYS_ADMIN"]}},
                  "args": [{{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}}]}},
                {{"names": ["clone"], "action": "SCMP_ACT_ERRNO", "includes": {{"caps": ["CAP_SYS_ADMIN"]}}}}
            ]}}"#
        ));
        assert_eq!(p, Vec::new());
    }

    #[test]
    fn finds_bad_architectures_and_conditions() {
        let p = problems_of(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1,
                "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86_64"]},
                            {"architecture": "SCMP_ARCH_Z80"}],
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                    "includes": {"caps": ["CAP_SYS_GOD"], "arches": ["amd46"], "minKernel": "six"}}]}"#,
        );
        assert!(p.contains(&Problem::DuplicateArchitecture {
            arch: "SCMP_ARCH_X86_64".into()
        }));
        assert!(p.contains(&Problem::UnknownArchitecture {
            arch: "SCMP_ARCH_Z80".into()
        }));
        assert!(p.contains(&Problem::DefaultErrnoWithoutErrnoAction {
            action: "SCMP_ACT_ALLOW".into()
        }));
        assert!(p.contains(&Problem::UnknownCapability {
            rule: 0,
            cap: "CAP_SYS_GOD".into()
        }));
        assert!(p.contains(&Problem::UnknownArchName {
            rule: 0,
            arch: "amd46".into()
        }));
        assert!(p.contains(&Problem::BadMinKernel {
            rule: 0,
            value: "six".into()
        }));
    }

    #[test]
    fn load_names_the_source_and_every_problem() {
        let err = load(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}"#,
            "empty.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("empty.json has 1 problem(s)"), "{err}");
        assert!(err.contains("names no architecture"), "{err}");
    }
}

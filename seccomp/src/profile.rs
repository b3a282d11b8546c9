//! Docker's seccomp profile format, as typed Rust.
//!
//! The workspace profile is written for the Docker daemon (`seccomp-profile` in
//! `daemon.json`, or `SecurityOpt: ["seccomp=<json>"]` per container), so this is the
//! format of record. Parsing it into types, rather than poking at a `serde_json::Value`,
//! is what lets the rest of the crate check it, resolve it for one runtime and
//! translate it to BPF. Unknown fields are refused so that a typo (`errnoret`) is an
//! error instead of a silently ignored rule.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A whole profile (moby's `types.Seccomp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    pub default_action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Legacy flat list of architectures; `arch_map` wins when both are given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch_map: Vec<ArchMapEntry>,
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
    /// Seccomp flags (`SECCOMP_FILTER_FLAG_*`); accepted, not used by the translation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// For `SCMP_ACT_NOTIFY` agents; accepted so such profiles parse, never used here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_metadata: Option<String>,
}

/// One `archMap` entry: a native architecture and the compat ABIs admitted with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchMapEntry {
    pub architecture: String,
    /// `null` in moby's own file means "none".
    #[serde(default, deserialize_with = "null_as_empty")]
    pub sub_architectures: Vec<String>,
}

/// One entry of `syscalls`: names, an action, and the conditions under which it applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyscallRule {
    /// Older profiles name a single syscall here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<ArgCondition>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    #[serde(default, skip_serializing_if = "Condition::is_empty")]
    pub includes: Condition,
    #[serde(default, skip_serializing_if = "Condition::is_empty")]
    pub excludes: Condition,
}

/// A comparison of one syscall argument (moby's `types.Arg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArgCondition {
    pub index: u32,
    pub value: u64,
    /// Only read by `SCMP_CMP_MASKED_EQ`: the value the masked argument must equal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value_two: u64,
    pub op: CmpOp,
}

/// `includes` / `excludes`: when a rule applies, by capabilities, architecture, kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub caps: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub arches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

/// libseccomp's actions, by their profile names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "SCMP_ACT_KILL")]
    Kill,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
}

/// libseccomp's argument comparisons, by their profile names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CmpOp {
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

/// Why a profile's text could not be read as a profile.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The text is not a Docker seccomp profile (with serde's line and column).
    #[error("{source_name} is not a Docker seccomp profile: {source}")]
    Json {
        source_name: String,
        #[source]
        source: serde_json::Error,
    },
}

// === impl Profile ===

impl Profile {
    /// Parses a profile; `source_name` (a path, or "workspace.json") is named in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Profile, ParseError> {
        serde_json::from_str(text).map_err(|source| ParseError::Json {
            source_name: source_name.to_owned(),
            source,
        })
    }

    /// The architectures the profile admits, as `(native, sub-architectures)`.
    pub fn architecture_entries(&self) -> Vec<(String, Vec<String>)> {
        if self.arch_map.is_empty() {
            self.architectures
                .iter()
                .map(|a| (a.clone(), Vec::new()))
                .collect()
        } else {
            self.arch_map
                .iter()
                .map(|e| (e.architecture.clone(), e.sub_architectures.clone()))
                .collect()
        }
    }
}

// === impl SyscallRule ===

impl SyscallRule {
    /// Every syscall name this rule lists (`name` and `names` together).
    pub fn all_names(&self) -> impl Iterator<Item = &str> {
        self.name
            .iter()
            .map(String::as_str)
            .chain(self.names.iter().map(String::as_str))
    }
}

// === impl Condition ===

impl Condition {
    pub fn is_empty(&self) -> bool {
        self.caps.is_empty() && self.arches.is_empty() && self.min_kernel.is_none()
    }
}

// === impl Action ===

impl Action {
    /// Whether `errnoRet` means anything for this action (runc refuses it elsewhere).
    pub fn takes_errno(self) -> bool {
        matches!(self, Action::Errno | Action::Trace)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Action::Kill => "SCMP_ACT_KILL",
            Action::KillProcess => "SCMP_ACT_KILL_PROCESS",
            Action::KillThread => "SCMP_ACT_KILL_THREAD",
            Action::Trap => "SCMP_ACT_TRAP",
            Action::Errno => "SCMP_ACT_ERRNO",
            Action::Trace => "SCMP_ACT_TRACE",
            Action::Allow => "SCMP_ACT_ALLOW",
            Action::Log => "SCMP_ACT_LOG",
            Action::Notify => "SCMP_ACT_NOTIFY",
        };
        f.write_str(name)
    }
}

// === impl ArgCondition ===

impl fmt::Display for ArgCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = self.index;
        let v = Number(self.value);
        match self.op {
            CmpOp::Ne => write!(f, "arg{i} != {v}"),
            CmpOp::Lt => write!(f, "arg{i} < {v}"),
            CmpOp::Le => write!(f, "arg{i} <= {v}"),
            CmpOp::Eq => write!(f, "arg{i} == {v}"),
            CmpOp::Ge => write!(f, "arg{i} >= {v}"),
            CmpOp::Gt => write!(f, "arg{i} > {v}"),
            CmpOp::MaskedEq => write!(f, "arg{i} & {v} == {}", Number(self.value_two)),
        }
    }
}

/// Small values in decimal (families, errnos), flag words and masks in hex.
struct Number(u64);

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 4096 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_workspace_profile() {
        let p = Profile::parse(crate::WORKSPACE_PROFILE_JSON, "workspace.json").unwrap();
        assert_eq!(p.default_action, Action::Errno);
        assert_eq!(p.default_errno_ret, Some(1));
        assert!(!p.syscalls.is_empty());
    }

    #[test]
    fn reads_moby_style_nulls_and_single_names() {
        let text = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": null}],
            "syscalls": [
                {"name": "read", "action": "SCMP_ACT_ALLOW", "args": null},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
            ]
        }"#;
        let p = Profile::parse(text, "inline").unwrap();
        assert_eq!(p.syscalls[0].all_names().collect::<Vec<_>>(), ["read"]);
        assert_eq!(p.syscalls[1].args[0].op, CmpOp::MaskedEq);
        assert_eq!(p.syscalls[1].args[0].value_two, 0);
        assert!(p.arch_map[0].sub_architectures.is_empty());
    }

    #[test]
    fn refuses_unknown_fields_and_actions() {
        let typo = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoret": 1}]}"#;
        let err = Profile::parse(typo, "typo.json").unwrap_err().to_string();
        assert!(
            err.contains("typo.json") && err.contains("errnoret"),
            "{err}"
        );

        let bad_action = r#"{"defaultAction": "SCMP_ACT_MAYBE", "syscalls": []}"#;
        assert!(Profile::parse(bad_action, "x").is_err());
    }
}

//! Templates' policies: what a conversation may ask for at claim, set by the operator.
//!
//! A template's warm slots are generic; its policy bounds what a claim may push into
//! one (see [`crate::validate`]): the default egress allowlist and which host names
//! a request's own list may name, whether IP literals and private ranges are
//! allowed, the credential routes every workspace gets, and which upstreams and
//! secrets a request may add routes for. A template without an entry gets
//! [`TemplatePolicy::default`]: egress to any public host name the request lists
//! (nothing by default), no IP literals, no private ranges, no credential routes.
//!
//! The file (`--templates`, TOML):
//!
//! ```toml
//! [default]
//! egress = [{ host = "pypi.org" }, { host = "*.pythonhosted.org" }]
//! egress_allowed = ["*"]            # any public name a request lists
//! upstreams = ["bedrock-runtime.*.amazonaws.com", "mcp.example.com"]
//! secrets = ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:berth/*"]
//!
//! [default.checkpoint]              # when the scheduler has a checkpoint store
//! keep = 5                          # newest checkpoints kept per conversation
//! max_bytes = 4294967296            # a workspace larger is not checkpointed
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use berth_wire::{CredentialRoute, EgressRule};
use serde::Deserialize;

/// One template's policy.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatePolicy {
    /// The allowlist a workspace gets when its request names none.
    pub egress: Vec<EgressRule>,
    /// Patterns every host of a request's (or a later change's) allowlist must
    /// match: `*` (any name), `*.example.com` (names below it), or a name.
    pub egress_allowed: Vec<String>,
    /// Whether egress rules may name IP literals.
    pub allow_ip_literals: bool,
    /// Private or loopback ranges (CIDR) egress hosts and upstreams may resolve to.
    pub allow_private: Vec<String>,
    /// Credential routes every workspace of the template gets.
    pub credentials: Vec<CredentialRoute>,
    /// Patterns (as `egress_allowed`) the upstream host of a requested credential
    /// route must match; none: requests may not add routes.
    pub upstreams: Vec<String>,
    /// Secret references a requested route may name: exact, or a prefix ending in `*`.
    pub secrets: Vec<String>,
    /// Most egress rules a request may give.
    pub max_egress_rules: usize,
    /// Most credential routes a request may add.
    pub max_credentials: usize,
    /// Most files a request may place, and their total decoded size.
    pub max_files: usize,
    pub max_files_bytes: usize,
    /// Seconds without activity (no attached stream, no process in the workspace,
    /// no egress through its proxy) after which a workspace is released; `0` never.
    /// Absent: the scheduler's `--idle-timeout`.
    pub idle_timeout_seconds: Option<u64>,
    /// When the workspace's files are checkpointed and restored.
    pub checkpoint: CheckpointPolicy,
}

/// A template's checkpoints (they need the scheduler's and the hosts'
/// `--checkpoint-store`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointPolicy {
    /// A conversation's new workspace gets its latest checkpoint (a create may
    /// say `restore: false`).
    pub restore: bool,
    /// `DELETE /v1/workspaces/{id}` checkpoints first (`?checkpoint=false` skips).
    pub on_release: bool,
    /// The idle reaper checkpoints before it reaps (and does not reap when that
    /// fails; it tries again next pass).
    pub before_idle_reap: bool,
    /// A workspace whose lifetime ran out is checkpointed before it goes (it goes
    /// whether that works or not).
    pub on_expiry: bool,
    /// Newest checkpoints kept per conversation.
    pub keep: u32,
    /// Most bytes of file content, entries, and unpacked bytes per archive byte
    /// (see `berth_wire::checkpoint::ArchiveLimits`).
    pub max_bytes: u64,
    pub max_entries: u64,
    pub max_ratio: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        let limits = berth_wire::checkpoint::ArchiveLimits::default();
        Self {
            restore: true,
            on_release: true,
            before_idle_reap: true,
            on_expiry: true,
            keep: 5,
            max_bytes: limits.max_bytes,
            max_entries: limits.max_entries,
            max_ratio: limits.max_ratio,
        }
    }
}

impl Default for TemplatePolicy {
    fn default() -> Self {
        Self {
            egress: Vec::new(),
            egress_allowed: vec!["*".into()],
            allow_ip_literals: false,
            allow_private: Vec::new(),
            credentials: Vec::new(),
            upstreams: Vec::new(),
            secrets: Vec::new(),
            max_egress_rules: 64,
            max_credentials: 8,
            max_files: 32,
            max_files_bytes: 256 * 1024,
            idle_timeout_seconds: None,
            checkpoint: CheckpointPolicy::default(),
        }
    }
}

/// Every template's policy, by template name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Templates {
    pub policies: BTreeMap<String, TemplatePolicy>,
}

impl Templates {
    /// The policy of `template` (the default for a template without an entry).
    pub fn policy(&self, template: &str) -> std::borrow::Cow<'_, TemplatePolicy> {
        match self.policies.get(template) {
            Some(p) => std::borrow::Cow::Borrowed(p),
            None => std::borrow::Cow::Owned(TemplatePolicy::default()),
        }
    }

    /// Parses the TOML text of a templates file and checks every policy.
    pub fn parse(text: &str) -> Result<Self, String> {
        let policies: BTreeMap<String, TemplatePolicy> =
            toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, p) in &policies {
            check(p).map_err(|m| format!("[{name}] {m}"))?;
        }
        Ok(Self { policies })
    }

    /// Reads and parses a templates file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A policy's own defaults must pass its own rules (and the request rules).
fn check(p: &TemplatePolicy) -> Result<(), String> {
    let c = &p.checkpoint;
    if c.keep == 0 || c.max_bytes == 0 || c.max_entries == 0 || c.max_ratio == 0 {
        return Err(
            "checkpoint: keep, max_bytes, max_entries and max_ratio must be at least 1".into(),
        );
    }
    for c in &p.allow_private {
        crate::addrs::Cidr::parse(c).map_err(|e| format!("allow_private: {e}"))?;
    }
    for (i, r) in p.egress.iter().enumerate() {
        crate::validate::egress_rule(p, r)
            .map_err(|e| format!("egress[{i}].{}: {}", e.part, e.reason))?;
    }
    for (i, r) in p.credentials.iter().enumerate() {
        crate::validate::route_shape(r)
            .map_err(|e| format!("credentials[{i}].{}: {}", e.part, e.reason))?;
    }
    Ok(())
}

/// Whether `host` matches `pattern`: `*` any name, `*.example.com` names below it
/// (and, for a wildcard host, wildcards below it), else equality.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            let below = host.strip_prefix("*.").unwrap_or(&host);
            below.len() > suffix.len()
                && below.ends_with(suffix)
                && below.as_bytes()[below.len() - suffix.len() - 1] == b'.'
        }
        None => pattern == host,
    }
}

/// Whether a secret reference is allowed by `patterns` (exact, or prefix + `*`).
pub fn secret_allowed(patterns: &[String], reference: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => reference.starts_with(prefix),
        None => p == reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(host_matches("*", "pypi.org"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(host_matches("*.example.com", "*.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(!host_matches("*.example.com", "*.example.com.evil"));
        assert!(host_matches("PyPI.org", "pypi.ORG"));
        assert!(!host_matches("pypi.org", "files.pypi.org"));
    }

    #[test]
    fn secret_patterns() {
        let p = vec![
            "arn:aws:secretsmanager:eu-west-1:1:secret:berth/*".to_owned(),
            "mcp-token".to_owned(),
        ];
        assert!(secret_allowed(
            &p,
            "arn:aws:secretsmanager:eu-west-1:1:secret:berth/a-x1"
        ));
        assert!(secret_allowed(&p, "mcp-token"));
        assert!(!secret_allowed(&p, "mcp-token-2"));
        assert!(!secret_allowed(
            &p,
            "arn:aws:secretsmanager:eu-west-1:1:secret:other"
        ));
        assert!(!secret_allowed(&[], "x"));
    }

    #[test]
    fn a_file_parses_and_its_mistakes_are_named() {
        let t = Templates::parse(
            "[default]\negress = [{ host = \"pypi.org\" }]\nupstreams = [\"mcp.example.com\"]\n",
        )
        .unwrap();
        assert_eq!(t.policy("default").egress.len(), 1);
        assert_eq!(t.policy("other").egress_allowed, vec!["*".to_owned()]);
        let e = Templates::parse("[default]\negres = []\n").unwrap_err();
        assert!(e.contains("egres"), "{e}");
        let e = Templates::parse("[default]\negress = [{ host = \"10.0.0.1\" }]\n").unwrap_err();
        assert!(e.contains("[default] egress[0]"), "{e}");
        let e = Templates::parse("[default]\nallow_private = [\"10.0.0.0/40\"]\n").unwrap_err();
        assert!(e.contains("allow_private"), "{e}");
        let t = Templates::parse("[default.checkpoint]\nkeep = 2\non_release = false\n").unwrap();
        let c = &t.policy("default").checkpoint;
        assert_eq!((c.keep, c.on_release, c.restore), (2, false, true));
        let e = Templates::parse("[default.checkpoint]\nkeep = 0\n").unwrap_err();
        assert!(e.contains("checkpoint"), "{e}");
        let e = Templates::parse("[default.checkpoint]\nkeeps = 3\n").unwrap_err();
        assert!(e.contains("keeps"), "{e}");
    }
}

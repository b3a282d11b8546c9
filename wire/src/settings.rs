//! Per-conversation settings, pushed into a warm slot at claim (late binding).
//!
//! A warm slot is generic; what is specific to one conversation travels with the
//! claim: its environment and files (to the agent) and its egress allowlist and
//! credential routes (to the proxy). Secrets travel only as *references* (a Secrets
//! Manager name or ARN); the proxy fetches the values itself, so no value is ever in
//! a request, in the scheduler's state or in a log line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One destination the workspace may open a tunnel to (HTTPS `CONNECT` through its
/// proxy): a host name, `*.` and a suffix for any name below it, or (when the
/// template allows) an IP literal; and its ports, 443 when none are given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EgressRule {
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl EgressRule {
    /// The ports this rule opens (443 when it names none).
    pub fn effective_ports(&self) -> Vec<u16> {
        if self.ports.is_empty() {
            vec![443]
        } else {
            self.ports.clone()
        }
    }
}

/// How a credential route authenticates to its upstream.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CredentialAuth {
    /// AWS Signature V4 (the secret, when given, holds the keys as JSON; without
    /// one the proxy signs with its own task credentials).
    Sigv4,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<header>: <secret>`.
    Header,
}

/// One credential route: requests to the proxy under `prefix` go to `upstream`
/// with the secret injected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CredentialRoute {
    /// Path prefix on the proxy, starting and ending with `/`, e.g. `/mcp/`.
    pub prefix: String,
    /// `https://host[:port][/base-path]`.
    pub upstream: String,
    pub auth: CredentialAuth,
    /// The secret's Secrets Manager name or ARN, never its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// When the secret is a JSON object: the field holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_key: Option<String>,
    /// The header `auth = header` sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// SigV4 region and service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl CredentialRoute {
    /// A bearer route: `prefix` to `upstream` with the secret `secret` injected.
    pub fn bearer(prefix: &str, upstream: &str, secret: Option<&str>) -> Self {
        Self {
            prefix: prefix.into(),
            upstream: upstream.into(),
            auth: CredentialAuth::Bearer,
            secret: secret.map(str::to_owned),
            json_key: None,
            header: None,
            region: None,
            service: None,
        }
    }
}

/// The shape of an egress rule's host (lower-case): a name, `*.` and a domain of at
/// least two labels, or an IP literal (`Ok(true)`; whether one is allowed is the
/// template's call).
pub fn check_egress_host(host: &str) -> Result<bool, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(true);
    }
    match host.strip_prefix("*.") {
        Some(suffix) => {
            check_host_name(suffix)?;
            if suffix.parse::<std::net::IpAddr>().is_ok() || !suffix.contains('.') {
                return Err(
                    "a wildcard needs a domain of at least two labels, e.g. *.example.com".into(),
                );
            }
            Ok(false)
        }
        None => check_host_name(host).map(|()| false),
    }
}

/// A route's path prefix on the proxy: starting and ending with `/`, naming
/// something, plain (letters, digits and `/-_.~`, no empty, `.` or `..` segments, so
/// no escape an upstream could normalise), at most 128 bytes, and not shadowing the
/// proxy's own `/health` and `/metrics`. The scheduler checks a request's routes and
/// the proxy its file's and a claim's with this one rule.
pub fn check_route_prefix(p: &str) -> Result<(), String> {
    let plain = p.len() >= 3
        && p.len() <= 128
        && p.starts_with('/')
        && p.ends_with('/')
        && !p.contains("//")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
        && !p.split('/').any(|seg| seg == "." || seg == "..");
    if !plain {
        return Err(format!(
            "{p:?} must be a plain path starting and ending with '/', e.g. \"/mcp/\""
        ));
    }
    if p.starts_with("/health/") || p.starts_with("/metrics/") {
        return Err("must not shadow /health or /metrics".into());
    }
    Ok(())
}

/// How a file's `content` is written.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FileEncoding {
    #[default]
    Utf8,
    Base64,
}

/// A small file placed in the workspace before it is handed out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkspaceFile {
    /// Relative to the workspace root; parent directories are made.
    pub path: String,
    pub content: String,
    #[serde(default)]
    pub encoding: FileEncoding,
    /// Octal permission bits as a string, e.g. `"0600"`; `0644` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// What one claimed slot's proxy enforces. hostd pushes it over the proxy's admin
/// channel at claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxyPolicy {
    pub workspace_id: String,
    #[serde(default)]
    pub egress: Vec<EgressRule>,
    #[serde(default)]
    pub routes: Vec<CredentialRoute>,
    /// Address ranges (CIDR) that egress hosts and upstreams may resolve to although
    /// they are private or loopback (the template's policy; metadata addresses stay
    /// refused whatever this says).
    #[serde(default)]
    pub allow_private: Vec<String>,
}

/// `PUT /v1/workspaces/{id}/egress`, and the proxy's `PUT /v1/egress`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EgressUpdate {
    pub egress: Vec<EgressRule>,
}

/// A destination the proxy refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Refusal {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `host:port` (tunnels) or the absolute-form authority.
    pub destination: String,
    /// The refusal's stable code, e.g. `connect_not_allowed`.
    pub code: String,
    pub reason: String,
}

/// `GET /v1/workspaces/{id}/egress`: the allowlist in force and the latest refusals
/// (newest last, at most [`REFUSALS_KEPT`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EgressView {
    pub egress: Vec<EgressRule>,
    pub refused: Vec<Refusal>,
    /// Unix milliseconds of the last request or tunnel the proxy let out (its start,
    /// and a tunnel's end); `None` before the first. The idle reaper counts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_egress_ms: Option<u64>,
    /// Tunnels open now: a long download is egress for as long as it runs.
    #[serde(default)]
    pub open_tunnels: u64,
}

/// How many refusals a proxy remembers.
pub const REFUSALS_KEPT: usize = 100;

/// scheduler → hostd `POST /v1/slots/{id}/claim`: everything one claim binds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SlotClaim {
    pub workspace_id: String,
    pub token: String,
    /// The slot's claim secret (hostd made it, or the scheduler gave it to ECS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_secret: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<WorkspaceFile>,
    pub policy: ProxyPolicy,
    /// The rest of the workspace's record, which hostd keeps with the claim so the
    /// scheduler can rebuild its state after losing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<ClaimBinding>,
    /// A checkpoint to unpack into the slot before it is claimed (hostd reads it
    /// from the store and streams it to the agent, which checks its SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::checkpoint::RestoreSpec>,
}

/// What the scheduler's state holds about a claimed workspace beyond the claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimBinding {
    pub conversation_id: String,
    pub template: String,
    pub source: crate::Source,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, as of the claim (later keepalives are not sent to hostd).
    pub expires_at: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// hostd `GET /v1/inventory`: one claimed slot with what its claim bound, for the
/// scheduler's rebuild. Carries the workspace's token and the slot's claim secret:
/// only the fleet's scheduler (with the host's token) may read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldClaim {
    pub slot_id: String,
    pub workspace_id: String,
    pub token: String,
    #[serde(default)]
    pub claim_secret: Option<String>,
    #[serde(default)]
    pub binding: Option<ClaimBinding>,
}

/// A host must be a canonical IP literal or an ASCII DNS name that cannot be read
/// as a number (`2852039166`, `0251.0376.0251.0376` and `0xa9fea9fe` are what
/// `inet_aton` turns into 169.254.169.254).
pub fn check_host_name(host: &str) -> Result<(), String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && !host.ends_with('.')
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(format!("{host:?} is not a valid host name"));
    }
    let last = host.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.len() > 2 && last[..2].eq_ignore_ascii_case("0x"));
    if numeric {
        return Err(format!("{host:?} looks like a non-canonical IP address"));
    }
    Ok(())
}

/// The header carrying a slot's claim secret on hostd's per-slot calls after the
/// claim (hostd may have restarted and forgotten it).
pub const CLAIM_SECRET_HEADER: &str = "x-berth-claim-secret";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_prefixes_are_plain_and_leave_health_alone() {
        for ok in ["/mcp/", "/bedrock-runtime/", "/a/b.c_d~e/"] {
            assert!(check_route_prefix(ok).is_ok(), "{ok}");
        }
        for bad in [
            "mcp/",
            "/mcp",
            "//",
            "/a//b/",
            "/../",
            "/a/./",
            "/%2e%2e/",
            "/a\\b/",
            "/health/x/",
            "/metrics/",
        ] {
            assert!(check_route_prefix(bad).is_err(), "{bad}");
        }
        assert!(check_route_prefix(&format!("/{}/", "a".repeat(130))).is_err());
    }

    #[test]
    fn egress_hosts_are_names_wildcards_or_literals() {
        assert_eq!(check_egress_host("pypi.org"), Ok(false));
        assert_eq!(check_egress_host("*.pythonhosted.org"), Ok(false));
        assert_eq!(check_egress_host("10.0.0.1"), Ok(true));
        assert_eq!(check_egress_host("[::1]"), Ok(true));
        for bad in ["*.com", "*.10.0.0.1", "2852039166", "a b", "pypi.org."] {
            assert!(check_egress_host(bad).is_err(), "{bad}");
        }
    }
}

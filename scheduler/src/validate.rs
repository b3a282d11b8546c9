//! What the backend may ask for, checked before anything is bound or started.
//!
//! The environment a conversation brings (`env`) is pushed to the slot's agent at
//! claim and handed to every command it runs; it is never written to the state
//! store or a log (its values may be secrets). Names are plain identifiers; what
//! the platform itself sets (`BERTH_*`, the proxy settings that send ordinary tools
//! through the credential-proxy) cannot be replaced; sizes are capped so a claim
//! stays small.

use std::collections::BTreeMap;

use berth_wire::{CreateWorkspace, CredentialAuth, CredentialRoute, EgressRule, WorkspaceFile};

use crate::templates::{TemplatePolicy, host_matches, secret_allowed};
use crate::{ApiError, Config};

/// Labels one workspace may carry, and their sizes.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_KEY: usize = 64;
pub const MAX_LABEL_VALUE: usize = 256;

/// Variables one request may set.
pub const MAX_ENV_VARS: usize = 64;
/// Bytes of one variable's name.
pub const MAX_ENV_NAME: usize = 128;
/// Bytes of one variable's value.
pub const MAX_ENV_VALUE: usize = 4096;
/// Bytes of all names and values together.
pub const MAX_ENV_TOTAL: usize = 32 * 1024;

/// Checks a create request: every field the backend sends, each error naming it.
pub fn create(req: &CreateWorkspace, template: &str, config: &Config) -> Result<(), ApiError> {
    let conv = &req.conversation_id;
    if conv.is_empty() || conv.chars().count() > 256 {
        return Err(ApiError::InvalidField {
            field: "conversation_id",
            reason: "must be 1 to 256 characters".into(),
        });
    }
    if conv.chars().any(|c| c.is_control()) {
        return Err(ApiError::InvalidField {
            field: "conversation_id",
            reason: "must not contain control characters".into(),
        });
    }
    if !config.pools.contains_key(template) {
        // Templates are configured; their targets change at run time.
        return Err(ApiError::InvalidField {
            field: "template",
            reason: format!("unknown template `{template}`"),
        });
    }
    if let Some(ttl) = req.ttl_seconds
        && (ttl == 0 || ttl > config.max_ttl_seconds)
    {
        return Err(ApiError::InvalidField {
            field: "ttl_seconds",
            reason: format!("must be between 1 and {}", config.max_ttl_seconds),
        });
    }
    labels(&req.labels)?;
    env(&req.env)?;
    let policy = config.templates.policy(template);
    if let Some(rules) = &req.egress {
        egress(&policy, rules)?;
    }
    credentials(&policy, &req.credentials)?;
    files(&policy, &req.files)?;
    Ok(())
}

/// Why one setting is refused: its stable code, the part of it at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub code: &'static str,
    pub part: &'static str,
    pub reason: String,
}

fn bad(code: &'static str, part: &'static str, reason: impl Into<String>) -> Bad {
    Bad {
        code,
        part,
        reason: reason.into(),
    }
}

impl Bad {
    fn at(self, list: &str, i: usize) -> ApiError {
        ApiError::Setting {
            code: self.code,
            field: if self.part.is_empty() {
                format!("{list}[{i}]")
            } else {
                format!("{list}[{i}].{}", self.part)
            },
            reason: self.reason,
        }
    }
}

/// One egress rule against the template's policy.
pub fn egress_rule(p: &TemplatePolicy, r: &EgressRule) -> Result<(), Bad> {
    let host = r.host.to_ascii_lowercase();
    let literal = berth_wire::settings::check_egress_host(&host)
        .map_err(|m| bad("invalid_field", "host", m))?;
    if literal && !p.allow_ip_literals {
        return Err(bad(
            "ip_literal_not_allowed",
            "host",
            format!("{host} is an IP address; this template allows host names only"),
        ));
    }
    if r.ports.contains(&0) {
        return Err(bad("invalid_field", "ports", "port 0 is not a port"));
    }
    if r.ports.len() > 16 {
        return Err(bad("invalid_field", "ports", "at most 16 ports per rule"));
    }
    if !p.egress_allowed.iter().any(|pat| host_matches(pat, &host)) {
        return Err(bad(
            "egress_not_allowed",
            "host",
            format!("{host} is outside what this template lets a workspace reach"),
        ));
    }
    Ok(())
}

/// A request's (or a change's) egress allowlist.
pub fn egress(p: &TemplatePolicy, rules: &[EgressRule]) -> Result<(), ApiError> {
    if rules.len() > p.max_egress_rules {
        return Err(ApiError::Setting {
            code: "invalid_field",
            field: "egress".into(),
            reason: format!("{} rules; at most {}", rules.len(), p.max_egress_rules),
        });
    }
    for (i, r) in rules.iter().enumerate() {
        egress_rule(p, r).map_err(|b| b.at("egress", i))?;
    }
    Ok(())
}

/// The host of an `https://host[:port][/path]` upstream.
pub fn upstream_host(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?}: only https:// upstreams are allowed"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') || rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "{url:?}: user info, query and fragment are not allowed"
        ));
    }
    // `[v6]` or `[v6]:port`, else `host` or `host:port`.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
            (h, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().ok().filter(|p| *p != 0).is_none()) {
        return Err(format!("{url:?}: bad port"));
    }
    let host = host.to_ascii_lowercase();
    berth_wire::settings::check_host_name(&host)?;
    Ok(host)
}

/// A reference to a secret: a Secrets Manager ARN or name, never a value.
fn secret_reference(s: &str) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 512
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
    };
    if let Some(rest) = s.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(6, ':').collect();
        if parts.len() == 6
            && parts[1] == "secretsmanager"
            && parts[4] == "secret"
            && name_ok(parts[5])
        {
            return Ok(());
        }
        return Err(format!("{s:?} is not a Secrets Manager secret ARN"));
    }
    if name_ok(s) {
        Ok(())
    } else {
        Err("must be a Secrets Manager secret name or ARN (the secret's value never goes in a request)".into())
    }
}

/// A credential route's own shape (no policy).
pub fn route_shape(r: &CredentialRoute) -> Result<(), Bad> {
    berth_wire::settings::check_route_prefix(&r.prefix)
        .map_err(|m| bad("invalid_field", "prefix", m))?;
    upstream_host(&r.upstream).map_err(|m| bad("invalid_field", "upstream", m))?;
    match (&r.auth, &r.secret) {
        (CredentialAuth::Bearer | CredentialAuth::Header, None) => {
            return Err(bad(
                "invalid_field",
                "secret",
                "required for bearer and header",
            ));
        }
        (_, Some(s)) => secret_reference(s).map_err(|m| bad("invalid_field", "secret", m))?,
        _ => {}
    }
    if r.auth == CredentialAuth::Header {
        let h = r.header.as_deref().unwrap_or_default();
        let token = !h.is_empty()
            && h.len() <= 64
            && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let reserved = matches!(
            h.to_ascii_lowercase().as_str(),
            "host"
                | "connection"
                | "content-length"
                | "transfer-encoding"
                | "upgrade"
                | "te"
                | "trailer"
                | "proxy-authorization"
                | "keep-alive"
        );
        if !token || reserved {
            return Err(bad(
                "invalid_field",
                "header",
                "a plain, non-hop-by-hop header name is required for auth = header",
            ));
        }
    }
    if r.auth == CredentialAuth::Sigv4 {
        for (part, v) in [("region", &r.region), ("service", &r.service)] {
            let ok = v.as_deref().is_some_and(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            if !ok {
                return Err(bad(
                    "invalid_field",
                    part,
                    "required for sigv4 (letters, digits, '-')",
                ));
            }
        }
    }
    if r.json_key
        .as_deref()
        .is_some_and(|k| k.is_empty() || k.len() > 256)
    {
        return Err(bad(
            "invalid_field",
            "json_key",
            "must be 1 to 256 characters",
        ));
    }
    Ok(())
}

/// A request's credential routes, against the template's policy.
pub fn credentials(p: &TemplatePolicy, routes: &[CredentialRoute]) -> Result<(), ApiError> {
    if routes.len() > p.max_credentials {
        return Err(ApiError::Setting {
            code: "invalid_field",
            field: "credentials".into(),
            reason: format!("{} routes; at most {}", routes.len(), p.max_credentials),
        });
    }
    let mut prefixes: std::collections::HashSet<&str> =
        p.credentials.iter().map(|r| r.prefix.as_str()).collect();
    for (i, r) in routes.iter().enumerate() {
        route_shape(r).map_err(|b| b.at("credentials", i))?;
        let host = upstream_host(&r.upstream).unwrap_or_default();
        if !p.upstreams.iter().any(|pat| host_matches(pat, &host)) {
            return Err(bad(
                "upstream_not_allowed",
                "upstream",
                format!("{host} is not an upstream this template lets a request add"),
            )
            .at("credentials", i));
        }
        if let Some(s) = &r.secret
            && !secret_allowed(&p.secrets, s)
        {
            return Err(bad(
                "secret_not_allowed",
                "secret",
                "this template does not let a request use that secret",
            )
            .at("credentials", i));
        }
        if !prefixes.insert(r.prefix.as_str()) {
            return Err(bad(
                "invalid_field",
                "prefix",
                format!("{} is already a route of this workspace", r.prefix),
            )
            .at("credentials", i));
        }
    }
    Ok(())
}

/// Files a request places, against the template's limits.
pub fn files(p: &TemplatePolicy, files: &[WorkspaceFile]) -> Result<(), ApiError> {
    if files.len() > p.max_files {
        return Err(ApiError::Setting {
            code: "invalid_field",
            field: "files".into(),
            reason: format!("{} files; at most {}", files.len(), p.max_files),
        });
    }
    let mut total = 0usize;
    for (i, f) in files.iter().enumerate() {
        let path = &f.path;
        let escapes = path.starts_with('/')
            || path.split('/').any(|seg| seg == "..")
            || path.is_empty()
            || path.len() > 1024
            || path.contains('\0')
            || path.ends_with('/');
        if escapes {
            return Err(bad(
                "invalid_field",
                "path",
                format!("{path:?} must be a relative file path inside the workspace, without '..'"),
            )
            .at("files", i));
        }
        if let Some(m) = &f.mode
            && u32::from_str_radix(m.trim_start_matches("0o"), 8).map_or(true, |b| b > 0o777)
        {
            return Err(bad(
                "invalid_field",
                "mode",
                format!("{m:?} is not a mode such as \"0644\""),
            )
            .at("files", i));
        }
        let size = match f.encoding {
            berth_wire::settings::FileEncoding::Utf8 => f.content.len(),
            berth_wire::settings::FileEncoding::Base64 => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(f.content.as_bytes())
                    .map_err(|e| {
                        bad("invalid_field", "content", format!("not base64: {e}")).at("files", i)
                    })?
                    .len()
            }
        };
        total += size;
    }
    if total > p.max_files_bytes {
        return Err(ApiError::Setting {
            code: "invalid_field",
            field: "files".into(),
            reason: format!("{total} bytes in all; at most {}", p.max_files_bytes),
        });
    }
    Ok(())
}

/// Checks a workspace's labels (kept in the state and shown to operators).
pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |reason: String| ApiError::InvalidField {
        field: "labels",
        reason,
    };
    if labels.len() > MAX_LABELS {
        return Err(bad(format!(
            "{} labels; at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY || k.chars().any(char::is_control) {
            return Err(bad(format!(
                "label key {:?} must be 1 to {MAX_LABEL_KEY} bytes without control characters",
                k.chars().take(80).collect::<String>()
            )));
        }
        if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
            return Err(bad(format!(
                "the value of label {k} must be at most {MAX_LABEL_VALUE} bytes without control characters"
            )));
        }
    }
    Ok(())
}

/// Whether the platform owns `name` (the request may not set it).
fn reserved(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("BERTH_")
        || matches!(
            upper.as_str(),
            "HTTP_PROXY" | "HTTPS_PROXY" | "NO_PROXY" | "ALL_PROXY"
        )
}

/// Checks a conversation's environment.
pub fn env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |reason: String| ApiError::InvalidField {
        field: "env",
        reason,
    };
    if env.len() > MAX_ENV_VARS {
        return Err(bad(format!(
            "{} variables; at most {MAX_ENV_VARS}",
            env.len()
        )));
    }
    let mut total = 0;
    for (name, value) in env {
        let valid = !name.is_empty()
            && name.len() <= MAX_ENV_NAME
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad(format!(
                "{name:?} is not a variable name (letters, digits and _, not starting with a digit, at most {MAX_ENV_NAME})"
            )));
        }
        if reserved(name) {
            return Err(bad(format!(
                "{name} is set by the platform and cannot be replaced"
            )));
        }
        if value.len() > MAX_ENV_VALUE {
            return Err(bad(format!(
                "the value of {name} is {} bytes; at most {MAX_ENV_VALUE}",
                value.len()
            )));
        }
        if value.contains('\0') {
            return Err(bad(format!("the value of {name} contains a NUL byte")));
        }
        total += name.len() + value.len();
    }
    if total > MAX_ENV_TOTAL {
        return Err(bad(format!(
            "{total} bytes of names and values; at most {MAX_ENV_TOTAL}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &str) -> BTreeMap<String, String> {
        [(name.to_owned(), value.to_owned())].into()
    }

    fn reason(e: ApiError) -> String {
        match e {
            ApiError::InvalidField {
                field: "env",
                reason,
            } => reason,
            other => panic!("not an env error: {other:?}"),
        }
    }

    fn policy() -> TemplatePolicy {
        TemplatePolicy {
            egress_allowed: vec!["*.example.com".into(), "pypi.org".into()],
            upstreams: vec!["mcp.example.com".into()],
            secrets: vec!["berth/*".into()],
            ..TemplatePolicy::default()
        }
    }

    fn code_and_field(e: ApiError) -> (&'static str, String) {
        match e {
            ApiError::Setting { code, field, .. } => (code, field),
            other => panic!("not a setting error: {other:?}"),
        }
    }

    fn rule(host: &str) -> EgressRule {
        EgressRule {
            host: host.into(),
            ports: vec![],
        }
    }

    #[test]
    fn egress_follows_the_template() {
        let p = policy();
        assert!(
            egress(
                &p,
                &[
                    rule("pypi.org"),
                    rule("a.example.com"),
                    rule("*.b.example.com")
                ]
            )
            .is_ok()
        );
        for (r, code) in [
            (rule("evil.org"), "egress_not_allowed"),
            (rule("example.com"), "egress_not_allowed"),
            (rule("10.0.0.1"), "ip_literal_not_allowed"),
            (rule("[::1]"), "ip_literal_not_allowed"),
            (rule("*.com"), "invalid_field"),
            (rule("0x7f.0.0.1"), "invalid_field"),
            (
                EgressRule {
                    host: "pypi.org".into(),
                    ports: vec![0],
                },
                "invalid_field",
            ),
        ] {
            let (c, f) = code_and_field(egress(&p, &[rule("pypi.org"), r.clone()]).unwrap_err());
            assert_eq!(c, code, "{r:?}");
            assert!(f.starts_with("egress[1]."), "{f}");
        }
        let literal = TemplatePolicy {
            allow_ip_literals: true,
            egress_allowed: vec!["*".into()],
            ..TemplatePolicy::default()
        };
        assert!(egress(&literal, &[rule("10.0.0.1")]).is_ok());
        let many: Vec<EgressRule> = (0..65)
            .map(|i| rule(&format!("h{i}.example.com")))
            .collect();
        assert_eq!(code_and_field(egress(&p, &many).unwrap_err()).1, "egress");
    }

    fn route(upstream: &str, secret: Option<&str>) -> CredentialRoute {
        CredentialRoute::bearer("/mcp/", upstream, secret)
    }

    #[test]
    fn upstream_hosts_parse_with_and_without_ports() {
        for (url, host) in [
            ("https://mcp.example.com", "mcp.example.com"),
            ("https://MCP.example.com:8443/v1", "mcp.example.com"),
            ("https://[::1]", "::1"),
            ("https://[::1]:8443/x", "::1"),
        ] {
            assert_eq!(upstream_host(url).as_deref(), Ok(host), "{url}");
        }
        for bad in [
            "https://a.com:0",
            "https://a.com:x",
            "https://[::1",
            "https://[::1]:99999",
            "https://a.com?q",
        ] {
            assert!(upstream_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_routes_follow_the_template() {
        let p = policy();
        assert!(
            credentials(
                &p,
                &[route("https://mcp.example.com/v1", Some("berth/mcp"))]
            )
            .is_ok()
        );
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:berth/x-AbCdEf";
        let arn_policy = TemplatePolicy {
            secrets: vec!["arn:aws:secretsmanager:eu-west-1:123456789012:secret:berth/*".into()],
            ..policy()
        };
        assert!(credentials(&arn_policy, &[route("https://mcp.example.com", Some(arn))]).is_ok());
        for (r, code, field) in [
            (
                route("https://evil.example.org", Some("berth/mcp")),
                "upstream_not_allowed",
                "credentials[0].upstream",
            ),
            (
                route("http://mcp.example.com", Some("berth/mcp")),
                "invalid_field",
                "credentials[0].upstream",
            ),
            (
                route("https://u@mcp.example.com", Some("berth/mcp")),
                "invalid_field",
                "credentials[0].upstream",
            ),
            (
                route("https://mcp.example.com", Some("other/secret")),
                "secret_not_allowed",
                "credentials[0].secret",
            ),
            (
                route("https://mcp.example.com", None),
                "invalid_field",
                "credentials[0].secret",
            ),
            // A value where a reference belongs.
            (
                route("https://mcp.example.com", Some("sk-live abc:def")),
                "invalid_field",
                "credentials[0].secret",
            ),
            (
                CredentialRoute {
                    prefix: "/../".into(),
                    ..route("https://mcp.example.com", Some("berth/a"))
                },
                "invalid_field",
                "credentials[0].prefix",
            ),
            (
                CredentialRoute {
                    auth: CredentialAuth::Header,
                    header: Some("connection".into()),
                    ..route("https://mcp.example.com", Some("berth/a"))
                },
                "invalid_field",
                "credentials[0].header",
            ),
            (
                CredentialRoute {
                    auth: CredentialAuth::Sigv4,
                    ..route("https://mcp.example.com", None)
                },
                "invalid_field",
                "credentials[0].region",
            ),
        ] {
            let (c, f) = code_and_field(credentials(&p, std::slice::from_ref(&r)).unwrap_err());
            assert_eq!((c, f.as_str()), (code, field), "{r:?}");
        }
        let twice = [
            route("https://mcp.example.com", Some("berth/a")),
            route("https://mcp.example.com", Some("berth/b")),
        ];
        assert_eq!(
            code_and_field(credentials(&p, &twice).unwrap_err()).1,
            "credentials[1].prefix"
        );
    }

    #[test]
    fn files_stay_inside_and_small() {
        let p = TemplatePolicy::default();
        let f = |path: &str, content: &str| WorkspaceFile {
            path: path.into(),
            content: content.into(),
            encoding: Default::default(),
            mode: None,
        };
        assert!(files(&p, &[f("a/b.txt", "x"), f("c", "")]).is_ok());
        for bad in ["/etc/passwd", "../x", "a/../../x", "", "dir/"] {
            assert_eq!(
                code_and_field(files(&p, &[f(bad, "x")]).unwrap_err()).1,
                "files[0].path",
                "{bad}"
            );
        }
        let setuid = WorkspaceFile {
            mode: Some("4755".into()),
            ..f("x", "y")
        };
        assert_eq!(
            code_and_field(files(&p, &[setuid]).unwrap_err()).1,
            "files[0].mode"
        );
        let bad64 = WorkspaceFile {
            encoding: berth_wire::settings::FileEncoding::Base64,
            ..f("x", "not base64!")
        };
        assert_eq!(
            code_and_field(files(&p, &[bad64]).unwrap_err()).1,
            "files[0].content"
        );
        let big = f("big", &"x".repeat(p.max_files_bytes + 1));
        assert_eq!(code_and_field(files(&p, &[big]).unwrap_err()).1, "files");
    }

    #[test]
    fn plain_names_and_values_pass() {
        assert!(env(&one("GREETING", "hello there")).is_ok());
        assert!(env(&one("_private_1", "")).is_ok());
        assert!(env(&BTreeMap::new()).is_ok());
    }

    #[test]
    fn bad_names_are_refused_and_named() {
        for name in ["", "1ABC", "A-B", "A=B", "A B", "ÄB"] {
            let r = reason(env(&one(name, "x")).unwrap_err());
            assert!(r.contains("is not a variable name"), "{name}: {r}");
        }
        let long = "A".repeat(MAX_ENV_NAME + 1);
        assert!(env(&one(&long, "x")).is_err());
    }

    #[test]
    fn what_the_platform_sets_cannot_be_replaced() {
        for name in [
            "BERTH_CLAIM_SECRET_SHA256",
            "berth_x",
            "HTTPS_PROXY",
            "http_proxy",
            "NO_PROXY",
            "ALL_PROXY",
        ] {
            let r = reason(env(&one(name, "x")).unwrap_err());
            assert!(r.contains("set by the platform"), "{name}: {r}");
        }
    }

    #[test]
    fn sizes_are_capped() {
        let r = reason(env(&one("BIG", &"x".repeat(MAX_ENV_VALUE + 1))).unwrap_err());
        assert!(r.contains("BIG") && r.contains("at most"), "{r}");
        let many: BTreeMap<String, String> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), "x".into()))
            .collect();
        assert!(reason(env(&many).unwrap_err()).contains("variables"));
        let heavy: BTreeMap<String, String> = (0..10)
            .map(|i| (format!("V{i}"), "x".repeat(4000)))
            .collect();
        assert!(reason(env(&heavy).unwrap_err()).contains("bytes of names and values"));
        assert!(reason(env(&one("NUL", "a\0b")).unwrap_err()).contains("NUL"));
    }
}

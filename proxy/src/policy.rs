//! The claim's policy: what one conversation's workspace may reach, set at claim
//! and changed while it runs.
//!
//! Background: a warm slot's proxy starts with only its file configuration (usually
//! nothing). At claim hostd pushes a [`ProxyPolicy`] over the admin channel
//! ([`crate::admin`]): credential routes (added to the file's routes), the egress
//! allowlist for tunnels, and the private ranges the template lets them resolve to.
//! Everything is validated by the same rules as the file ([`Config::validate`]), then
//! compiled and swapped in whole, so a request sees either the old policy or the new
//! one, never half of each. Egress can be replaced alone
//! (`PUT /v1/workspaces/{id}/egress`): new tunnels follow the new list at once;
//! tunnels already open stay open until they close.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use berth_wire::{CredentialAuth, EgressRule, ProxyPolicy};

use crate::config::{AuthMethod, Config, ConfigError, RouteConfig, SecretConfig};
use crate::net::AddressPolicy;
use crate::route::Route;

/// Most egress rules one policy may hold.
pub const MAX_EGRESS_RULES: usize = 256;
/// Most credential routes one policy may hold.
pub const MAX_ROUTES: usize = 32;

/// The compiled egress allowlist.
#[derive(Debug, Default)]
pub struct Egress {
    /// As given, for `GET /v1/egress`.
    pub rules: Vec<EgressRule>,
    exact: HashMap<String, Vec<u16>>,
    /// `(".example.com", ports)` for `*.example.com`.
    wildcard: Vec<(String, Vec<u16>)>,
    /// What allowed hosts may resolve to beyond public addresses.
    pub addresses: AddressPolicy,
    /// The same, as given (kept when the rules alone are replaced).
    pub allow_private: Vec<String>,
}

impl Egress {
    /// Validates and compiles `rules`; `allow_private` are CIDRs.
    pub fn compile(rules: &[EgressRule], allow_private: &[String]) -> Result<Self, ConfigError> {
        if rules.len() > MAX_EGRESS_RULES {
            return Err(invalid(
                "egress",
                format!("at most {MAX_EGRESS_RULES} rules"),
            ));
        }
        let addresses =
            AddressPolicy::from_strings(allow_private).map_err(|m| invalid("allow_private", m))?;
        let mut exact: HashMap<String, Vec<u16>> = HashMap::new();
        let mut wildcard = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let field = format!("egress[{i}]");
            let host = r.host.to_ascii_lowercase();
            if r.ports.contains(&0) {
                return Err(invalid(format!("{field}.ports"), "port 0 is not a port"));
            }
            let ports = r.effective_ports();
            berth_wire::settings::check_egress_host(&host)
                .map_err(|m| invalid(format!("{field}.host"), m))?;
            match host.strip_prefix("*.") {
                Some(suffix) => wildcard.push((format!(".{suffix}"), ports)),
                None => exact
                    .entry(
                        host.trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_owned(),
                    )
                    .or_default()
                    .extend(ports),
            }
        }
        Ok(Self {
            rules: rules.to_vec(),
            exact,
            wildcard,
            addresses,
            allow_private: allow_private.to_vec(),
        })
    }

    /// Whether a tunnel to `host:port` is allowed (`host` lower-case).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        if self.exact.get(host).is_some_and(|p| p.contains(&port)) {
            return true;
        }
        self.wildcard
            .iter()
            .any(|(suffix, ports)| host.ends_with(suffix.as_str()) && ports.contains(&port))
    }
}

/// The claim's credential routes, compiled, with the secrets they reference.
pub struct ClaimRoutes {
    pub routes: Vec<Route>,
    /// Named `claim-N`, fetched by the proxy itself.
    pub secrets: BTreeMap<String, SecretConfig>,
}

/// The route and secret names a claim's `i`-th credential route gets.
fn claim_name(i: usize) -> String {
    format!("claim-{i}")
}

/// Validates the claim's routes against the file configuration (`base`) with the
/// file's own rules, and compiles them.
pub fn compile_routes(base: &Config, policy: &ProxyPolicy) -> Result<ClaimRoutes, ConfigError> {
    if policy.routes.len() > MAX_ROUTES {
        return Err(invalid("routes", format!("at most {MAX_ROUTES} routes")));
    }
    let mut merged = base.clone();
    let mut secrets = BTreeMap::new();
    let first = merged.routes.len();
    for (i, r) in policy.routes.iter().enumerate() {
        let name = claim_name(i);
        if merged.secrets.contains_key(&name) || merged.routes.iter().any(|x| x.name == name) {
            return Err(invalid(
                format!("routes[{i}]"),
                format!("{name} is taken by the file configuration"),
            ));
        }
        let secret = r.secret.as_ref().map(|id| {
            let s = SecretConfig {
                secrets_manager: Some(id.clone()),
                file: None,
                json_key: r.json_key.clone(),
            };
            secrets.insert(name.clone(), s.clone());
            merged.secrets.insert(name.clone(), s);
            name.clone()
        });
        merged.routes.push(RouteConfig {
            name: name.clone(),
            prefix: r.prefix.clone(),
            upstream: r.upstream.clone(),
            auth: match r.auth {
                CredentialAuth::Sigv4 => AuthMethod::Sigv4,
                CredentialAuth::Bearer => AuthMethod::Bearer,
                CredentialAuth::Header => AuthMethod::Header,
            },
            secret,
            header: r.header.clone(),
            region: r.region.clone(),
            service: r.service.clone(),
            methods: None,
            paths: None,
            max_body_bytes: None,
            allow_private_upstream: policy.allow_private.clone(),
        });
    }
    let mut prefixes = std::collections::HashSet::new();
    for (i, r) in merged.routes.iter().enumerate() {
        if !prefixes.insert(r.prefix.as_str()) {
            let field = if i >= first {
                format!("routes[{}].prefix", i - first)
            } else {
                format!("routes[{i}].prefix")
            };
            return Err(invalid(field, format!("{} is used twice", r.prefix)));
        }
    }
    // The file's rules, with claim route indexes renamed to the claim's own.
    merged.validate().map_err(|e| match e {
        ConfigError::Invalid { field, message } => ConfigError::Invalid {
            field: renumber(&field, first),
            message,
        },
        other => other,
    })?;
    let routes = merged.routes[first..]
        .iter()
        .map(|r| {
            Route::compile(r, base.limits.max_body_bytes).map(|mut route| {
                route.claimed = true;
                route
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| invalid("routes", m))?;
    Ok(ClaimRoutes { routes, secrets })
}

/// `routes[7].secret` with 5 file routes → `routes[2].secret`.
fn renumber(field: &str, first: usize) -> String {
    let Some(rest) = field.strip_prefix("routes[") else {
        return field.to_owned();
    };
    let Some((n, tail)) = rest.split_once(']') else {
        return field.to_owned();
    };
    match n.parse::<usize>() {
        Ok(n) if n >= first => format!("routes[{}]{tail}", n - first),
        _ => field.to_owned(),
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A compiled egress list behind an `Arc`, as the proxy swaps it.
pub type SharedEgress = Arc<Egress>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: &str, ports: &[u16]) -> EgressRule {
        EgressRule {
            host: host.into(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn wildcards_match_below_the_domain_only() {
        let e = Egress::compile(
            &[
                rule("*.pythonhosted.org", &[]),
                rule("pypi.org", &[443, 8443]),
            ],
            &[],
        )
        .unwrap();
        assert!(e.allows("files.pythonhosted.org", 443));
        assert!(e.allows("a.b.pythonhosted.org", 443));
        assert!(!e.allows("pythonhosted.org", 443));
        assert!(!e.allows("evilpythonhosted.org", 443));
        assert!(!e.allows("files.pythonhosted.org", 80));
        assert!(e.allows("pypi.org", 8443));
        assert!(!e.allows("pypi.org.evil.com", 443));
    }

    #[test]
    fn bad_rules_name_their_field() {
        for (rules, field) in [
            (vec![rule("pypi.org", &[0])], "egress[0].ports"),
            (
                vec![rule("ok.org", &[]), rule("*.com", &[])],
                "egress[1].host",
            ),
            (vec![rule("2852039166", &[])], "egress[0].host"),
            (vec![rule("a b", &[])], "egress[0].host"),
            (vec![rule("*.10.0.0.1", &[])], "egress[0].host"),
        ] {
            match Egress::compile(&rules, &[]) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{rules:?}"),
                other => panic!("{rules:?}: {other:?}"),
            }
        }
        assert!(Egress::compile(&[], &["10.0.0.0/33".into()]).is_err());
    }

    fn route(
        prefix: &str,
        auth: CredentialAuth,
        secret: Option<&str>,
    ) -> berth_wire::CredentialRoute {
        berth_wire::CredentialRoute {
            auth,
            ..berth_wire::CredentialRoute::bearer(prefix, "https://mcp.example.com/v1", secret)
        }
    }

    #[test]
    fn claim_routes_get_the_files_rules_and_their_own_field_names() {
        let base = Config::default();
        let ok = ProxyPolicy {
            workspace_id: "ws-1".into(),
            routes: vec![route(
                "/mcp/",
                CredentialAuth::Bearer,
                Some("arn:aws:secretsmanager:x"),
            )],
            ..ProxyPolicy::default()
        };
        let c = compile_routes(&base, &ok).unwrap();
        assert_eq!(c.routes.len(), 1);
        assert!(c.routes[0].claimed);
        assert_eq!(
            c.secrets["claim-0"].secrets_manager.as_deref(),
            Some("arn:aws:secretsmanager:x")
        );
        for (routes, field) in [
            (
                vec![route("/mcp/", CredentialAuth::Bearer, None)],
                "routes[0].secret",
            ),
            (
                vec![
                    route("/a/", CredentialAuth::Bearer, Some("s")),
                    route("/a/", CredentialAuth::Bearer, Some("s")),
                ],
                "routes[1].prefix",
            ),
            (
                vec![route("mcp", CredentialAuth::Bearer, Some("s"))],
                "routes[0].prefix",
            ),
            (
                vec![route("/h/", CredentialAuth::Header, Some("s"))],
                "routes[0].header",
            ),
            (
                vec![route("/b/", CredentialAuth::Sigv4, None)],
                "routes[0].region",
            ),
        ] {
            let p = ProxyPolicy {
                routes,
                ..ProxyPolicy::default()
            };
            match compile_routes(&base, &p) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                Err(other) => panic!("{other:?}"),
                Ok(_) => panic!("accepted {field}"),
            }
        }
    }
}

//! The proxy's configuration: a TOML file, then environment overrides, then checks.
//!
//! Background: the proxy is the workspace's only door out, so its configuration is
//! its security policy. Everything that widens the door — an upstream, a private
//! address range an upstream may resolve to, a CONNECT target — is written out
//! explicitly per route; nothing is inferred. A configuration that does not pass
//! [`Config::validate`] never serves a request (the binary exits 64).
//!
//! Environment variables are read through the [`Env`] trait so that tests pass a map
//! instead of mutating the process environment.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::net::Cidr;

/// Where configuration values come from besides the file.
pub trait Env {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct SystemEnv;

impl Env for SystemEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// Everything wrong with a configuration, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// An environment override could not be parsed.
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    /// A value is present but not acceptable.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The workspace this proxy serves, written on every audit line (a claim's
    /// policy sets it).
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// The admin channel hostd pushes a claim's policy to; off when absent.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// SHA-256 (hex) of the slot's claim secret, which every admin call must carry.
    #[serde(default)]
    pub admin_secret_sha256: Option<String>,
    /// How upstream names are resolved.
    #[serde(default)]
    pub dns: DnsMode,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Settings of the Secrets Manager client.
    #[serde(default)]
    pub secrets_manager: SecretsManagerConfig,
    /// Named secrets, referenced by routes.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretConfig>,
    /// Static name → address answers, consulted before DNS and checked like DNS
    /// answers (like `/etc/hosts`).
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// CONNECT passthrough targets (no injection).
    #[serde(default)]
    pub connect: Vec<ConnectConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// How upstream names are resolved.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DnsMode {
    /// `[hosts]` first, then the system resolver.
    #[default]
    System,
    /// `[hosts]` only; anything else fails to resolve. Tests use this so that no
    /// DNS query ever leaves the machine.
    HostsOnly,
}

/// Bounds on what a client may send and how long the proxy waits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Request line and headers together; more is answered with 431.
    pub max_header_bytes: usize,
    /// Number of request headers; more is answered with 431.
    pub max_headers: usize,
    /// Request body, unless a route sets its own; more is answered with 413.
    pub max_body_bytes: u64,
    /// A client must send its whole request head within this time (slowloris).
    pub header_timeout_ms: u64,
    /// TCP connect plus TLS handshake to an upstream.
    pub upstream_connect_timeout_ms: u64,
    /// From sending a request to receiving the upstream's response head.
    pub upstream_response_timeout_ms: u64,
    /// Concurrent client connections; more are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 32 * 1024 * 1024,
            header_timeout_ms: 10_000,
            upstream_connect_timeout_ms: 10_000,
            upstream_response_timeout_ms: 300_000,
            max_connections: 512,
        }
    }
}

impl Limits {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_connect_timeout_ms)
    }
    pub fn upstream_response_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_response_timeout_ms)
    }
}

/// Which certificate authorities upstreams are verified against. There is no way
/// to turn verification off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub roots: RootStore,
    /// Extra CA certificates (PEM), e.g. a test's own CA.
    #[serde(default)]
    pub extra_ca_files: Vec<PathBuf>,
}

/// The base set of trusted roots.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RootStore {
    /// Mozilla's roots, compiled in (the proxy image has no CA bundle).
    #[default]
    Webpki,
    /// Only `extra_ca_files`.
    None,
}

/// The Secrets Manager client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsManagerConfig {
    /// Region; the standard chain's region when absent.
    pub region: Option<String>,
    /// Endpoint override (tests point this at moto).
    pub endpoint_url: Option<String>,
    /// How often every secret is fetched again.
    pub refresh_seconds: u64,
}

impl Default for SecretsManagerConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            refresh_seconds: 300,
        }
    }
}

/// Where one named secret comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// A Secrets Manager secret id (name or ARN).
    #[serde(default)]
    pub secrets_manager: Option<String>,
    /// A file (for example a mounted secret); re-read on every refresh.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// When the secret is a JSON object, the field holding the value.
    #[serde(default)]
    pub json_key: Option<String>,
}

/// How a route authenticates to its upstream.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// AWS Signature V4.
    Sigv4,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<header>: <secret>`.
    Header,
    /// Nothing injected (client credentials are still stripped).
    None,
}

/// One route: a path prefix to an HTTPS upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// Path prefix, starting and ending with `/`, e.g. `/bedrock/`.
    pub prefix: String,
    /// `https://host[:port][/base-path]`.
    pub upstream: String,
    pub auth: AuthMethod,
    /// The named secret (bearer, header; sigv4 credentials as JSON — without it,
    /// sigv4 uses the proxy's own standard AWS credential chain).
    #[serde(default)]
    pub secret: Option<String>,
    /// The header to set for `auth = "header"`.
    #[serde(default)]
    pub header: Option<String>,
    /// SigV4 region and service.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    /// Allowed methods; a sensible default set when absent. TRACE and CONNECT are
    /// never allowed on a route.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Allowed paths below the prefix, as patterns where `*` matches one path
    /// segment and a trailing `/**` anything below; any path when absent.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// Request body limit for this route.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Address ranges this upstream may resolve to although they are private or
    /// loopback. Metadata addresses stay refused. For tests and in-VPC services.
    #[serde(default)]
    pub allow_private_upstream: Vec<String>,
}

/// One CONNECT passthrough target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// `host:port`, matched exactly (case-insensitively).
    pub target: String,
    #[serde(default)]
    pub allow_private_upstream: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            workspace_id: None,
            admin_listen: None,
            admin_secret_sha256: None,
            dns: DnsMode::default(),
            limits: Limits::default(),
            tls: TlsConfig::default(),
            secrets_manager: SecretsManagerConfig::default(),
            secrets: BTreeMap::new(),
            hosts: BTreeMap::new(),
            routes: Vec::new(),
            connect: Vec::new(),
        }
    }
}

/// Environment variables that override the file.
pub const ENV_VARS: &[&str] = &[
    "BERTH_PROXY_LISTEN",
    "BERTH_WORKSPACE_ID",
    "BERTH_PROXY_ADMIN_LISTEN",
    "BERTH_CLAIM_SECRET_SHA256",
    "BERTH_PROXY_DNS",
    "BERTH_PROXY_MAX_HEADER_BYTES",
    "BERTH_PROXY_MAX_HEADERS",
    "BERTH_PROXY_MAX_BODY_BYTES",
    "BERTH_PROXY_HEADER_TIMEOUT_MS",
    "BERTH_PROXY_MAX_CONNECTIONS",
    "BERTH_PROXY_EXTRA_CA_FILES",
    "BERTH_PROXY_SECRETS_REGION",
    "BERTH_PROXY_SECRETS_ENDPOINT",
    "BERTH_PROXY_SECRETS_REFRESH_SECONDS",
];

fn parse_env<T: std::str::FromStr>(
    env: &dyn Env,
    var: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match env.get(var) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: T::Err| ConfigError::Env {
                var,
                message: e.to_string(),
            }),
    }
}

impl Config {
    /// Reads `path` (when given), applies the environment, validates.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Self::parse(&text).map_err(|message| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message,
                })?
            }
            None => Self::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment, no validation).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies the `BERTH_*` overrides.
    pub fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        if let Some(v) = parse_env(env, "BERTH_PROXY_LISTEN")? {
            self.listen = v;
        }
        if let Some(v) = env.get("BERTH_WORKSPACE_ID") {
            self.workspace_id = Some(v);
        }
        if let Some(v) = parse_env(env, "BERTH_PROXY_ADMIN_LISTEN")? {
            self.admin_listen = Some(v);
        }
        if let Some(v) = env.get("BERTH_CLAIM_SECRET_SHA256") {
            self.admin_secret_sha256 = Some(v.trim().to_ascii_lowercase());
        }
        if let Some(v) = env.get("BERTH_PROXY_DNS") {
            self.dns = match v.as_str() {
                "system" => DnsMode::System,
                "hosts-only" => DnsMode::HostsOnly,
                other => {
                    return Err(ConfigError::Env {
                        var: "BERTH_PROXY_DNS",
                        message: format!("expected system or hosts-only, got {other:?}"),
                    });
                }
            };
        }
        if let Some(v) = parse_env(env, "BERTH_PROXY_MAX_HEADER_BYTES")? {
            self.limits.max_header_bytes = v;
        }
        if let Some(v) = parse_env(env, "BERTH_PROXY_MAX_HEADERS")? {
            self.limits.max_headers = v;
        }
        if let Some(v) = parse_env(env, "BERTH_PROXY_MAX_BODY_BYTES")? {
            self.limits.max_body_bytes = v;
        }
        if let Some(v) = parse_env(env, "BERTH_PROXY_HEADER_TIMEOUT_MS")? {
            self.limits.header_timeout_ms = v;
        }
        if let Some(v) = parse_env(env, "BERTH_PROXY_MAX_CONNECTIONS")? {
            self.limits.max_connections = v;
        }
        if let Some(v) = env.get("BERTH_PROXY_EXTRA_CA_FILES") {
            self.tls
                .extra_ca_files
                .extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
        }
        if let Some(v) = env.get("BERTH_PROXY_SECRETS_REGION") {
            self.secrets_manager.region = Some(v);
        }
        if let Some(v) = env.get("BERTH_PROXY_SECRETS_ENDPOINT") {
            self.secrets_manager.endpoint_url = Some(v);
        }
        if let Some(v) = parse_env(env, "BERTH_PROXY_SECRETS_REFRESH_SECONDS")? {
            self.secrets_manager.refresh_seconds = v;
        }
        Ok(())
    }

    /// Checks every rule a route, secret or limit must obey.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if !(1024..=1024 * 1024).contains(&l.max_header_bytes) {
            return Err(invalid(
                "limits.max_header_bytes",
                "must be between 1 KiB and 1 MiB",
            ));
        }
        if !(8..=10_000).contains(&l.max_headers) {
            return Err(invalid("limits.max_headers", "must be between 8 and 10000"));
        }
        if l.header_timeout_ms == 0 || l.upstream_connect_timeout_ms == 0 {
            return Err(invalid("limits", "timeouts must be positive"));
        }
        if l.upstream_response_timeout_ms == 0 || l.max_connections == 0 {
            return Err(invalid(
                "limits",
                "upstream_response_timeout_ms and max_connections must be positive",
            ));
        }
        if let Some(h) = &self.admin_secret_sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid("admin_secret_sha256", "must be 64 hex digits"));
        }
        if self.admin_listen.is_some() && self.admin_secret_sha256.is_none() {
            return Err(invalid(
                "admin_secret_sha256",
                "required with admin_listen (BERTH_CLAIM_SECRET_SHA256): the admin channel never runs open",
            ));
        }
        if self.secrets_manager.refresh_seconds == 0 {
            return Err(invalid(
                "secrets_manager.refresh_seconds",
                "must be positive",
            ));
        }
        for (name, s) in &self.secrets {
            let field = format!("secrets.{name}");
            match (&s.secrets_manager, &s.file) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(invalid(
                        field,
                        "exactly one of secrets_manager or file is required",
                    ));
                }
            }
        }
        for (name, addrs) in &self.hosts {
            if addrs.is_empty() {
                return Err(invalid(
                    format!("hosts.{name}"),
                    "needs at least one address",
                ));
            }
            check_host_name(name).map_err(|m| invalid(format!("hosts.{name}"), m))?;
        }
        let mut seen_names = std::collections::HashSet::new();
        let mut upstream_ranges: HashMap<(String, u16), Vec<String>> = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if r.name.is_empty() || !seen_names.insert(r.name.clone()) {
                return Err(invalid(
                    format!("{field}.name"),
                    "must be present and unique",
                ));
            }
            berth_wire::settings::check_route_prefix(&r.prefix)
                .map_err(|m| invalid(format!("{field}.prefix"), m))?;
            let up = Upstream::parse(&r.upstream)
                .map_err(|m| invalid(format!("{field}.upstream"), m))?;
            for c in &r.allow_private_upstream {
                c.parse::<Cidr>()
                    .map_err(|m| invalid(format!("{field}.allow_private_upstream"), m))?;
            }
            let mut sorted = r.allow_private_upstream.clone();
            sorted.sort();
            let key = (up.host.clone(), up.port);
            if let Some(prev) = upstream_ranges.insert(key, sorted.clone())
                && prev != sorted
            {
                return Err(invalid(
                    format!("{field}.allow_private_upstream"),
                    "routes sharing an upstream host must allow the same ranges",
                ));
            }
            let needs_secret = matches!(r.auth, AuthMethod::Bearer | AuthMethod::Header);
            if needs_secret && r.secret.is_none() {
                return Err(invalid(
                    format!("{field}.secret"),
                    "required for bearer and header",
                ));
            }
            if r.auth == AuthMethod::None && r.secret.is_some() {
                return Err(invalid(
                    format!("{field}.secret"),
                    "not used with auth = none",
                ));
            }
            if let Some(s) = &r.secret
                && !self.secrets.contains_key(s)
            {
                return Err(invalid(
                    format!("{field}.secret"),
                    format!("names no entry of [secrets]: {s:?}"),
                ));
            }
            match r.auth {
                AuthMethod::Header => {
                    let h = r.header.as_deref().unwrap_or_default();
                    if http::HeaderName::from_bytes(h.as_bytes()).is_err()
                        || crate::headers::is_reserved(h)
                    {
                        return Err(invalid(
                            format!("{field}.header"),
                            "a valid, non-hop-by-hop header name is required",
                        ));
                    }
                }
                AuthMethod::Sigv4 => {
                    for (k, v) in [("region", &r.region), ("service", &r.service)] {
                        if v.as_deref().is_none_or(str::is_empty) {
                            return Err(invalid(format!("{field}.{k}"), "required for sigv4"));
                        }
                    }
                }
                _ => {}
            }
            if let Some(methods) = &r.methods {
                for m in methods {
                    let ok = http::Method::from_bytes(m.as_bytes()).is_ok()
                        && m.bytes().all(|b| b.is_ascii_uppercase());
                    if !ok || m == "TRACE" || m == "CONNECT" {
                        return Err(invalid(
                            format!("{field}.methods"),
                            format!("{m:?} is not an allowed method"),
                        ));
                    }
                }
            }
            if let Some(paths) = &r.paths {
                for p in paths {
                    if !p.starts_with('/') {
                        return Err(invalid(
                            format!("{field}.paths"),
                            format!("{p:?} must start with '/'"),
                        ));
                    }
                }
            }
        }
        for (i, c) in self.connect.iter().enumerate() {
            let field = format!("connect[{i}]");
            let (host, port) = split_host_port(&c.target)
                .ok_or_else(|| invalid(format!("{field}.target"), "must be host:port"))?;
            check_host_name(host).map_err(|m| invalid(format!("{field}.target"), m))?;
            if port == 0 {
                return Err(invalid(format!("{field}.target"), "port must not be 0"));
            }
            for r in &c.allow_private_upstream {
                r.parse::<Cidr>()
                    .map_err(|m| invalid(format!("{field}.allow_private_upstream"), m))?;
            }
        }
        Ok(())
    }
}

/// A parsed upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Lower-case host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    /// Base path without a trailing slash (`""` for none).
    pub base_path: String,
}

impl Upstream {
    /// Parses `https://host[:port][/path]`; only HTTPS is accepted.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url:?}: only https:// upstreams are allowed"));
        }
        let auth = uri.authority().ok_or_else(|| format!("{url:?}: no host"))?;
        if auth.as_str().contains('@') {
            return Err(format!("{url:?}: user info is not allowed"));
        }
        if uri.query().is_some() {
            return Err(format!("{url:?}: a query is not allowed"));
        }
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        check_host_name(&host)?;
        let base_path = uri.path().trim_end_matches('/').to_owned();
        if crate::route::check_path(&format!("{base_path}/")).is_err() {
            return Err(format!("{url:?}: path must be plain"));
        }
        Ok(Self {
            host,
            port: auth.port_u16().unwrap_or(443),
            base_path,
        })
    }

    /// `host:port` as used in the Host header and the connection pool's key.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Splits `host:port` / `[v6]:port`.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

pub use berth_wire::settings::check_host_name;

#[cfg(test)]
mod tests {
    use super::*;

    fn route(extra: &str) -> String {
        format!(
            "[secrets.t]\nfile = \"/x\"\n[[routes]]\nname = \"r\"\nprefix = \"/r/\"\n\
             upstream = \"https://api.example.com/v1\"\n{extra}\n"
        )
    }

    fn check(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::parse(text).map_err(|m| invalid("parse", m))?;
        c.apply_env(&HashMap::new())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn a_good_route_parses() {
        let c = check(&route("auth = \"bearer\"\nsecret = \"t\"")).unwrap();
        let up = Upstream::parse(&c.routes[0].upstream).unwrap();
        assert_eq!(up.host, "api.example.com");
        assert_eq!(up.base_path, "/v1");
        assert_eq!(up.authority(), "api.example.com");
    }

    #[test]
    fn bad_routes_name_the_field() {
        for (extra, field) in [
            ("auth = \"bearer\"", "routes[0].secret"),
            ("auth = \"bearer\"\nsecret = \"nope\"", "routes[0].secret"),
            (
                "auth = \"header\"\nsecret = \"t\"\nheader = \"connection\"",
                "routes[0].header",
            ),
            (
                "auth = \"sigv4\"\nregion = \"us-east-1\"",
                "routes[0].service",
            ),
            (
                "auth = \"none\"\nmethods = [\"TRACE\"]",
                "routes[0].methods",
            ),
            (
                "auth = \"none\"\nallow_private_upstream = [\"10.0.0.0/33\"]",
                "routes[0].allow_private_upstream",
            ),
        ] {
            match check(&route(extra)) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
    }

    #[test]
    fn upstreams_must_be_https_and_canonical() {
        for bad in [
            "http://api.example.com",
            "https://user@api.example.com",
            "https://2852039166/",
            "https://0xa9fea9fe/",
            "https://0251.0376.0251.0376/",
            "https://api.example.com./",
            "https://api.example.com/a/../b",
            "https://api.example.com/?q=1",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Upstream::parse("https://[::1]:8443").unwrap().authority(),
            "[::1]:8443"
        );
    }

    #[test]
    fn env_overrides_the_file() {
        let mut c = Config::default();
        let env: HashMap<String, String> = [
            ("BERTH_PROXY_LISTEN", "127.0.0.1:9"),
            ("BERTH_PROXY_MAX_BODY_BYTES", "10"),
            ("BERTH_WORKSPACE_ID", "ws-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        c.apply_env(&env).unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(c.limits.max_body_bytes, 10);
        assert_eq!(c.workspace_id.as_deref(), Some("ws-1"));
        let bad: HashMap<String, String> =
            [("BERTH_PROXY_MAX_HEADERS".to_owned(), "many".to_owned())].into();
        assert!(matches!(
            c.apply_env(&bad),
            Err(ConfigError::Env {
                var: "BERTH_PROXY_MAX_HEADERS",
                ..
            })
        ));
    }
}

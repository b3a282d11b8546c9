//! Routes: which request goes to which upstream, and what it may ask for there.
//!
//! Background: routing is by the request path alone. `Host` is ignored for routing
//! and rewritten, so spoofing it gains nothing. Paths that an upstream might
//! normalise into another route's space (`/bedrock/../mcp/`, `%2e%2e`, `%2f`,
//! backslashes, `//`) are refused before any matching, so the prefix the proxy
//! checked is the prefix the upstream sees.

use http::{HeaderName, Method};

use crate::config::{AuthMethod, RouteConfig, Upstream};
use crate::net::AddressPolicy;

/// Why a path is refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    NotAbsolute,
    DotSegment,
    EncodedSeparator,
    Backslash,
    EmptySegment,
    ControlCharacter,
}

impl BadPath {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAbsolute => "path must start with '/'",
            Self::DotSegment => "path has a '.' or '..' segment",
            Self::EncodedSeparator => "path has an encoded '.', '/', '\\' or NUL",
            Self::Backslash => "path has a backslash",
            Self::EmptySegment => "path has an empty segment",
            Self::ControlCharacter => "path has a control character",
        }
    }
}

/// Refuses paths an upstream could normalise into a different place.
pub fn check_path(path: &str) -> Result<(), BadPath> {
    if !path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    if path.bytes().any(|b| b.is_ascii_control()) {
        return Err(BadPath::ControlCharacter);
    }
    if path.contains('\\') {
        return Err(BadPath::Backslash);
    }
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00", "%25"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return Err(BadPath::EncodedSeparator);
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, s) in segments.iter().enumerate() {
        if *s == "." || *s == ".." {
            return Err(BadPath::DotSegment);
        }
        if s.is_empty() && i != last {
            return Err(BadPath::EmptySegment);
        }
    }
    Ok(())
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub prefix: String,
    pub upstream: Upstream,
    /// `host[:port]` for the Host header.
    pub authority: http::uri::Authority,
    pub auth: AuthMethod,
    pub secret: Option<String>,
    /// The header the route injects (bearer: authorization; header: its name).
    pub injected: Option<HeaderName>,
    pub region: String,
    pub service: String,
    pub methods: Vec<Method>,
    pub paths: Option<Vec<String>>,
    pub max_body_bytes: u64,
    pub policy: AddressPolicy,
    /// Pushed with a claim (its secret lives in the claim's store), not from the file.
    pub claimed: bool,
}

const DEFAULT_METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

impl Route {
    /// Compiles a validated [`RouteConfig`].
    pub fn compile(c: &RouteConfig, default_body: u64) -> Result<Self, String> {
        let upstream = Upstream::parse(&c.upstream)?;
        let authority = upstream
            .authority()
            .parse()
            .map_err(|e| format!("{}: {e}", c.upstream))?;
        let injected = match c.auth {
            AuthMethod::Bearer => Some(http::header::AUTHORIZATION),
            AuthMethod::Header => Some(
                HeaderName::from_bytes(c.header.as_deref().unwrap_or_default().as_bytes())
                    .map_err(|e| e.to_string())?,
            ),
            AuthMethod::Sigv4 | AuthMethod::None => None,
        };
        let methods = match &c.methods {
            None => DEFAULT_METHODS.to_vec(),
            Some(m) => m
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            name: c.name.clone(),
            prefix: c.prefix.clone(),
            upstream,
            authority,
            auth: c.auth,
            secret: c.secret.clone(),
            injected,
            region: c.region.clone().unwrap_or_default(),
            service: c.service.clone().unwrap_or_default(),
            methods,
            paths: c.paths.clone(),
            max_body_bytes: c.max_body_bytes.unwrap_or(default_body),
            policy: AddressPolicy::from_strings(&c.allow_private_upstream)?,
            claimed: false,
        })
    }

    /// The path below the prefix, always starting with `/`.
    pub fn rest<'a>(&self, path: &'a str) -> &'a str {
        &path[self.prefix.len() - 1..]
    }

    /// Whether the route's method and path policy allow this request.
    pub fn allows_method(&self, m: &Method) -> bool {
        self.methods.contains(m)
    }

    pub fn allows_path(&self, rest: &str) -> bool {
        match &self.paths {
            None => true,
            Some(patterns) => patterns.iter().any(|p| glob_match(p, rest)),
        }
    }

    /// The upstream path and query for a request path below this route.
    pub fn upstream_path_and_query(&self, rest: &str, query: Option<&str>) -> String {
        match query {
            Some(q) => format!("{}{rest}?{q}", self.upstream.base_path),
            None => format!("{}{rest}", self.upstream.base_path),
        }
    }
}

/// `*` matches exactly one non-empty segment; a trailing `/**` matches anything
/// (including nothing) below.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let (pattern, any_below) = match pattern.strip_suffix("/**") {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let mut ps = pattern.split('/');
    let mut xs = path.split('/');
    loop {
        match (ps.next(), xs.next()) {
            (None, None) => return true,
            (None, Some(_)) => return any_below,
            (Some(_), None) => return false,
            (Some("*"), Some(x)) if !x.is_empty() => {}
            (Some(p), Some(x)) if p == x => {}
            _ => return false,
        }
    }
}

/// All routes, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// The table's routes, consumed (to build a new table with more).
    pub fn into_routes(self) -> Vec<Route> {
        self.routes
    }

    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes }
    }

    /// The route whose prefix the path starts with (longest wins).
    pub fn by_path(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| path.starts_with(&r.prefix))
    }

    /// For absolute-form requests: the route whose upstream is exactly this host
    /// and port and whose base path the request path lies under (the longest base path
    /// wins). Returns the route
    /// and the path below the base.
    pub fn by_upstream<'a>(
        &self,
        host: &str,
        port: u16,
        path: &'a str,
    ) -> Option<(&Route, &'a str)> {
        self.routes
            .iter()
            .filter_map(|r| {
                if r.upstream.host != host || r.upstream.port != port {
                    return None;
                }
                let rest = path.strip_prefix(r.upstream.base_path.as_str())?;
                rest.starts_with('/').then_some((r, rest))
            })
            .max_by_key(|(r, _)| r.upstream.base_path.len())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_encoded_separators_are_refused() {
        for (p, want) in [
            ("/bedrock/../mcp/x", BadPath::DotSegment),
            ("/bedrock/./x", BadPath::DotSegment),
            ("/bedrock/%2e%2e/mcp/x", BadPath::EncodedSeparator),
            ("/bedrock%2fx", BadPath::EncodedSeparator),
            ("/bedrock/%252e%252e/x", BadPath::EncodedSeparator),
            ("/bedrock\\..\\mcp", BadPath::Backslash),
            ("/bedrock//x", BadPath::EmptySegment),
            ("bedrock/x", BadPath::NotAbsolute),
        ] {
            assert_eq!(check_path(p), Err(want), "{p}");
        }
        assert!(check_path("/bedrock/model/anthropic.claude-v2%3A1/invoke").is_ok());
        assert!(check_path("/mcp/").is_ok());
    }

    #[test]
    fn globs_match_segments() {
        assert!(glob_match("/model/*/invoke", "/model/a.b%3A0/invoke"));
        assert!(!glob_match("/model/*/invoke", "/model/a/b/invoke"));
        assert!(!glob_match("/model/*/invoke", "/model//invoke"));
        assert!(!glob_match("/model/*/invoke", "/model/a/invoke/x"));
        assert!(glob_match("/v1/**", "/v1/a/b"));
        assert!(glob_match("/v1/**", "/v1"));
        assert!(!glob_match("/v1/**", "/v2/a"));
    }
}

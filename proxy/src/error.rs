//! Every way a request can fail, with its status and stable code.
//!
//! Messages name hosts, routes and limits — things the workspace already knows or
//! may know — and never a credential or anything an upstream said. Details that
//! help on-call (resolver errors, TLS alerts) go to the log only.

use http::StatusCode;

use crate::net::{ConnectError, Forbidden};

/// A request the proxy refused or could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route's prefix matches the path.
    #[error("no configured route allows this request")]
    RouteNotAllowed,
    /// The route does not allow this method.
    #[error("method {method} is not allowed on route {route}")]
    MethodNotAllowed { route: String, method: String },
    /// The route's path patterns do not allow this path.
    #[error("this path is not allowed on route {route}")]
    PathNotAllowed { route: String },
    /// Traversal, encoded separators and similar.
    #[error("{0}")]
    BadPath(&'static str),
    /// Duplicate Host, or an absolute-form target disagreeing with Host.
    #[error("ambiguous target: {0}")]
    BadHost(&'static str),
    /// An absolute-form request for something that is not a configured upstream.
    #[error("{authority} is not an allowlisted upstream")]
    UpstreamNotAllowed { authority: String },
    /// CONNECT to a target off the passthrough allowlist.
    #[error("CONNECT to {authority} is not allowlisted")]
    ConnectNotAllowed { authority: String },
    /// Protocol upgrades (WebSocket, h2c) are not forwarded.
    #[error("protocol upgrades are not allowed")]
    UpgradeNotAllowed,
    /// The request body is over the route's limit.
    #[error("request body is over the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The client's body failed mid-stream.
    #[error("request body could not be read")]
    BodyRead,
    /// The route's credential has never been fetched (or its secret is malformed).
    #[error("credentials for route {route} are not available")]
    CredentialUnavailable { route: String },
    /// Resolution, checks, TCP or TLS to the upstream failed.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The upstream did not answer in time.
    #[error("upstream {host} did not answer in time")]
    UpstreamTimeout { host: String },
    /// The upstream connection failed after it was made.
    #[error("upstream {host} failed")]
    UpstreamFailed { host: String },
    /// Signing failed (not a client error).
    #[error("request could not be signed")]
    Signing,
}

impl ProxyError {
    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RouteNotAllowed
            | Self::PathNotAllowed { .. }
            | Self::UpstreamNotAllowed { .. }
            | Self::ConnectNotAllowed { .. }
            | Self::UpgradeNotAllowed => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadPath(_) | Self::BadHost(_) | Self::BodyRead => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::CredentialUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect(c) => match c {
                ConnectError::NotConfigured { .. } | ConnectError::Forbidden { .. } => {
                    StatusCode::FORBIDDEN
                }
                ConnectError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                ConnectError::Resolve(_) | ConnectError::Tcp { .. } | ConnectError::Tls { .. } => {
                    StatusCode::BAD_GATEWAY
                }
            },
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::Signing => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code clients and dashboards switch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RouteNotAllowed => "route_not_allowed",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::PathNotAllowed { .. } => "path_not_allowed",
            Self::BadPath(_) => "bad_path",
            Self::BadHost(_) => "bad_host",
            Self::UpstreamNotAllowed { .. } => "upstream_not_allowed",
            Self::ConnectNotAllowed { .. } => "connect_not_allowed",
            Self::UpgradeNotAllowed => "upgrade_not_allowed",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyRead => "body_read_failed",
            Self::CredentialUnavailable { .. } => "credential_unavailable",
            Self::Connect(c) => match c {
                ConnectError::NotConfigured { .. } => "upstream_not_allowed",
                ConnectError::Forbidden {
                    reason: Forbidden::Metadata,
                    ..
                } => "upstream_address_metadata",
                ConnectError::Forbidden { .. } => "upstream_address_forbidden",
                ConnectError::Resolve(_) => "upstream_unresolvable",
                ConnectError::Tcp { .. } => "upstream_unreachable",
                ConnectError::Tls { .. } => "upstream_tls_failed",
                ConnectError::Timeout { .. } => "upstream_connect_timeout",
            },
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::Signing => "signing_failed",
        }
    }

    /// The destination a refusal was about, for the egress view (`None` for
    /// refusals that name no destination: paths, methods, bodies).
    pub fn destination(&self) -> Option<String> {
        match self {
            Self::UpstreamNotAllowed { authority } | Self::ConnectNotAllowed { authority } => {
                Some(authority.clone())
            }
            Self::Connect(c) => Some(match c {
                ConnectError::NotConfigured { host, port }
                | ConnectError::Tcp { host, port, .. }
                | ConnectError::Timeout { host, port } => format!("{host}:{port}"),
                ConnectError::Forbidden { host, .. } | ConnectError::Tls { host, .. } => {
                    host.clone()
                }
                ConnectError::Resolve(crate::net::ResolveError::NotFound { host })
                | ConnectError::Resolve(crate::net::ResolveError::Io { host, .. }) => host.clone(),
            }),
            _ => None,
        }
    }

    /// The message for the client: TLS and TCP details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Connect(ConnectError::Tls { host, .. }) => {
                format!("TLS to upstream {host} failed verification or handshake")
            }
            Self::Connect(ConnectError::Tcp { host, port, .. }) => {
                format!("upstream {host}:{port} unreachable")
            }
            Self::Connect(ConnectError::Resolve(_)) => "upstream name did not resolve".into(),
            other => other.to_string(),
        }
    }
}

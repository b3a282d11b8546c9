//! The credential-proxy: the workspace's only door out, holding the secrets.
//!
//! It shares the workspace's network namespace and listens on :8080. Requests are
//! routed by path prefix to allowlisted HTTPS upstreams, with the workspace's own
//! credentials stripped and the route's credential injected (a bearer token, a
//! header, or an AWS SigV4 signature). Upstream names are resolved and checked by
//! the proxy itself and connected to by checked address only, so loopback,
//! private, link-local and metadata addresses stay out of reach however DNS
//! answers. With no routes configured every request other than `/health` and
//! `/metrics` is refused with `403 route_not_allowed`.
//!
//! Modules, in the order a request meets them: [`server`] (connection limits),
//! [`proxy`] (gates, rewrite, forward), [`route`], [`headers`], [`sign`],
//! [`secrets`], [`upstream`] and [`net`] (where a socket may go), [`body`]
//! (streaming, audit), [`metrics`], [`error`]; [`config`] feeds them all. A claim's
//! own routes and egress allowlist ([`policy`]) arrive over the admin channel
//! ([`admin`]), which only hostd can use.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod config;
pub mod error;
pub mod headers;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod secrets;
pub mod server;
pub mod sign;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use proxy::Proxy;
pub use server::serve;

/// Loads the AWS configuration from the standard chain of the proxy's own
/// container (environment, web identity, ECS container credentials, IMDS), with
/// the region of the Secrets Manager settings when given.
pub async fn load_aws(config: &Config) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &config.secrets_manager.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    loader.load().await
}

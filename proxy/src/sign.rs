//! AWS Signature V4 for routes such as Bedrock.
//!
//! Background: the workspace never holds AWS credentials. The proxy strips every
//! `Authorization` and `X-Amz-*` header the workspace sends, then signs the request
//! as it will leave (upstream URI, rewritten Host, remaining headers, body) with
//! credentials that are either the proxy's own — the standard AWS chain of its
//! container, cached until shortly before they expire — or a Secrets Manager
//! secret holding a key pair. Signing needs the body's hash, so the body is read
//! first, but never beyond the route's body limit (413 beyond that).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use http::{HeaderName, HeaderValue};
use tokio::sync::Mutex;

use crate::secrets::SecretValue;

/// Signing failed; carries no credential material.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("credentials unavailable: {0}")]
    Credentials(String),
    #[error("secret {0} is not a JSON object with AccessKeyId and SecretAccessKey")]
    SecretFormat(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The proxy's own credentials from the standard chain, cached.
pub struct ChainCredentials {
    provider: SharedCredentialsProvider,
    cached: Mutex<Option<Credentials>>,
}

impl ChainCredentials {
    pub fn new(provider: SharedCredentialsProvider) -> Self {
        Self {
            provider,
            cached: Mutex::new(None),
        }
    }

    /// Cached credentials, fetched again within five minutes of their expiry.
    pub async fn get(&self) -> Result<Credentials, SignError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c
                .expiry()
                .is_none_or(|e| e > SystemTime::now() + Duration::from_secs(300));
            if fresh {
                return Ok(c.clone());
            }
        }
        let c = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| SignError::Credentials(e.to_string()))?;
        *cached = Some(c.clone());
        Ok(c)
    }
}

/// Credentials from a secret: `{"AccessKeyId", "SecretAccessKey", "SessionToken"?}`
/// (snake_case names are accepted too).
pub fn credentials_from_secret(name: &str, v: &SecretValue) -> Result<Credentials, SignError> {
    let json: serde_json::Value =
        serde_json::from_str(v.expose()).map_err(|_| SignError::SecretFormat(name.to_owned()))?;
    let field = |a: &str, b: &str| {
        json.get(a)
            .or_else(|| json.get(b))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let id = field("AccessKeyId", "access_key_id");
    let key = field("SecretAccessKey", "secret_access_key");
    let token = field("SessionToken", "session_token");
    match (id, key) {
        (Some(id), Some(key)) => Ok(Credentials::new(id, key, token, None, "berth-secret")),
        _ => Err(SignError::SecretFormat(name.to_owned())),
    }
}

/// Signs a request about to leave: `uri` is the full upstream URI, `headers` what
/// will be sent (without Authorization), `body` the whole body. The signing
/// headers are added to `headers`, marked sensitive.
pub fn sign(
    method: &http::Method,
    uri: &http::Uri,
    headers: &mut http::HeaderMap,
    body: &[u8],
    creds: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<(), SignError> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
    let identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError::Sign(e.to_string()))?
        .into();
    let uri_s = uri.to_string();
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let signable = SignableRequest::new(
        method.as_str(),
        uri_s.as_str(),
        pairs.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SignError::Sign(e.to_string()))?;
    let (instructions, _sig) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(|e| SignError::Sign(e.to_string()))?
        .into_parts();
    let (new_headers, _params) = instructions.into_parts();
    for h in new_headers {
        let name = HeaderName::from_static(h.name());
        let mut value =
            HeaderValue::from_str(h.value()).map_err(|e| SignError::Sign(e.to_string()))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(())
}

/// Where a SigV4 route's credentials come from.
#[derive(Clone)]
pub enum CredentialSource {
    Chain(Arc<ChainCredentials>),
    Secret(String),
}

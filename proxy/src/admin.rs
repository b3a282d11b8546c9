//! The admin channel: where hostd pushes a claim's policy and changes its egress.
//!
//! Background: the workspace shares the proxy's network namespace, so it can open
//! any port the proxy listens on. Two things keep it off this one: hostd's egress
//! lock refuses the admin port to the workspace's uid (a kernel rule inside the
//! namespace, before any byte reaches us), and every call must carry the slot's
//! claim secret, of which the proxy holds only the SHA-256 (the workspace never sees
//! the secret; its own environment has the same hash, which claims nothing).
//!
//! Calls: `PUT /v1/policy` (a [`berth_wire::ProxyPolicy`]), `PUT /v1/egress` (an
//! [`berth_wire::EgressUpdate`]) and `GET /v1/egress` (an
//! [`berth_wire::EgressView`]). Errors are JSON with stable codes.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::Proxy;

/// Largest admin request body.
pub const MAX_ADMIN_BODY: usize = 1024 * 1024;

type AdminResponse = Response<Full<Bytes>>;

/// Serves the admin channel on `listener` until `shutdown` completes.
pub async fn serve_admin(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    secret_sha256: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let secret: Arc<str> = Arc::from(secret_sha256.to_ascii_lowercase());
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let proxy = proxy.clone();
        let secret = secret.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let proxy = proxy.clone();
                let secret = secret.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&proxy, &secret, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Whether `headers` carry the secret whose SHA-256 is `secret_sha256`.
fn authorized(headers: &http::HeaderMap, secret_sha256: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if presented.is_empty() {
        return false;
    }
    let digest = berth_wire::sha256_hex(presented.as_bytes());
    berth_wire::secrets_equal(digest.as_bytes(), secret_sha256.as_bytes())
}

async fn handle(proxy: &Proxy, secret_sha256: &str, req: Request<Incoming>) -> AdminResponse {
    if !authorized(req.headers(), secret_sha256) {
        tracing::warn!(path = %req.uri().path(), "admin call refused: missing or wrong claim secret");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin channel needs this slot's claim secret",
        );
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match (method, path.as_str()) {
        (Method::PUT, "/v1/policy") => {
            let policy: berth_wire::ProxyPolicy = match read_json(req).await {
                Ok(p) => p,
                Err(r) => return r,
            };
            match proxy.apply_policy(&policy).await {
                Ok(summary) => json(StatusCode::OK, &summary),
                Err(e) => invalid(&e),
            }
        }
        (Method::PUT, "/v1/egress") => {
            let update: berth_wire::EgressUpdate = match read_json(req).await {
                Ok(p) => p,
                Err(r) => return r,
            };
            match proxy.set_egress(&update.egress) {
                Ok(_) => json(StatusCode::OK, &proxy.egress_view()),
                Err(e) => invalid(&e),
            }
        }
        (Method::GET, "/v1/egress") => json(StatusCode::OK, &proxy.egress_view()),
        (_, "/v1/policy" | "/v1/egress") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "see the admin channel's calls",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin call"),
    }
}

fn invalid(e: &crate::ConfigError) -> AdminResponse {
    let (field, message) = match e {
        crate::ConfigError::Invalid { field, message } => (field.clone(), message.clone()),
        other => (String::new(), other.to_string()),
    };
    let mut body = berth_wire::ErrorBody::new("invalid_policy", format!("{field}: {message}"));
    if !field.is_empty() {
        body = body.with_field(&field);
    }
    json(StatusCode::UNPROCESSABLE_ENTITY, &body)
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, AdminResponse> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "admin bodies are at most 1 MiB",
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string()))
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> AdminResponse {
    json(status, &berth_wire::ErrorBody::new(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_itself_authorizes() {
        let hash = berth_wire::sha256_hex(b"slot-secret");
        let mut h = http::HeaderMap::new();
        assert!(!authorized(&h, &hash));
        h.insert(header::AUTHORIZATION, "Bearer slot-secreT".parse().unwrap());
        assert!(!authorized(&h, &hash));
        // The hash the workspace can read is not the secret.
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {hash}").parse().unwrap(),
        );
        assert!(!authorized(&h, &hash));
        h.insert(header::AUTHORIZATION, "Bearer slot-secret".parse().unwrap());
        assert!(authorized(&h, &hash));
    }
}

//! The credential-proxy: the workspace's only way out.
//!
//! It shares the workspace's network namespace and listens on :8080. Routes from a
//! path prefix to an allowlisted upstream, with credentials injected, come with the
//! proxy's own issue; until a route is configured every request other than
//! `/health` and `/metrics` is refused with `403 route_not_allowed`, which is the
//! safe default for a door out.
#![forbid(unsafe_code)]

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
};
use berth_wire::ErrorBody;

/// Counters exposed on `/metrics`.
#[derive(Clone, Default)]
pub struct ProxyState {
    refused: Arc<AtomicU64>,
}

/// The proxy's routes.
pub fn router(state: ProxyState) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics))
        .fallback(refuse)
        .with_state(state)
}

async fn metrics(State(state): State<ProxyState>) -> String {
    format!(
        "# HELP berth_proxy_refused_total Requests refused because no route allows them.\n\
         # TYPE berth_proxy_refused_total counter\n\
         berth_proxy_refused_total {}\n",
        state.refused.load(Ordering::Relaxed)
    )
}

async fn refuse(State(state): State<ProxyState>, uri: Uri) -> Response {
    state.refused.fetch_add(1, Ordering::Relaxed);
    tracing::info!(path = uri.path(), status = 403, "refused: no route");
    (
        StatusCode::FORBIDDEN,
        axum::Json(ErrorBody::new(
            "route_not_allowed",
            "no configured route allows this request",
        )),
    )
        .into_response()
}

/// Serves the proxy on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ProxyState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

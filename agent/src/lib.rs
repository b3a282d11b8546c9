//! The workspace-agent's HTTP API.
//!
//! The agent runs inside the untrusted workspace container and is the only way the
//! platform touches it: it answers `/health` openly, accepts exactly one
//! `POST /v1/claim` that binds the workspace to a conversation's bearer token, and
//! after that runs commands for whoever holds the token.
//!
//! Only a hash of the token is kept, and the comparison is constant-time.
#![forbid(unsafe_code)]

mod exec;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use berth_wire::{ClaimRequest, ErrorBody};
use sha2::{Digest, Sha256};

/// The agent's shared state.
#[derive(Clone)]
pub struct AgentState {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    claim: Mutex<Option<Claim>>,
}

/// What a claim binds: the workspace id, the token's hash, and the conversation's env.
#[derive(Clone)]
struct Claim {
    workspace_id: String,
    token_sha256: [u8; 32],
    env: std::collections::BTreeMap<String, String>,
}

/// Every way a request to the agent can fail. Each maps to one status and one code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("request body is not valid JSON for this route: {0}")]
    InvalidJson(String),
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("missing or malformed bearer token")]
    Unauthorized,
    #[error("workspace is already claimed")]
    AlreadyClaimed,
    #[error("workspace has not been claimed yet")]
    NotClaimed,
    #[error("cannot start command: {0}")]
    Spawn(String),
}

impl AgentError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AgentError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            AgentError::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            AgentError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AgentError::AlreadyClaimed => (StatusCode::CONFLICT, "already_claimed"),
            AgentError::NotClaimed => (StatusCode::CONFLICT, "not_claimed"),
            AgentError::Spawn(_) => (StatusCode::UNPROCESSABLE_ENTITY, "spawn_failed"),
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut body = ErrorBody::new(code, self.to_string());
        if let AgentError::InvalidField { field, .. } = &self {
            body = body.with_field(field);
        }
        (status, axum::Json(body)).into_response()
    }
}

impl AgentState {
    pub fn new(root: PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                root,
                claim: Mutex::new(None),
            }),
        }
    }

    fn claim(&self) -> Option<Claim> {
        self.inner
            .claim
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Checks the request's bearer token against the claimed one.
    fn authorize(&self, headers: &HeaderMap) -> Result<Claim, AgentError> {
        let claim = self.claim().ok_or(AgentError::NotClaimed)?;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AgentError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if constant_time_eq(&digest, &claim.token_sha256) {
            Ok(claim)
        } else {
            Err(AgentError::Unauthorized)
        }
    }
}

/// Compares two digests without an early exit, so timing says nothing of the token.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a JSON body into `T`, turning serde's message into a stable error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, AgentError> {
    serde_json::from_slice(body).map_err(|e| AgentError::InvalidJson(e.to_string()))
}

/// The agent's routes.
pub fn router(state: AgentState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/claim", post(claim))
        .route("/v1/exec", post(exec::exec))
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(state): State<AgentState>) -> impl IntoResponse {
    let claimed = state.claim().map(|c| c.workspace_id);
    axum::Json(serde_json::json!({"status": "ok", "workspace_id": claimed}))
}

async fn claim(State(state): State<AgentState>, body: Bytes) -> Result<Response, AgentError> {
    let req: ClaimRequest = parse_json(&body)?;
    if req.token.len() < 16 {
        return Err(AgentError::InvalidField {
            field: "token",
            reason: "must be at least 16 characters".into(),
        });
    }
    if req.workspace_id.is_empty() {
        return Err(AgentError::InvalidField {
            field: "workspace_id",
            reason: "must not be empty".into(),
        });
    }
    let mut slot = state.inner.claim.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_some() {
        return Err(AgentError::AlreadyClaimed);
    }
    *slot = Some(Claim {
        workspace_id: req.workspace_id.clone(),
        token_sha256: Sha256::digest(req.token.as_bytes()).into(),
        env: req.env,
    });
    tracing::info!(workspace_id = %req.workspace_id, "claimed");
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"workspace_id": req.workspace_id})),
    )
        .into_response())
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(ErrorBody::new("not_found", "no such route")),
    )
        .into_response()
}

/// Serves the agent on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AgentState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

//! The workspace-agent's HTTP API.
//!
//! Background: the agent runs inside the untrusted workspace container and is the
//! only way the platform touches it. It answers `/health` openly (with what it is
//! doing, so reapers never kill running work), accepts exactly one
//! `POST /v1/claim` that binds the workspace to a conversation's bearer token, and
//! after that serves whoever holds the token: commands ([`exec`], streamed as
//! NDJSON; [`session`], interactive over a WebSocket), files under the workspace
//! root ([`files`], confined by [`fsroot`]) and the commands it started
//! ([`procs`]). It listens on TCP, a Unix socket, or both.
//!
//! It sits in every warm slot on every host, so it is small: one thread, a few
//! MiB of memory when idle. Only a hash of the token is kept, and the comparison
//! takes the same time whatever the token, claimed or not.
#![deny(unsafe_code)]

mod archive;
mod error;
mod exec;
mod files;
mod fsroot;
mod procs;
mod pty;
mod session;

pub use error::AgentError;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    str::FromStr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt,
};
use berth_wire::{Activity, AgentHealth, ClaimRequest};
use sha2::{Digest, Sha256};

/// Limits and places the agent is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Root of the workspace: default working directory, and the files API's jail.
    pub root: PathBuf,
    /// Largest JSON request body (exec, claim, mkdir, signal) and WebSocket message.
    pub max_request_bytes: u64,
    /// Largest file `PUT /v1/files` accepts.
    pub max_file_bytes: u64,
    /// Most entries `GET /v1/files/list` returns (it says `truncated` beyond).
    pub max_list_entries: usize,
    /// Most commands running at once.
    pub max_commands: usize,
    /// Environment every command starts with, before the claim's and the request's
    /// (the proxy settings hostd gives the container: see [`PASSED_ENV`]).
    pub base_env: BTreeMap<String, String>,
    /// SHA-256 of the slot's claim secret (hostd sets `BERTH_CLAIM_SECRET_SHA256`):
    /// a claim must carry the secret. Only the hash is here, so workspace code that
    /// reads the agent's environment learns nothing it could claim with; `None`
    /// (an agent run by hand) accepts the first claim.
    pub claim_secret_sha256: Option<[u8; 32]>,
}

/// Variables of the agent's own environment that every command inherits: where the
/// credential-proxy is, so ordinary tools send their traffic through its allowlist.
/// Nothing else of the agent's environment reaches a command.
pub const PASSED_ENV: [&str; 6] = [
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
];

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/workspace"),
            max_request_bytes: 1024 * 1024,
            max_file_bytes: 1024 * 1024 * 1024,
            max_list_entries: 10_000,
            max_commands: 64,
            base_env: BTreeMap::new(),
            claim_secret_sha256: None,
        }
    }
}

/// Where the agent listens: `0.0.0.0:9000` (TCP) or `unix:/run/berth/agent.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a socket path, e.g. unix:/run/berth/agent.sock".into()),
            Some(path) => Ok(Listen::Unix(PathBuf::from(path))),
            None => s
                .parse()
                .map(Listen::Tcp)
                .map_err(|e| format!("{s:?} is neither HOST:PORT nor unix:PATH ({e})")),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound listener, ready to serve.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Binds one listener. A Unix socket replaces a stale socket file left by a
/// previous run, and is made accessible to its owner and group only.
pub async fn bind(listen: &Listen) -> std::io::Result<Bound> {
    match listen {
        Listen::Tcp(addr) => Ok(Bound::Tcp(tokio::net::TcpListener::bind(addr).await?)),
        Listen::Unix(path) => {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            if let Ok(meta) = std::fs::symlink_metadata(path)
                && meta.file_type().is_socket()
            {
                std::fs::remove_file(path)?;
            }
            let listener = tokio::net::UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            Ok(Bound::Unix(listener))
        }
    }
}

/// The agent's shared state.
#[derive(Clone)]
pub struct AgentState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    claim: Mutex<Option<Claim>>,
    procs: Arc<procs::ProcessTable>,
    /// Held while a checkpoint is unpacked (before the claim).
    restoring: tokio::sync::Mutex<()>,
}

/// What a claim binds: the workspace id, the token's hash, and the conversation's env.
#[derive(Clone)]
pub(crate) struct Claim {
    workspace_id: String,
    token_sha256: [u8; 32],
    env: BTreeMap<String, String>,
}

// === impl AgentState ===

impl AgentState {
    pub fn new(config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                claim: Mutex::new(None),
                procs: Arc::default(),
                restoring: tokio::sync::Mutex::new(()),
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

    /// What the agent is doing right now.
    pub fn activity(&self) -> Activity {
        self.inner.procs.activity()
    }

    /// Checks the request's bearer token against the claimed one. The work done is
    /// the same whether the header is missing, the token wrong, or the workspace
    /// unclaimed: one SHA-256 and one full-length comparison.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<Claim, AgentError> {
        let claim = self.claim();
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // No token hashes to all ones; an unclaimed agent compares against that.
        let expected = claim.as_ref().map_or([0xff; 32], |c| c.token_sha256);
        let matches = constant_time_eq(&digest, &expected);
        match claim {
            Some(claim) if matches && !presented.is_empty() => {
                self.inner.procs.touch();
                Ok(claim)
            }
            _ => Err(AgentError::Unauthorized),
        }
    }

    /// Checks that the request comes from the platform (hostd): it carries the
    /// slot's claim secret in [`berth_wire::settings::CLAIM_SECRET_HEADER`]. With
    /// `or_token`, the claimed workspace's bearer token does too (what the archive
    /// of the root shows, the files API shows that token's holder anyway). An
    /// agent run by hand, without a claim secret, takes any non-empty one.
    pub(crate) fn authorize_platform(
        &self,
        headers: &HeaderMap,
        or_token: bool,
    ) -> Result<(), AgentError> {
        let given = headers
            .get(berth_wire::settings::CLAIM_SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let ok = match &self.inner.config.claim_secret_sha256 {
            Some(want) => constant_time_eq(&digest, want),
            None => true,
        };
        if ok && !given.is_empty() {
            return Ok(());
        }
        if or_token {
            return self.authorize(headers).map(|_| ());
        }
        Err(AgentError::Unauthorized)
    }

    /// Reads a JSON body of at most `max_request_bytes` into `T`. A declared
    /// Content-Length over the limit is refused before any of the body is read.
    pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<T, AgentError> {
        let limit = self.inner.config.max_request_bytes;
        let too_large = AgentError::BodyTooLarge {
            limit_name: "max_request_bytes",
            limit,
        };
        if content_length(headers).is_some_and(|n| n > limit) {
            return Err(too_large);
        }
        let body = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .await
            .map_err(|e| {
                let over = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if over {
                    too_large
                } else {
                    AgentError::InvalidJson(format!("cannot read the body: {e}"))
                }
            })?;
        if body.is_empty() {
            return Err(AgentError::InvalidJson("empty body".into()));
        }
        serde_json::from_slice(&body).map_err(|e| AgentError::InvalidJson(e.to_string()))
    }

    /// A files-API path from the request, checked and made relative to the root.
    pub(crate) fn rel_path(&self, raw: Option<&str>) -> Result<fsroot::RelPath, AgentError> {
        let raw = raw.ok_or(AgentError::InvalidField {
            field: "path",
            reason: "the `path` query parameter is required".into(),
        })?;
        fsroot::parse(&self.inner.config.root, raw)
    }
}

/// The request's declared Content-Length, if any and well-formed.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Compares two digests without an early exit, so timing says nothing of the token.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    berth_wire::secrets_equal(a, b)
}

/// The agent's routes.
pub fn router(state: AgentState) -> Router {
    let limit = usize::try_from(state.inner.config.max_request_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/health", get(health))
        .route("/v1/claim", post(claim))
        .route("/v1/activity", get(activity))
        .route("/v1/exec", post(exec::exec))
        .route("/v1/exec/ws", get(session::upgrade))
        .route(
            "/v1/files",
            get(files::get).put(files::put).delete(files::delete),
        )
        .route("/v1/files/list", get(files::list))
        .route("/v1/files/mkdir", post(files::mkdir))
        .route("/v1/archive", get(archive::export).put(archive::import))
        .route("/v1/processes", get(procs::list))
        .route("/v1/processes/{pid}/signal", post(procs::signal))
        .fallback(|| async { AgentError::RouteNotFound })
        .method_not_allowed_fallback(|| async { AgentError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn health(State(state): State<AgentState>) -> axum::Json<AgentHealth> {
    axum::Json(AgentHealth {
        status: "ok".into(),
        workspace_id: state.claim().map(|c| c.workspace_id),
        activity: state.activity(),
    })
}

async fn activity(
    State(state): State<AgentState>,
    headers: HeaderMap,
) -> Result<axum::Json<Activity>, AgentError> {
    state.authorize(&headers)?;
    Ok(axum::Json(state.activity()))
}

async fn claim(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AgentError> {
    let req: ClaimRequest = state.read_json(&headers, body).await?;
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
    let Ok(_not_restoring) = state.inner.restoring.try_lock() else {
        return Err(AgentError::RestoreInProgress);
    };
    let mut slot = state.inner.claim.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_some() {
        // Said before the secret is checked: `/health` tells anyone as much.
        return Err(AgentError::AlreadyClaimed);
    }
    if let Some(want) = &state.inner.config.claim_secret_sha256 {
        let given = req.claim_secret.as_deref().unwrap_or("");
        let got: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        if given.is_empty() || !constant_time_eq(&got, want) {
            tracing::warn!("claim refused: missing or wrong claim secret");
            return Err(AgentError::ClaimRefused);
        }
    }
    // Files first: a claim whose files cannot be placed binds nothing (the
    // scheduler discards the slot and tries the next).
    let placed = files::place(&state, &req.files)?;
    *slot = Some(Claim {
        workspace_id: req.workspace_id.clone(),
        token_sha256: Sha256::digest(req.token.as_bytes()).into(),
        env: req.env,
    });
    drop(slot);
    state.inner.procs.touch();
    tracing::info!(workspace_id = %req.workspace_id, files = req.files.len(), bytes = placed, "claimed");
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"workspace_id": req.workspace_id})),
    )
        .into_response())
}

/// Serves the agent on every listener until `shutdown` completes, reaping orphaned
/// processes meanwhile.
pub async fn serve(
    listeners: Vec<Bound>,
    state: AgentState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let reaper = tokio::spawn(procs::reap_orphans(state.inner.procs.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let app = router(state.clone());
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match listener {
            Bound::Tcp(l) => {
                let l = l.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                servers.spawn(
                    async move { axum::serve(l, app).with_graceful_shutdown(stopped).await },
                );
            }
            Bound::Unix(l) => {
                servers.spawn(
                    async move { axum::serve(l, app).with_graceful_shutdown(stopped).await },
                );
            }
        }
    }
    let result = tokio::select! {
        () = shutdown => Ok(()),
        // A listener that stops on its own is an error worth exiting for.
        Some(done) = servers.join_next() => match done {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        },
    };
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    reaper.abort();
    result
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_parses_tcp_and_unix() {
        assert_eq!(
            "0.0.0.0:9000".parse::<Listen>().unwrap(),
            Listen::Tcp("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/a.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/a.sock".into())
        );
        assert!("unix:".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
    }

    #[test]
    fn unclaimed_and_wrong_tokens_are_refused() {
        let state = AgentState::new(Config::default());
        let mut h = HeaderMap::new();
        assert!(matches!(state.authorize(&h), Err(AgentError::Unauthorized)));
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert!(matches!(state.authorize(&h), Err(AgentError::Unauthorized)));
        *state.inner.claim.lock().unwrap() = Some(Claim {
            workspace_id: "w".into(),
            token_sha256: Sha256::digest(b"0123456789abcdef").into(),
            env: BTreeMap::new(),
        });
        assert!(matches!(state.authorize(&h), Err(AgentError::Unauthorized)));
        h.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdeX".parse().unwrap(),
        );
        assert!(matches!(state.authorize(&h), Err(AgentError::Unauthorized)));
        h.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef".parse().unwrap(),
        );
        assert!(state.authorize(&h).is_ok());
        assert!(state.activity().last_request_ms.is_some());
    }

    async fn claim_with(state: &AgentState, secret: Option<&str>) -> Result<Response, AgentError> {
        let body = serde_json::json!({
            "workspace_id": "w1",
            "token": "0123456789abcdef",
            "claim_secret": secret,
        });
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        claim(State(state.clone()), headers, Body::from(body.to_string())).await
    }

    #[tokio::test]
    async fn a_claim_needs_the_slots_secret_when_one_is_set() {
        let state = AgentState::new(Config {
            claim_secret_sha256: Some(Sha256::digest(b"the-slot-secret").into()),
            ..Config::default()
        });
        assert!(matches!(
            claim_with(&state, None).await,
            Err(AgentError::ClaimRefused)
        ));
        assert!(matches!(
            claim_with(&state, Some("")).await,
            Err(AgentError::ClaimRefused)
        ));
        assert!(matches!(
            claim_with(&state, Some("the-slot-secreT")).await,
            Err(AgentError::ClaimRefused)
        ));
        assert!(state.claim().is_none(), "a refused claim binds nothing");
        assert!(claim_with(&state, Some("the-slot-secret")).await.is_ok());
        assert_eq!(state.claim().unwrap().workspace_id, "w1");
    }
}

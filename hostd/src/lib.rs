//! hostd: the privileged daemon on every Berth host.
//!
//! # Background
//! ECS places workspace tasks on hosts, but it cannot say how many ENI-trunk branches
//! a host has left, cannot keep workspaces pre-started, and cannot enforce what a
//! shared-kernel container needs (seccomp, the metadata block, per-task egress
//! rules). hostd does those things on each host and reports to the scheduler:
//!
//! - a heartbeat every [`HEARTBEAT_EVERY`] with a [`HostReport`] (capacity, slots);
//! - in the docker runtime, the slot API that creates and destroys warm slots;
//! - a status endpoint for on-call: `/` (HTML), `/status` (JSON), `/metrics`, `/healthz`.
#![forbid(unsafe_code)]

pub mod capacity;
pub mod docker;
pub mod image;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{delete, get, post},
};
use berth_wire::{CreateSlot, ErrorBody, HostReport, SlotInfo, SlotState};

pub use docker::{DockerError, DockerRuntime, SlotTemplate};

/// How often hostd reports to the scheduler.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How often ready slots' agents are health-checked.
pub const HEALTH_EVERY: Duration = Duration::from_secs(5);

/// hostd's configuration, resolved by the binary from flags and environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub host_id: String,
    pub instance_type: String,
    /// Maximum slots (docker runtime) or awsvpc tasks (ECS runtime) on this host.
    pub branch_limit: u32,
    /// URL the scheduler should use to call this hostd.
    pub advertise_url: String,
    /// Scheduler base URL for heartbeats; `None` runs standalone.
    pub scheduler_url: Option<String>,
    /// Bearer token for slot-changing endpoints and heartbeats.
    pub token: String,
    pub templates: Vec<SlotTemplate>,
    /// Remove every container and network this hostd made when it stops.
    pub cleanup_on_exit: bool,
    pub extra_labels: HashMap<String, String>,
    /// hostd's own seccomp filter, installed on every thread once hostd has started;
    /// `None` for in-process use (tests), where it would confine the host process.
    pub self_seccomp: Option<berth_seccomp::HostdFilterMode>,
}

/// Errors of hostd's HTTP API, each with one status and one stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("unknown template `{0}`")]
    UnknownTemplate(String),
    #[error("slot `{0}` already exists")]
    SlotExists(String),
    #[error("host is full: {used} of {limit} slots in use")]
    Full { used: u32, limit: u32 },
    #[error(transparent)]
    Docker(#[from] DockerError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::UnknownTemplate(_) => (StatusCode::BAD_REQUEST, "unknown_template"),
            ApiError::SlotExists(_) => (StatusCode::CONFLICT, "slot_exists"),
            ApiError::Full { .. } => (StatusCode::SERVICE_UNAVAILABLE, "host_full"),
            ApiError::Docker(_) => (StatusCode::BAD_GATEWAY, "runtime_failed"),
        };
        tracing::warn!(code, error = %self, "hostd request failed");
        let mut body = ErrorBody::new(code, self.to_string());
        if matches!(self, ApiError::UnknownTemplate(_)) {
            body = body.with_field("template");
        }
        (status, axum::Json(body)).into_response()
    }
}

/// hostd's shared state.
#[derive(Clone)]
pub struct Hostd {
    config: Arc<Config>,
    runtime: DockerRuntime,
    slots: Arc<Mutex<BTreeMap<String, SlotInfo>>>,
    http: reqwest::Client,
}

impl Hostd {
    /// Connects to the runtime and rebuilds the slot inventory from what it finds.
    pub async fn start(config: Config) -> Result<Self, DockerError> {
        let runtime = DockerRuntime::connect(&config.host_id, config.extra_labels.clone()).await?;
        let found = runtime.inventory().await?;
        if !found.is_empty() {
            tracing::info!(
                slots = found.len(),
                "rebuilt slot inventory from Docker labels"
            );
        }
        let slots = found.into_iter().map(|s| (s.slot_id.clone(), s)).collect();
        Ok(Self {
            config: Arc::new(config),
            runtime,
            slots: Arc::new(Mutex::new(slots)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        })
    }

    pub fn runtime(&self) -> &DockerRuntime {
        &self.runtime
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SlotInfo>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The report sent on every heartbeat and served on `/status`.
    pub fn report(&self) -> HostReport {
        let slots: Vec<SlotInfo> = self.slots().values().cloned().collect();
        HostReport {
            host_id: self.config.host_id.clone(),
            runtime: "docker".into(),
            hostd_url: self.config.advertise_url.clone(),
            instance_type: self.config.instance_type.clone(),
            branch_limit: self.config.branch_limit,
            branches_used: u32::try_from(slots.len()).unwrap_or(u32::MAX),
            memory_total_mib: capacity::memory_total_mib(),
            memory_reserved_mib: slots.iter().map(|s| s.memory_mib).sum(),
            draining: false,
            compliant: true,
            slots,
            reported_at_ms: now_ms(),
        }
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = self.config.token.as_bytes();
        let ok = presented.len() == expected.len()
            && presented
                .bytes()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if ok {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// Creates a slot from a template, counting it against the host's limit while
    /// it starts.
    pub async fn create_slot(&self, req: CreateSlot) -> Result<SlotInfo, ApiError> {
        let template = self
            .config
            .templates
            .iter()
            .find(|t| t.name == req.template)
            .ok_or_else(|| ApiError::UnknownTemplate(req.template.clone()))?
            .clone();
        {
            let mut slots = self.slots();
            if slots.contains_key(&req.slot_id) {
                return Err(ApiError::SlotExists(req.slot_id));
            }
            let used = u32::try_from(slots.len()).unwrap_or(u32::MAX);
            if used >= self.config.branch_limit {
                return Err(ApiError::Full {
                    used,
                    limit: self.config.branch_limit,
                });
            }
            slots.insert(
                req.slot_id.clone(),
                SlotInfo {
                    slot_id: req.slot_id.clone(),
                    template: template.name.clone(),
                    host_id: self.config.host_id.clone(),
                    agent_url: String::new(),
                    state: SlotState::Starting,
                    memory_mib: template.memory_reservation_mib,
                },
            );
        }
        match self.runtime.create_slot(&req.slot_id, &template).await {
            Ok(info) => {
                self.slots().insert(info.slot_id.clone(), info.clone());
                tracing::info!(slot_id = %info.slot_id, agent_url = %info.agent_url, "slot ready");
                Ok(info)
            }
            Err(e) => {
                self.slots().remove(&req.slot_id);
                Err(e.into())
            }
        }
    }

    pub async fn destroy_slot(&self, slot_id: &str) -> Result<usize, ApiError> {
        let n = self.runtime.destroy_slot(slot_id).await?;
        self.slots().remove(slot_id);
        tracing::info!(slot_id, containers = n, "slot destroyed");
        Ok(n)
    }

    /// Sends one heartbeat; errors are logged and the next beat tries again.
    async fn heartbeat(&self, scheduler_url: &str) {
        let url = format!("{scheduler_url}/v1/hosts/{}/report", self.config.host_id);
        let result = self
            .http
            .post(&url)
            .bearer_auth(&self.config.token)
            .json(&self.report())
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = %r.status(), %url, "heartbeat refused"),
            Err(e) => tracing::warn!(error = %e, %url, "heartbeat failed"),
        }
    }

    /// Marks slots whose agent stopped answering as unhealthy, and recovers
    /// rediscovered slots whose agent answers.
    async fn check_health(&self) {
        let candidates: Vec<(String, String)> = self
            .slots()
            .values()
            .filter(|s| !s.agent_url.is_empty())
            .map(|s| (s.slot_id.clone(), s.agent_url.clone()))
            .collect();
        for (slot_id, url) in candidates {
            let healthy = self.runtime.agent_healthy(&url).await;
            if let Some(s) = self.slots().get_mut(&slot_id) {
                let next = if healthy {
                    SlotState::Ready
                } else {
                    SlotState::Unhealthy
                };
                if s.state != next {
                    tracing::warn!(%slot_id, from = ?s.state, to = ?next, "slot health changed");
                    s.state = next;
                }
            }
        }
    }

    /// Background loops: heartbeat and health checks, until `stop` fires.
    pub fn spawn_loops(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
            let mut health = tokio::time::interval(HEALTH_EVERY);
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        if let Some(url) = me.config.scheduler_url.clone() {
                            me.heartbeat(&url).await;
                        }
                    }
                    _ = health.tick() => me.check_health().await,
                    _ = stop.changed() => break,
                }
            }
        });
    }
}

/// hostd's routes.
pub fn router(hostd: Hostd) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/status", get(status_json))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/slots", post(create_slot))
        .route("/v1/slots/{id}", delete(destroy_slot))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(ErrorBody::new("not_found", "no such route")),
            )
        })
        .with_state(hostd)
}

async fn status_json(State(h): State<Hostd>) -> impl IntoResponse {
    axum::Json(h.report())
}

async fn create_slot(
    State(h): State<Hostd>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    h.check_token(&headers)?;
    let req: CreateSlot =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let info = h.create_slot(req).await?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

async fn destroy_slot(
    State(h): State<Hostd>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    h.check_token(&headers)?;
    let removed = h.destroy_slot(&id).await?;
    Ok(axum::Json(
        serde_json::json!({"slot_id": id, "containers_removed": removed}),
    ))
}

async fn metrics(State(h): State<Hostd>) -> String {
    let r = h.report();
    let count = |st: SlotState| r.slots.iter().filter(|s| s.state == st).count();
    format!(
        "# HELP berth_hostd_slots Slots on this host by state.\n# TYPE berth_hostd_slots gauge\n\
         berth_hostd_slots{{state=\"starting\"}} {}\nberth_hostd_slots{{state=\"ready\"}} {}\n\
         berth_hostd_slots{{state=\"unhealthy\"}} {}\n\
         # HELP berth_hostd_branch_limit Slots (awsvpc tasks) this host may run.\n\
         # TYPE berth_hostd_branch_limit gauge\nberth_hostd_branch_limit {}\n\
         # HELP berth_hostd_memory_reserved_mib Memory reserved by slots.\n\
         # TYPE berth_hostd_memory_reserved_mib gauge\nberth_hostd_memory_reserved_mib {}\n",
        count(SlotState::Starting),
        count(SlotState::Ready),
        count(SlotState::Unhealthy),
        r.branch_limit,
        r.memory_reserved_mib,
    )
}

async fn status_page(State(h): State<Hostd>) -> Html<String> {
    let r = h.report();
    let rows: String = r
        .slots
        .iter()
        .map(|s| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
                esc(&s.slot_id),
                esc(&s.template),
                s.state,
                esc(&s.agent_url)
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>hostd {id}</title>\
         <meta http-equiv=refresh content=5></head><body>\
         <h1>hostd {id}</h1><p>runtime {rt} · instance {it} · slots {used}/{limit} · \
         memory reserved {res} of {tot} MiB · compliant {comp}</p>\
         <table border=1 cellpadding=4><tr><th>slot</th><th>template</th><th>state</th>\
         <th>agent</th></tr>{rows}</table></body></html>",
        id = esc(&r.host_id),
        rt = r.runtime,
        it = esc(&r.instance_type),
        used = r.branches_used,
        limit = r.branch_limit,
        res = r.memory_reserved_mib,
        tot = r.memory_total_mib,
        comp = r.compliant,
    ))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs hostd on `listener` until `shutdown` completes; then, if configured, removes
/// everything it made.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DockerError> {
    let cleanup = config.cleanup_on_exit;
    let self_seccomp = config.self_seccomp;
    let hostd = Hostd::start(config).await?;
    if let Some(mode) = self_seccomp {
        // Everything that needs more than the filter allows (binding, the first Docker
        // connection) is done; from here on a call outside the list kills hostd.
        berth_seccomp::hostd::apply_hostd_filter_in(mode).map_err(DockerError::SelfSeccomp)?;
        tracing::info!(?mode, "hostd's own seccomp filter installed");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    hostd.spawn_loops(stop_rx);
    let served = axum::serve(listener, router(hostd.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop_tx.send(true);
    if let Err(e) = served {
        tracing::error!(error = %e, "hostd server stopped");
    }
    if cleanup {
        let n = hostd.runtime.destroy_all().await?;
        tracing::info!(
            containers = n,
            "removed every container and network of this host"
        );
    }
    Ok(())
}

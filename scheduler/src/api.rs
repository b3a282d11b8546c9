//! The scheduler's HTTP API: thin handlers over [`Scheduler`], one error type with a
//! status and a stable code for every failure, details in the logs.

use std::sync::atomic::Ordering;

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post, put},
};
use berth_wire::{CreateWorkspace, ErrorBody, HostReport};
use serde::Deserialize;

use crate::{Scheduler, now_ms, store::StoreError};

/// Seconds a client should wait before retrying when no capacity is free.
pub const RETRY_AFTER_SECONDS: u32 = 2;

/// Largest request body the API reads (a claim's files are at most 256 KiB by
/// default, its env 32 KiB); more is `413 body_too_large`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Every way an API call can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// A per-conversation setting the template's policy refuses, or malformed.
    #[error("`{field}`: {reason}")]
    Setting {
        code: &'static str,
        field: String,
        reason: String,
    },
    /// The workspace's slot could not take a change (its host or proxy said why).
    #[error("the workspace's slot: {message}")]
    Slot {
        status: u16,
        code: String,
        message: String,
    },
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("this route needs the operator's token")]
    OperatorOnly,
    #[error(
        "workspace `{0}` was lost with its host; POST /v1/workspaces for its conversation hands out a new one"
    )]
    Lost(String),
    #[error("no host has capacity for a workspace right now")]
    NoCapacity,
    #[error(
        "the scheduler's state is being rebuilt from the hosts after its store lost it; retry shortly"
    )]
    Rebuilding,
    #[error("the runtime failed: {0}")]
    Runtime(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::InvalidField { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ApiError::Setting { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::Slot { status: 409, .. } => (StatusCode::CONFLICT, "workspace_not_ready"),
            ApiError::Slot { status: 404, .. } => (StatusCode::CONFLICT, "workspace_not_ready"),
            ApiError::Slot { .. } => (StatusCode::BAD_GATEWAY, "slot_unreachable"),
            ApiError::NotFound { what: "host", .. } => (StatusCode::NOT_FOUND, "host_not_found"),
            ApiError::NotFound {
                what: "template", ..
            } => (StatusCode::NOT_FOUND, "template_not_found"),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "workspace_not_found"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::OperatorOnly => (StatusCode::UNAUTHORIZED, "operator_token_required"),
            ApiError::Lost(_) => (StatusCode::CONFLICT, "workspace_lost"),
            ApiError::NoCapacity => (StatusCode::SERVICE_UNAVAILABLE, "no_capacity"),
            ApiError::Rebuilding => (StatusCode::SERVICE_UNAVAILABLE, "state_rebuilding"),
            ApiError::Runtime(_) => (StatusCode::BAD_GATEWAY, "runtime_failed"),
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "state_unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // Runtime and store failures carry internal addresses: log them, answer generically.
        let message = match &self {
            ApiError::Runtime(_) => {
                "the runtime could not start a workspace; see scheduler logs".to_owned()
            }
            ApiError::Store(_) => "the state store is unavailable; see scheduler logs".to_owned(),
            other => other.to_string(),
        };
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "request failed");
        }
        let mut body = ErrorBody::new(code, message);
        if let ApiError::InvalidField { field, .. } = &self {
            body = body.with_field(field);
        }
        if let ApiError::Setting { field, .. } = &self {
            body = body.with_field(field);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        resp
    }
}

/// The scheduler's routes.
pub fn router(s: Scheduler) -> Router {
    Router::new()
        .route("/", get(fleet_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route(
            "/v1/workspaces",
            post(create_workspace).get(list_workspaces),
        )
        .route(
            "/v1/workspaces/{id}",
            get(get_workspace).delete(delete_workspace),
        )
        .route("/v1/workspaces/{id}/keepalive", post(keepalive))
        .route(
            "/v1/workspaces/{id}/egress",
            get(get_egress).put(put_egress),
        )
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/hosts/{id}/drain", post(drain_host))
        .route("/v1/hosts/{id}/report", post(host_report))
        .route("/v1/fleet", get(fleet_json))
        .route("/v1/pools", get(pools))
        .route("/v1/pools/{template}", put(set_pool))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(ErrorBody::new("not_found", "no such route")),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(s)
}

/// Every error answered as JSON with a stable code, also those axum answers itself
/// (405, 413, a body it could not read); a body sent as anything but JSON is
/// `415 unsupported_media_type`.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if matches!(
        *req.method(),
        axum::http::Method::POST | axum::http::Method::PUT
    ) && let Some(ct) = req.headers().get(header::CONTENT_TYPE)
    {
        let json = ct
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                axum::Json(ErrorBody::new(
                    "unsupported_media_type",
                    "request bodies are JSON: send content-type: application/json",
                )),
            )
                .into_response();
        }
    }
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "this route does not take that method")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "the request body is over 1 MiB"),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "request bodies are JSON"),
        s if s.is_client_error() => ("bad_request", "the request could not be read"),
        _ => ("internal", "the scheduler failed; see its logs"),
    };
    let mut out = (status, axum::Json(ErrorBody::new(code, message))).into_response();
    if let Some(allow) = resp.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

fn same(a: &str, b: &str) -> bool {
    berth_wire::secrets_equal(a.as_bytes(), b.as_bytes())
}

/// The operator's token, as a bearer token or as the password of HTTP Basic
/// authentication (so a browser can open the fleet page; any user name).
fn operator_credential(headers: &HeaderMap) -> String {
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(b) = raw.strip_prefix("Bearer ") {
        return b.to_owned();
    }
    raw.strip_prefix("Basic ")
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|up| up.split_once(':').map(|(_, p)| p.to_owned()))
        .unwrap_or_default()
}

/// Checks the operator's token on operator routes (hosts, drain, pools, the fleet
/// page, metrics); the backend's token is not one. Without an operator token
/// configured, these routes are as open as the rest (local use).
fn check_operator(s: &Scheduler, headers: &HeaderMap) -> Result<(), ApiError> {
    match &s.config().operator_token {
        Some(t) if !same(&operator_credential(headers), t) => Err(ApiError::OperatorOnly),
        Some(_) => Ok(()),
        None => check_api(s, headers),
    }
}

/// Checks the backend's token, when one is configured.
fn check_api(s: &Scheduler, headers: &HeaderMap) -> Result<(), ApiError> {
    match &s.config().api_token {
        Some(t) if !same(bearer(headers), t) => Err(ApiError::Unauthorized),
        _ => Ok(()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

async fn create_workspace(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    let req: CreateWorkspace = parse(&body)?;
    let ws = s.acquire(req).await?;
    Ok((StatusCode::OK, axum::Json(ws)).into_response())
}

/// `GET /v1/workspaces/{id}/egress`: the allowlist in force and the last refusals.
async fn get_egress(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    Ok(axum::Json(s.egress(&id, None).await?).into_response())
}

/// `PUT /v1/workspaces/{id}/egress`: replaces the allowlist of a running workspace.
async fn put_egress(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    let update: berth_wire::EgressUpdate = parse(&body)?;
    Ok(axum::Json(s.egress(&id, Some(update)).await?).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    conversation_id: Option<String>,
}

async fn list_workspaces(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    let list: Vec<_> = match q.conversation_id {
        Some(c) => s
            .store()
            .workspace_for_conversation(&c)
            .await?
            .into_iter()
            .collect(),
        None => s.store().workspaces().await?,
    };
    let list: Vec<_> = list.into_iter().map(|r| r.workspace).collect();
    Ok(axum::Json(serde_json::json!({ "workspaces": list })).into_response())
}

async fn get_workspace(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    Ok(axum::Json(s.workspace(&id).await?.workspace).into_response())
}

async fn delete_workspace(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    let ws = s.release(&id).await?;
    Ok(axum::Json(serde_json::json!({"id": ws.id, "deleted": true})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeepaliveBody {
    ttl_seconds: Option<u64>,
}

async fn keepalive(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    let req: KeepaliveBody = if body.is_empty() {
        KeepaliveBody::default()
    } else {
        parse(&body)?
    };
    let ws = s.keepalive(&id, req.ttl_seconds).await?;
    Ok(axum::Json(ws).into_response())
}

async fn host_report(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Each host's token is derived from the fleet secret and its id: a host's token
    // posts reports for that host only.
    if !same(
        bearer(&headers),
        &berth_wire::host_token(&s.config().host_token, &id),
    ) {
        return Err(ApiError::Unauthorized);
    }
    let report: HostReport = parse(&body)?;
    if report.host_id != id {
        return Err(ApiError::InvalidField {
            field: "host_id",
            reason: format!(
                "report is for `{}` but was posted to `{id}`",
                report.host_id
            ),
        });
    }
    s.store().put_host(report, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_hosts(State(s): State<Scheduler>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_operator(&s, &headers)?;
    let records = s.store().hosts().await?;
    let views = s.views_of(&records);
    let hosts: Vec<_> = records
        .into_iter()
        .zip(&views)
        .map(|(h, view)| {
            let view = Some(view);
            serde_json::json!({
                "host_id": h.report.host_id,
                "hostd_url": h.report.hostd_url,
                "instance_type": h.report.instance_type,
                "healthy": view.is_some_and(|v| v.healthy),
                "draining": h.draining || h.report.draining,
                "compliant": h.report.compliant,
                "branch_limit": h.report.branch_limit,
                "branches_used": h.report.branches_used,
                "branches_free": view.map_or(0, |v| v.branches_free),
                "memory_free_mib": view.map_or(0, |v| v.memory_free_mib),
                "slots": h.report.slots.len(),
                "last_seen_ms_ago": now_ms().saturating_sub(h.last_seen_ms),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "hosts": hosts })).into_response())
}

async fn drain_host(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_operator(&s, &headers)?;
    if !s.store().set_draining(&id, true).await? {
        return Err(ApiError::NotFound { what: "host", id });
    }
    let taken = s.store().take_warm_on_host(&id, None).await?;
    for slot in &taken {
        s.discard_slot(&slot.host_id, &slot.slot_id, "host draining")
            .await;
    }
    tracing::info!(host_id = %id, warm_slots_removed = taken.len(), "host draining");
    Ok(axum::Json(
        serde_json::json!({"host_id": id, "draining": true, "warm_slots_removed": taken.len()}),
    )
    .into_response())
}

async fn pools(State(s): State<Scheduler>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_operator(&s, &headers)?;
    let sizes = s.store().pool_sizes().await?;
    let pools: Vec<_> = s
        .pool_targets()
        .iter()
        .map(|(t, target)| {
            serde_json::json!({
                "template": t,
                "target": target,
                "ready": sizes.get(t).copied().unwrap_or(0),
                "starting": s.refilling(t),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "pools": pools })).into_response())
}

/// `PUT /v1/pools/{template}` with `{"target": N}`: grows or shrinks a warm pool
/// (the refill reconciler starts or stops slots within a pass or two).
async fn set_pool(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(template): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_operator(&s, &headers)?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SetPool {
        target: usize,
    }
    let req: SetPool = parse(&body)?;
    s.set_pool_target(&template, req.target)?;
    let ready = s
        .store()
        .pool_sizes()
        .await?
        .get(&template)
        .copied()
        .unwrap_or(0);
    Ok(axum::Json(serde_json::json!({
        "template": template, "target": req.target, "ready": ready, "starting": s.refilling(&template),
    }))
    .into_response())
}

async fn metrics(State(s): State<Scheduler>, headers: HeaderMap) -> Result<String, ApiError> {
    check_operator(&s, &headers)?;
    let c = s.counters();
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        ));
    };
    counter(
        &mut out,
        "berth_acquired_warm_total",
        "Workspaces handed out from a warm pool.",
        c.acquired_warm.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_acquired_cold_total",
        "Workspaces started for the request.",
        c.acquired_cold.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_acquire_failed_total",
        "Acquires that failed.",
        c.acquire_failed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_replaced_lost_total",
        "Workspaces replaced because their host died.",
        c.replaced_lost.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_slots_started_total",
        "Slots started on hosts.",
        c.slots_started.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_slot_start_failed_total",
        "Slot starts that failed.",
        c.slot_start_failed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_reaped_total",
        "Workspaces removed at expiry.",
        c.reaped.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_agent_address_refused_total",
        "Slots discarded because their agent address was outside --agent-networks.",
        c.agent_address_refused.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_host_refusals_total",
        "Slots a host refused (ECS failures[]); placement then tried another host.",
        c.host_refusals.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_orphans_stopped_total",
        "Running slots no state knew, stopped after the orphan grace period.",
        c.orphans_stopped.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_scale_out_requested_total",
        "Warm slots started through the runtime's scale-out path (no host had room).",
        c.scale_out_requested.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_pool_shrunk_total",
        "Warm slots stopped because their pool was above its target.",
        c.pool_shrunk.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_claims_recovered_total",
        "Bindings left Claiming by a replica that died mid-claim, removed with their slot.",
        c.claims_recovered.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_workspaces_lost_total",
        "Workspaces marked lost because their host's heartbeats stopped.",
        c.workspaces_lost.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_hosts_forgotten_total",
        "Hosts removed from the state after their retention without a heartbeat.",
        c.hosts_forgotten.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_idle_reaped_total",
        "Workspaces released after their idle timeout (no stream, process or egress).",
        c.idle_reaped.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_state_rebuilds_total",
        "Times the leader rebuilt the state from the hosts (the store was fresh or had lost its data).",
        c.state_rebuilds.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_fenced_writes_total",
        "Leader writes the state store refused because this replica's lease had moved on.",
        c.fenced_writes.load(Ordering::Relaxed),
    );
    for (name, v) in s.runtime_metrics() {
        counter(
            &mut out,
            name,
            "Counted by the runtime (see docs/OPERATIONS.md).",
            v,
        );
    }
    out.push_str(
        "# HELP berth_pool_ready Warm slots ready per template.\n# TYPE berth_pool_ready gauge\n",
    );
    for (t, n) in s.store().pool_sizes().await? {
        out.push_str(&format!("berth_pool_ready{{template=\"{t}\"}} {n}\n"));
    }
    let views = s.host_views().await?;
    out.push_str("# HELP berth_hosts Hosts known, by health.\n# TYPE berth_hosts gauge\n");
    let healthy = views.iter().filter(|v| v.healthy).count();
    out.push_str(&format!(
        "berth_hosts{{state=\"healthy\"}} {healthy}\nberth_hosts{{state=\"dead\"}} {}\n",
        views.len() - healthy
    ));
    Ok(out)
}

async fn fleet_page(
    State(s): State<Scheduler>,
    headers: HeaderMap,
) -> Result<Html<String>, ApiError> {
    check_operator(&s, &headers)?;
    Ok(Html(crate::fleet::page(&s.fleet_view().await?)))
}

async fn fleet_json(State(s): State<Scheduler>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_operator(&s, &headers)?;
    Ok(axum::Json(s.fleet_view().await?).into_response())
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

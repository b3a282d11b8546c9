//! The scheduler's HTTP API: thin handlers over [`Scheduler`], one error type with a
//! status and a stable code for every failure, details in the logs.

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post, put},
};
use berth_wire::{CreateWorkspace, EgressUpdate, EgressView, ErrorBody, HostReport, Workspace};
use serde::{Deserialize, Serialize};

use crate::{Scheduler, fleet::FleetView, fleet::PoolLevel, now_ms, store::StoreError};

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
    /// The scheduler has no checkpoint store.
    #[error("checkpoints are not configured (scheduler --checkpoint-store)")]
    CheckpointsOff,
    /// Listing or deleting in the checkpoint store failed.
    #[error("the checkpoint store failed: {0}")]
    CheckpointStore(String),
    /// A checkpoint or restore that the workspace's agent, its hostd or the store
    /// refused: their code passes through (`archive_too_large`, `checksum_mismatch`…).
    #[error("{message}")]
    Checkpoint {
        status: u16,
        code: String,
        message: String,
    },
}

impl ApiError {
    /// The body clients see: the stable code, a message (generic for failures
    /// whose detail names internal addresses: that goes to the logs) and the field.
    pub fn body(&self) -> ErrorBody {
        let message = match self {
            ApiError::Runtime(_) => {
                "the runtime could not start a workspace; see scheduler logs".to_owned()
            }
            ApiError::Store(_) => "the state store is unavailable; see scheduler logs".to_owned(),
            ApiError::CheckpointStore(_) => {
                "the checkpoint store is unavailable; see scheduler logs".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody::new(self.status_and_code().1, message);
        match self {
            ApiError::InvalidField { field, .. } => body.with_field(field),
            ApiError::Setting { field, .. } => body.with_field(field),
            _ => body,
        }
    }

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
            ApiError::CheckpointsOff => (StatusCode::CONFLICT, "checkpoints_not_configured"),
            // The store not answering is worth a retry (S3 throttles with 503s).
            ApiError::CheckpointStore(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "checkpoint_store_failed")
            }
            ApiError::Checkpoint { status, code, .. } => {
                let code = crate::checkpoints::CODES
                    .iter()
                    .find(|c| **c == code.as_str())
                    .copied()
                    .unwrap_or("checkpoint_failed");
                let status = match *status {
                    _ if code == "checkpoint_store_failed" => StatusCode::SERVICE_UNAVAILABLE,
                    404 | 409 | 413 | 422 | 507 => {
                        StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
                    }
                    _ => StatusCode::BAD_GATEWAY,
                };
                (status, code)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "request failed");
        }
        let mut resp = (status, axum::Json(self.body())).into_response();
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
        .route("/healthz", get(healthz))
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
        .route("/v1/workspaces/{id}/checkpoint", post(checkpoint_workspace))
        .route(
            "/v1/conversations/{id}",
            axum::routing::delete(delete_conversation),
        )
        .route("/v1/conversations/{id}/checkpoints", get(list_checkpoints))
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

/// A request body: a JSON object (serde would also read a struct from an array of
/// its fields, `[[]]` for `{"egress": []}`, which the API does not take).
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidJson(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// `GET /healthz`: the process answers (open; says nothing about the fleet).
#[utoipa::path(get, path = "/healthz", tag = "operator",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `POST /v1/workspaces`: the conversation's workspace — the one it has while that
/// lives, else a warm one, else one started for it.
#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces",
    security(("backend" = [])),
    request_body = CreateWorkspace,
    responses(
        (status = 200, description = "The conversation's workspace (`replaced` names a lost one it replaces)", body = Workspace),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 404, description = "`checkpoint_missing`: the conversation's latest checkpoint has no archive (`on_restore_error: empty` or `restore: false` hands out an empty workspace)", body = ErrorBody),
        (status = 413, description = "`archive_too_large`: the checkpoint exceeds the template's limits", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `egress_not_allowed`, `ip_literal_not_allowed`, `upstream_not_allowed`, `secret_not_allowed` (`field` names the part); `checksum_mismatch`, `archive_corrupt`, `archive_refused`, `checkpoint_corrupt`: the conversation's checkpoint cannot be restored", body = ErrorBody),
        (status = 502, description = "`runtime_failed`", body = ErrorBody),
        (status = 503, description = "`no_capacity`, `state_rebuilding`, `state_unavailable`, `checkpoint_store_failed` (with `Retry-After`)", body = ErrorBody),
    ))]
pub(crate) async fn create_workspace(
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
#[utoipa::path(get, path = "/v1/workspaces/{id}/egress", tag = "workspaces",
    security(("backend" = [])),
    params(("id" = String, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "The allowlist, the proxy's latest refusals and its last egress", body = EgressView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
        (status = 409, description = "`workspace_lost`, `workspace_not_ready`", body = ErrorBody),
        (status = 502, description = "`slot_unreachable`", body = ErrorBody),
        (status = 503, description = "`state_rebuilding`, `state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn get_egress(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    Ok(axum::Json(s.egress(&id, None).await?).into_response())
}

/// `PUT /v1/workspaces/{id}/egress`: replaces the allowlist of a running workspace.
#[utoipa::path(put, path = "/v1/workspaces/{id}/egress", tag = "workspaces",
    security(("backend" = [])),
    params(("id" = String, Path, description = "Workspace id")),
    request_body = EgressUpdate,
    responses(
        (status = 200, description = "The allowlist now in force", body = EgressView),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
        (status = 409, description = "`workspace_lost`, `workspace_not_ready`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `egress_not_allowed`, `ip_literal_not_allowed`", body = ErrorBody),
        (status = 502, description = "`slot_unreachable`", body = ErrorBody),
        (status = 503, description = "`state_rebuilding`, `state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn put_egress(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    let update: EgressUpdate = parse(&body)?;
    Ok(axum::Json(s.egress(&id, Some(update)).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct ListQuery {
    /// Only this conversation's workspace.
    conversation_id: Option<String>,
}

/// `GET /v1/workspaces`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
}

/// `GET /v1/workspaces`: every workspace, or one conversation's.
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces",
    security(("backend" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "Workspaces", body = WorkspaceList),
        (status = 400, description = "`bad_request` (a query it cannot read)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 503, description = "`state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn list_workspaces(
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
    let workspaces = list.into_iter().map(|r| r.workspace).collect();
    Ok(axum::Json(WorkspaceList { workspaces }).into_response())
}

/// `GET /v1/workspaces/{id}`: the workspace, `state: lost` if its host died.
#[utoipa::path(get, path = "/v1/workspaces/{id}", tag = "workspaces",
    security(("backend" = [])),
    params(("id" = String, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "The workspace", body = Workspace),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
        (status = 503, description = "`state_rebuilding`, `state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn get_workspace(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    Ok(axum::Json(s.workspace(&id).await?.workspace).into_response())
}

/// `DELETE /v1/workspaces/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

/// `DELETE /v1/workspaces/{id}`: releases the workspace; its slot is stopped.
#[utoipa::path(delete, path = "/v1/workspaces/{id}", tag = "workspaces",
    security(("backend" = [])),
    params(
        ("id" = String, Path, description = "Workspace id"),
        ("checkpoint" = Option<bool>, Query, description = "`false` skips the checkpoint a template with `checkpoint.on_release` takes first"),
    ),
    responses(
        (status = 200, description = "Released", body = Deleted),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
        (status = 413, description = "`archive_too_large`: the checkpoint before the release was refused; the workspace stays (`?checkpoint=false` releases it anyway)", body = ErrorBody),
        (status = 422, description = "`invalid_field` (`checkpoint`)", body = ErrorBody),
        (status = 502, description = "`checkpoint_failed`, `archive_failed`, `slot_unreachable`: the checkpoint failed; the workspace stays", body = ErrorBody),
        (status = 503, description = "`checkpoint_store_failed` (the workspace stays), `state_rebuilding`, `state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn delete_workspace(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    let mut checkpoint = true;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        checkpoint = match pair {
            "checkpoint=true" => true,
            "checkpoint=false" => false,
            other => {
                return Err(ApiError::InvalidField {
                    field: "checkpoint",
                    reason: format!("{other:?}: the only parameter is checkpoint=true|false"),
                });
            }
        };
    }
    let ws = s.release(&id, checkpoint).await?;
    Ok(axum::Json(Deleted {
        id: ws.id,
        deleted: true,
    })
    .into_response())
}

/// `POST /v1/workspaces/{id}/checkpoint`: archives the workspace's `/workspace`
/// into the checkpoint store (the backend calls it at the end of an agent turn).
#[utoipa::path(post, path = "/v1/workspaces/{id}/checkpoint", tag = "checkpoints",
    security(("backend" = [])),
    params(("id" = String, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "The checkpoint's manifest: `id`, `size` (archive bytes), `duration_ms`, `sha256`…", body = berth_wire::checkpoint::Manifest),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
        (status = 409, description = "`workspace_lost`, `workspace_not_ready`, `checkpoints_not_configured`", body = ErrorBody),
        (status = 413, description = "`archive_too_large` (the template's `checkpoint.max_bytes` or `max_entries`)", body = ErrorBody),
        (status = 502, description = "`archive_failed`, `checkpoint_failed`, `slot_unreachable`", body = ErrorBody),
        (status = 503, description = "`checkpoint_store_failed`, `state_rebuilding`, `state_unavailable` (with `Retry-After`)", body = ErrorBody),
    ))]
pub(crate) async fn checkpoint_workspace(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    let m = s
        .checkpoint(&id, berth_wire::checkpoint::CheckpointReason::Api)
        .await?;
    Ok(axum::Json(m).into_response())
}

/// `GET /v1/conversations/{id}/checkpoints`: the conversation's checkpoints.
#[utoipa::path(get, path = "/v1/conversations/{id}/checkpoints", tag = "checkpoints",
    security(("backend" = [])),
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "Its checkpoints' manifests, oldest first", body = Vec<berth_wire::checkpoint::Manifest>),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 409, description = "`checkpoints_not_configured`", body = ErrorBody),
        (status = 503, description = "`checkpoint_store_failed` (with `Retry-After`)", body = ErrorBody),
    ))]
pub(crate) async fn list_checkpoints(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    Ok(axum::Json(s.conversation_checkpoints(&id).await?).into_response())
}

/// `DELETE /v1/conversations/{id}`: the user deleted the conversation; its
/// workspace is released and its checkpoints deleted.
#[utoipa::path(delete, path = "/v1/conversations/{id}", tag = "checkpoints",
    security(("backend" = [])),
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "What went", body = crate::checkpoints::ConversationDeleted),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 503, description = "`checkpoint_store_failed`, `state_unavailable` (with `Retry-After`)", body = ErrorBody),
    ))]
pub(crate) async fn delete_conversation(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    Ok(axum::Json(s.delete_conversation(&id).await?).into_response())
}

/// `POST /v1/workspaces/{id}/keepalive` (the body may be empty).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveBody {
    /// Seconds from now; the default TTL when absent.
    #[schema(minimum = 1)]
    ttl_seconds: Option<u64>,
}

/// `POST /v1/workspaces/{id}/keepalive`: pushes the workspace's expiry out.
#[utoipa::path(post, path = "/v1/workspaces/{id}/keepalive", tag = "workspaces",
    security(("backend" = [])),
    params(("id" = String, Path, description = "Workspace id")),
    request_body(content = Option<KeepaliveBody>, description = "Optional; `{}` or no body keeps the default TTL"),
    responses(
        (status = 200, description = "The workspace with its new `expires_at`", body = Workspace),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
        (status = 409, description = "`workspace_lost`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field` (`ttl_seconds`)", body = ErrorBody),
        (status = 503, description = "`state_rebuilding`, `state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn keepalive(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_api(&s, &headers)?;
    let req: KeepaliveBody = if body.is_empty() {
        KeepaliveBody::default()
    } else {
        match std::str::from_utf8(&body).map(str::trim) {
            Ok("null") => KeepaliveBody::default(),
            _ => parse(&body)?,
        }
    };
    let ws = s.keepalive(&id, req.ttl_seconds).await?;
    Ok(axum::Json(ws).into_response())
}

/// `POST /v1/hosts/{id}/report`: a host's heartbeat (hostd, with its host token).
#[utoipa::path(post, path = "/v1/hosts/{id}/report", tag = "hosts",
    security(("host" = [])),
    params(("id" = String, Path, description = "Host id")),
    request_body = HostReport,
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized` (not this host's token)", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field` (`host_id`: the report names another host)", body = ErrorBody),
        (status = 503, description = "`state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn host_report(
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

/// One host in `GET /v1/hosts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostSummary {
    pub host_id: String,
    pub hostd_url: String,
    pub instance_type: String,
    pub healthy: bool,
    pub draining: bool,
    pub compliant: bool,
    pub branch_limit: u32,
    pub branches_used: u32,
    pub branches_free: u32,
    pub memory_free_mib: u64,
    pub slots: usize,
    pub last_seen_ms_ago: u64,
}

/// `GET /v1/hosts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostList {
    pub hosts: Vec<HostSummary>,
}

/// `GET /v1/hosts`: every host the state knows, with placement's view of it.
#[utoipa::path(get, path = "/v1/hosts", tag = "operator",
    security(("operator" = [])),
    responses(
        (status = 200, description = "Hosts", body = HostList),
        (status = 401, description = "`operator_token_required`", body = ErrorBody),
        (status = 503, description = "`state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn list_hosts(
    State(s): State<Scheduler>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_operator(&s, &headers)?;
    let records = s.store().hosts().await?;
    let views = s.views_of(&records);
    let now = now_ms();
    let hosts = records
        .into_iter()
        .zip(&views)
        .map(|(h, v)| HostSummary {
            healthy: v.healthy,
            draining: h.draining || h.report.draining,
            compliant: h.report.compliant,
            branch_limit: h.report.branch_limit,
            branches_used: h.report.branches_used,
            branches_free: v.branches_free,
            memory_free_mib: v.memory_free_mib,
            slots: h.slot_ids.len(),
            last_seen_ms_ago: now.saturating_sub(h.last_seen_ms),
            host_id: h.report.host_id,
            hostd_url: h.report.hostd_url,
            instance_type: h.report.instance_type,
        })
        .collect();
    Ok(axum::Json(HostList { hosts }).into_response())
}

/// `POST /v1/hosts/{id}/drain`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Drained {
    pub host_id: String,
    pub draining: bool,
    /// Warm slots taken out of the pools and stopped.
    pub warm_slots_removed: usize,
}

/// `POST /v1/hosts/{id}/drain`: no new slots there; its warm slots are stopped.
#[utoipa::path(post, path = "/v1/hosts/{id}/drain", tag = "operator",
    security(("operator" = [])),
    params(("id" = String, Path, description = "Host id")),
    responses(
        (status = 200, description = "Draining", body = Drained),
        (status = 401, description = "`operator_token_required`", body = ErrorBody),
        (status = 404, description = "`host_not_found`", body = ErrorBody),
        (status = 503, description = "`state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn drain_host(
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
    Ok(axum::Json(Drained {
        host_id: id,
        draining: true,
        warm_slots_removed: taken.len(),
    })
    .into_response())
}

/// `GET /v1/pools`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolLevel>,
}

/// `GET /v1/pools`: each pool's ready slots against its target.
#[utoipa::path(get, path = "/v1/pools", tag = "operator",
    security(("operator" = [])),
    responses(
        (status = 200, description = "Pools", body = PoolList),
        (status = 401, description = "`operator_token_required`", body = ErrorBody),
        (status = 503, description = "`state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn pools(
    State(s): State<Scheduler>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_operator(&s, &headers)?;
    let pools = s.pool_levels(&s.store().pool_sizes().await?);
    Ok(axum::Json(PoolList { pools }).into_response())
}

/// `PUT /v1/pools/{template}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPool {
    #[schema(minimum = 0, maximum = 100000)]
    pub target: usize,
}

/// `PUT /v1/pools/{template}` with `{"target": N}`: grows or shrinks a warm pool
/// (the refill reconciler starts or stops slots within a pass or two).
#[utoipa::path(put, path = "/v1/pools/{template}", tag = "operator",
    security(("operator" = [])),
    params(("template" = String, Path, description = "A configured template")),
    request_body = SetPool,
    responses(
        (status = 200, description = "The pool's new target and level", body = PoolLevel),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`operator_token_required`", body = ErrorBody),
        (status = 404, description = "`template_not_found`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field` (`target`)", body = ErrorBody),
        (status = 503, description = "`state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn set_pool(
    State(s): State<Scheduler>,
    headers: HeaderMap,
    Path(template): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_operator(&s, &headers)?;
    let req: SetPool = parse(&body)?;
    s.set_pool_target(&template, req.target)?;
    let level = s
        .pool_levels(&s.store().pool_sizes().await?)
        .into_iter()
        .find(|p| p.template == template)
        .ok_or(ApiError::NotFound {
            what: "template",
            id: template,
        })?;
    Ok(axum::Json(level).into_response())
}

/// Prometheus text: counters, pool levels, hosts by health.
#[utoipa::path(get, path = "/metrics", tag = "operator",
    security(("operator" = [])),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "`operator_token_required`", body = ErrorBody),
        (status = 503, description = "`state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn metrics(
    State(s): State<Scheduler>,
    headers: HeaderMap,
) -> Result<String, ApiError> {
    check_operator(&s, &headers)?;
    crate::metrics::render(&s).await.map_err(ApiError::from)
}

/// `GET /`: the fleet page for on-call (HTML; HTTP Basic with the operator token as
/// the password works from a browser).
#[utoipa::path(get, path = "/", tag = "operator",
    security(("operator" = [])),
    responses(
        (status = 200, description = "The fleet page", body = String, content_type = "text/html"),
        (status = 401, description = "`operator_token_required`", body = ErrorBody),
        (status = 503, description = "`state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn fleet_page(
    State(s): State<Scheduler>,
    headers: HeaderMap,
) -> Result<Html<String>, ApiError> {
    check_operator(&s, &headers)?;
    Ok(Html(crate::fleet::page(&s.fleet_view().await?)))
}

/// `GET /v1/fleet`: the fleet page's data.
#[utoipa::path(get, path = "/v1/fleet", tag = "operator",
    security(("operator" = [])),
    responses(
        (status = 200, description = "The fleet at a glance", body = FleetView),
        (status = 401, description = "`operator_token_required`", body = ErrorBody),
        (status = 503, description = "`state_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn fleet_json(
    State(s): State<Scheduler>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_operator(&s, &headers)?;
    Ok(axum::Json(s.fleet_view().await?).into_response())
}

/// `GET /openapi.json`: this document (generated from the code; the repository's
/// `scheduler/openapi.json` is the same, checked by a test).
#[utoipa::path(get, path = "/openapi.json", tag = "operator",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub(crate) async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
}

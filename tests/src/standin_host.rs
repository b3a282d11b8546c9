//! A stand-in for a host: hostd's slot API and its slots' agents, in one small HTTP
//! server, with no containers behind it.
//!
//! What it fakes, exactly: hostd's `POST /v1/slots` (a slot is "ready" at once, with
//! a fresh claim secret), `GET`/`DELETE /v1/slots/{id}`, `POST /v1/slots/{id}/claim`
//! (checks the claim secret, keeps the claim as hostd does), `GET`/`PUT
//! /v1/slots/{id}/egress`, `GET /v1/inventory` and `/status`; every call but
//! `/status` checks the host's token as hostd does. Each slot's agent is
//! `{url}/agents/{slot}`, answering `/health` with the claimed workspace and no
//! activity. It sends a heartbeat (`POST /v1/hosts/{id}/report`) every second with
//! room for 10,000 slots. Nothing runs, nothing is enforced: it exists to measure
//! and to fuzz the scheduler and its store without Docker's pace (the benchmarks'
//! "stand-in slots" rows, and schemathesis in the test command), never to prove a
//! lock-down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use berth_wire::{
    AgentHealth, CreateSlot, EgressUpdate, EgressView, ErrorBody, HeldClaim, HostReport, SlotClaim,
    SlotInfo, SlotState,
};

#[derive(Default)]
struct Slots {
    slots: BTreeMap<String, (SlotInfo, String)>,
    claims: BTreeMap<String, HeldClaim>,
    egress: BTreeMap<String, EgressView>,
}

#[derive(Clone)]
struct Host {
    host_id: String,
    url: String,
    token: String,
    state: Arc<Mutex<Slots>>,
}

/// A running stand-in host; stops when dropped.
pub struct StandinHost {
    pub host_id: String,
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl StandinHost {
    /// Starts on `listener`, reporting to `scheduler_url` with the fleet's
    /// `host_secret`.
    pub async fn start(
        listener: tokio::net::TcpListener,
        scheduler_url: &str,
        host_secret: &str,
        host_id: &str,
    ) -> Self {
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let host = Host {
            host_id: host_id.to_owned(),
            url: url.clone(),
            token: berth_wire::host_token(host_secret, host_id),
            state: Arc::default(),
        };
        let app = Router::new()
            .route("/status", get(status))
            .route("/v1/slots", post(create))
            .route("/v1/slots/{id}", get(slot).delete(destroy))
            .route("/v1/slots/{id}/claim", post(claim))
            .route("/v1/slots/{id}/egress", get(egress).put(set_egress))
            .route("/v1/inventory", get(inventory))
            .route("/agents/{id}/health", get(health))
            .with_state(host.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let beat = host.clone();
        let scheduler = scheduler_url.to_owned();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let url = format!("{scheduler}/v1/hosts/{}/report", beat.host_id);
                let _ = http
                    .post(url)
                    .bearer_auth(&beat.token)
                    .json(&beat.report())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            host_id: host_id.to_owned(),
            url,
            stop: Some(tx),
        }
    }
}

impl Drop for StandinHost {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Host {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self) -> HostReport {
        let slots: Vec<SlotInfo> = self.lock().slots.values().map(|(s, _)| s.clone()).collect();
        HostReport {
            host_id: self.host_id.clone(),
            runtime: "docker".into(),
            hostd_url: self.url.clone(),
            instance_type: "standin".into(),
            branch_limit: 10_000,
            branches_used: u32::try_from(slots.len()).unwrap_or(u32::MAX),
            branch_limit_source: "stand-in".into(),
            memory_total_mib: 1 << 30,
            memory_system_mib: 0,
            memory_reserved_mib: 0,
            memory_limit_total_mib: 0,
            draining: false,
            compliant: true,
            slots,
            reported_at_ms: berth_wire::now_ms(),
            checks: Vec::new(),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if berth_wire::secrets_equal(presented.as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            Err(refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "not this host's token",
            ))
        }
    }
}

/// A refusal, as hostd answers one.
struct Refused(StatusCode, ErrorBody);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Refused {
    Refused(status, ErrorBody::new(code, message))
}

fn unknown(id: &str) -> Refused {
    refuse(
        StatusCode::NOT_FOUND,
        "unknown_slot",
        &format!("no slot `{id}` on this host"),
    )
}

async fn status(State(h): State<Host>) -> Json<HostReport> {
    Json(h.report())
}

async fn create(
    State(h): State<Host>,
    headers: HeaderMap,
    Json(req): Json<CreateSlot>,
) -> Response {
    if let Err(r) = h.authorized(&headers) {
        return r.into_response();
    }
    let secret = hex_secret();
    let info = SlotInfo {
        slot_id: req.slot_id.clone(),
        template: req.template,
        host_id: h.host_id.clone(),
        agent_url: format!("{}/agents/{}", h.url, req.slot_id),
        state: SlotState::Ready,
        memory_mib: 1,
        memory_limit_mib: 1,
        memory_idle_mib: None,
        reason: None,
        rules_verified_at_ms: None,
        created_at_ms: berth_wire::now_ms(),
        claim_secret: None,
    };
    h.lock()
        .slots
        .insert(req.slot_id, (info.clone(), secret.clone()));
    let mut answer = info;
    answer.claim_secret = Some(secret);
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn slot(State(h): State<Host>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = h.authorized(&headers) {
        return r.into_response();
    }
    match h.lock().slots.get(&id) {
        Some((info, _)) => Json(info.clone()).into_response(),
        None => unknown(&id).into_response(),
    }
}

async fn destroy(State(h): State<Host>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = h.authorized(&headers) {
        return r.into_response();
    }
    let mut s = h.lock();
    let removed = s.slots.remove(&id).is_some();
    s.claims.remove(&id);
    s.egress.remove(&id);
    Json(serde_json::json!({"slot_id": id, "containers_removed": if removed { 2 } else { 0 }}))
        .into_response()
}

async fn claim(
    State(h): State<Host>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<SlotClaim>,
) -> Response {
    if let Err(r) = h.authorized(&headers) {
        return r.into_response();
    }
    let mut s = h.lock();
    let Some((_, secret)) = s.slots.get(&id) else {
        return unknown(&id).into_response();
    };
    if req.claim_secret.as_deref() != Some(secret.as_str()) {
        return refuse(StatusCode::FORBIDDEN, "claim_refused", "wrong claim secret")
            .into_response();
    }
    if s.claims.contains_key(&id) {
        return refuse(
            StatusCode::CONFLICT,
            "already_claimed",
            "the slot is claimed",
        )
        .into_response();
    }
    s.egress.insert(
        id.clone(),
        EgressView {
            egress: req.policy.egress.clone(),
            ..EgressView::default()
        },
    );
    s.claims.insert(
        id.clone(),
        HeldClaim {
            slot_id: id.clone(),
            workspace_id: req.workspace_id.clone(),
            token: req.token,
            claim_secret: req.claim_secret,
            binding: req.binding,
        },
    );
    Json(serde_json::json!({"slot_id": id, "workspace_id": req.workspace_id})).into_response()
}

fn claim_secret_ok(h: &Host, id: &str, headers: &HeaderMap) -> Result<(), Refused> {
    let presented = headers
        .get(berth_wire::settings::CLAIM_SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match h.lock().slots.get(id) {
        Some((_, secret)) if secret == presented => Ok(()),
        Some(_) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong claim secret",
        )),
        None => Err(unknown(id)),
    }
}

async fn egress(State(h): State<Host>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = h
        .authorized(&headers)
        .and_then(|()| claim_secret_ok(&h, &id, &headers))
    {
        return r.into_response();
    }
    Json(h.lock().egress.get(&id).cloned().unwrap_or_default()).into_response()
}

async fn set_egress(
    State(h): State<Host>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(update): Json<EgressUpdate>,
) -> Response {
    if let Err(r) = h
        .authorized(&headers)
        .and_then(|()| claim_secret_ok(&h, &id, &headers))
    {
        return r.into_response();
    }
    let mut s = h.lock();
    let view = s.egress.entry(id).or_default();
    view.egress = update.egress;
    Json(view.clone()).into_response()
}

async fn inventory(State(h): State<Host>, headers: HeaderMap) -> Response {
    if let Err(r) = h.authorized(&headers) {
        return r.into_response();
    }
    Json(h.lock().claims.values().cloned().collect::<Vec<_>>()).into_response()
}

async fn health(State(h): State<Host>, Path(id): Path<String>) -> Response {
    let s = h.lock();
    if !s.slots.contains_key(&id) {
        return unknown(&id).into_response();
    }
    Json(AgentHealth {
        status: "ok".into(),
        workspace_id: s.claims.get(&id).map(|c| c.workspace_id.clone()),
        activity: berth_wire::Activity::default(),
    })
    .into_response()
}

fn hex_secret() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}

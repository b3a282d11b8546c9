//! hostd: the privileged daemon on every Berth host.
//!
//! # Background
//! ECS places workspace tasks on hosts, but it cannot say how many ENI-trunk branches
//! a host has left, cannot keep workspaces pre-started, and cannot enforce what a
//! shared-kernel container needs (seccomp, the metadata block, per-task egress
//! rules). hostd does those things on each host and reports to the scheduler:
//!
//! - a heartbeat every [`HEARTBEAT_EVERY`] with a [`HostReport`] (capacity, slots,
//!   policy checks), on a task of its own so slow checks never delay it;
//! - in the docker runtime, the slot API that creates and destroys warm slots;
//! - enforcement, every [`Config::check_every`]: each slot's egress lock read back and
//!   repaired, the host's metadata blocks, the container audit;
//! - a status endpoint for on-call: `/` (HTML), `/status` (JSON), `/metrics`, `/healthz`.
//!
//! Modules, in the order a slot's life meets them:
//! [`docker`] creates the slot's containers; [`netfilter`] writes the rules that lock
//! its namespace and [`privileged`] loads and reads them (the one place hostd uses its
//! privileges); [`enforce`] proves them, audits containers ([`audit`]) and keeps the
//! journal; [`status`] shows all of it to on-call; [`capacity`] says what the host
//! holds; [`image`] builds the local images the docker runtime runs;
//! [`capabilities`] drops hostd's own capabilities to what that work needs; `claim`
//! binds a slot to a conversation (the proxy's policy and the agent's claim, pushed
//! at once) and changes its egress later.
#![forbid(unsafe_code)]

mod adopt;
pub mod audit;
pub mod capabilities;
pub mod capacity;
mod checkpoint;
mod claim;
pub mod docker;
pub mod ecs;
pub mod enforce;
pub mod image;
pub mod netfilter;
pub mod privileged;
pub mod status;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use berth_wire::{CreateSlot, ErrorBody, HostReport, PolicyCheck, SlotInfo, SlotState, labels};
use futures_util::StreamExt;

pub use docker::{DockerError, DockerRuntime, SlotTemplate};
use enforce::{Enforcer, Journal};
pub use netfilter::EgressPolicy;
pub use privileged::Netns;
use privileged::{HostPrivileged, Privileged};

/// How slots come to this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRuntime {
    /// hostd makes and removes slots itself (its slot API).
    Docker,
    /// ECS starts workspace tasks (the scheduler's RunTask); hostd adopts them,
    /// reading the ECS agent's introspection API at `agent_url`.
    Ecs { agent_url: String },
}

impl HostRuntime {
    pub fn name(&self) -> &'static str {
        match self {
            HostRuntime::Docker => "docker",
            HostRuntime::Ecs { .. } => "ecs",
        }
    }
}

/// The containers a slot is made of, by Docker name or id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotContainers {
    /// Whose first process owns the slot's network namespace: the proxy in the
    /// docker runtime, ECS's pause container on ECS.
    pub netns_owner: String,
    pub workspace: String,
    pub proxy: String,
}

/// How often ECS mode reads the ECS agent's task list.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(1);

/// How often hostd reports to the scheduler.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How often ready slots' agents are health-checked.
pub const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// Default period of the enforcement pass (rules read back, containers audited).
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Health probes and rule checks in flight at once.
const PROBES_AT_ONCE: usize = 16;

/// hostd's configuration, resolved by the binary from flags and environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub host_id: String,
    pub runtime: HostRuntime,
    pub instance_type: String,
    /// Maximum slots (docker runtime) or awsvpc tasks (ECS runtime) on this host.
    pub branch_limit: u32,
    /// Where `branch_limit` came from, reported with it.
    pub branch_limit_source: capacity::BranchSource,
    /// Memory kept for the system, not offered to slots.
    pub memory_system_mib: u64,
    /// URL the scheduler should use to call this hostd.
    pub advertise_url: String,
    /// Scheduler base URL for heartbeats; `None` runs standalone.
    pub scheduler_url: Option<String>,
    /// The fleet's host secret. At start hostd replaces it with its own token,
    /// [`berth_wire::host_token`] of the secret and its host id, which it presents on
    /// heartbeats and demands on slot-changing endpoints.
    pub token: String,
    pub templates: Vec<SlotTemplate>,
    /// Remove every container and network this hostd made when it stops.
    pub cleanup_on_exit: bool,
    pub extra_labels: HashMap<String, String>,
    /// hostd's own seccomp filter, installed on every thread once hostd has started;
    /// `None` for in-process use (tests), where it would confine the host process.
    pub self_seccomp: Option<berth_seccomp::HostdFilterMode>,
    /// Where the host's metadata blocks go: the host's own namespace in production,
    /// a namespace a test made, or `None` to leave the host's firewall alone (tests
    /// running many hostds in one process; the status page says so).
    pub host_rules: Option<Netns>,
    /// What each slot's egress lock lets through.
    pub egress: EgressPolicy,
    /// Period of the enforcement pass.
    pub check_every: Duration,
    /// The Docker daemon's config file, where the host image makes Berth's profile
    /// the daemon's default (ECS tasks get it): checked each pass; `None`: not
    /// checked (the docker runtime gives every workspace its profile itself).
    pub daemon_seccomp: Option<std::path::PathBuf>,
    /// Where checkpoints are stored (S3, or a local directory); `None`: this host
    /// takes none and restores none.
    pub checkpoints: Option<berth_checkpoint::Store>,
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
    #[error(
        "this host runs ECS tasks: slots are started with RunTask and stopped with StopTask, not through hostd"
    )]
    EcsManaged,
    #[error("no slot `{0}` on this host")]
    UnknownSlot(String),
    #[error("slot `{slot_id}` is {state}, not ready")]
    SlotNotReady { slot_id: String, state: String },
    #[error("the slot's {what} answered {status} {code}: {message}")]
    Push {
        what: &'static str,
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("this host has no checkpoint store (hostd --checkpoint-store)")]
    NoCheckpointStore,
    #[error(transparent)]
    Checkpoint(#[from] berth_checkpoint::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::UnknownTemplate(_) => (StatusCode::BAD_REQUEST, "unknown_template"),
            ApiError::SlotExists(_) => (StatusCode::CONFLICT, "slot_exists"),
            ApiError::Full { .. } => (StatusCode::SERVICE_UNAVAILABLE, "host_full"),
            ApiError::EcsManaged => (StatusCode::CONFLICT, "ecs_managed"),
            ApiError::UnknownSlot(_) => (StatusCode::NOT_FOUND, "unknown_slot"),
            ApiError::SlotNotReady { .. } => (StatusCode::CONFLICT, "slot_not_ready"),
            // What the slot refused as invalid passes through (the caller named the
            // field); a refused secret or a failure is the slot's, not the caller's.
            ApiError::Push { status, code, .. } => match (*status, code.as_str()) {
                // The agent's verdicts on an archive pass through as they are.
                (413, "archive_too_large") => (StatusCode::PAYLOAD_TOO_LARGE, "archive_too_large"),
                (422, "archive_refused") => (StatusCode::UNPROCESSABLE_ENTITY, "archive_refused"),
                (422, "archive_corrupt") => (StatusCode::UNPROCESSABLE_ENTITY, "archive_corrupt"),
                (422, "checksum_mismatch") => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "checksum_mismatch")
                }
                (507, "no_space") => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
                (400 | 422, c) => (
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
                    match c {
                        "invalid_policy" => "invalid_policy",
                        "invalid_json" => "invalid_json",
                        _ => "invalid_field",
                    },
                ),
                (401 | 403, _) => (StatusCode::FORBIDDEN, "claim_refused"),
                (409, "already_claimed") => (StatusCode::CONFLICT, "already_claimed"),
                _ => (StatusCode::BAD_GATEWAY, "push_failed"),
            },
            ApiError::Docker(_) => (StatusCode::BAD_GATEWAY, "runtime_failed"),
            ApiError::NoCheckpointStore => (StatusCode::CONFLICT, "checkpoints_not_configured"),
            ApiError::Checkpoint(e) => match e {
                berth_checkpoint::Error::NotFound(_) => {
                    (StatusCode::NOT_FOUND, "checkpoint_missing")
                }
                berth_checkpoint::Error::BadManifest { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "checkpoint_corrupt")
                }
                berth_checkpoint::Error::Source(_) => (StatusCode::BAD_GATEWAY, "archive_failed"),
                _ => (StatusCode::BAD_GATEWAY, "checkpoint_store_failed"),
            },
        };
        tracing::warn!(code, error = %self, "hostd request failed");
        let mut body = ErrorBody::new(code, self.to_string());
        if matches!(self, ApiError::UnknownTemplate(_)) {
            body = body.with_field("template");
        }
        if let ApiError::Push {
            field: Some(f),
            status: 400 | 422,
            ..
        } = &self
        {
            body = body.with_field(f);
        }
        (status, axum::Json(body)).into_response()
    }
}

/// hostd's shared state.
#[derive(Clone)]
pub struct Hostd {
    config: Arc<Config>,
    runtime: DockerRuntime,
    enforcer: Enforcer,
    slots: Arc<Mutex<BTreeMap<String, SlotInfo>>>,
    /// Each claimed slot's claim, kept for the scheduler's rebuild (see [`claim`]).
    claims: Arc<Mutex<BTreeMap<String, berth_wire::HeldClaim>>>,
    /// The containers of slots whose names are not the docker runtime's (ECS tasks).
    containers: Arc<Mutex<BTreeMap<String, SlotContainers>>>,
    /// ECS mode: the ECS agent, and the awsvpc tasks it last listed.
    ecs_agent: Option<ecs::AgentClient>,
    branches_used: Arc<AtomicU32>,
    /// The last result of every policy check, by name.
    checks: Arc<Mutex<BTreeMap<String, PolicyCheck>>>,
    /// Each template's seccomp profile, parsed once, for the audit.
    profiles: Arc<HashMap<String, Option<serde_json::Value>>>,
    http: reqwest::Client,
}

impl Hostd {
    /// Connects to the runtime, rebuilds the slot inventory from what it finds, and
    /// runs a first enforcement pass (so rediscovered slots are re-verified before
    /// any of them is reported ready).
    pub async fn start(config: Config) -> Result<Self, DockerError> {
        let runtime = DockerRuntime::connect(
            &config.host_id,
            config.extra_labels.clone(),
            config.runtime == HostRuntime::Docker,
        )
        .await?;
        let privileged: Arc<dyn Privileged> =
            Arc::new(HostPrivileged::new(runtime.docker().clone()));
        let found = match config.runtime {
            HostRuntime::Docker => runtime.inventory().await?,
            // ECS's tasks are found by the first discovery pass.
            HostRuntime::Ecs { .. } => Vec::new(),
        };
        if !found.is_empty() {
            tracing::info!(
                slots = found.len(),
                "rebuilt slot inventory from Docker labels"
            );
        }
        let slots = found
            .into_iter()
            .map(|mut s| {
                if let Some(t) = config.templates.iter().find(|t| t.name == s.template) {
                    s.memory_mib = t.memory_reservation_mib;
                    s.memory_limit_mib = docker::slot_memory_limit_mib(t);
                }
                (s.slot_id.clone(), s)
            })
            .collect();
        // From here on hostd holds its own token only, not the fleet's secret.
        let mut config = config;
        config.token = berth_wire::host_token(&config.token, &config.host_id);
        let mut profiles = HashMap::new();
        for t in &config.templates {
            let parsed = match &t.seccomp_profile {
                Some(text) => {
                    Some(
                        serde_json::from_str(text).map_err(|e| DockerError::BadProfile {
                            template: t.name.clone(),
                            reason: e.to_string(),
                        })?,
                    )
                }
                None => None,
            };
            profiles.insert(t.name.clone(), parsed);
        }
        let enforcer = Enforcer {
            privileged,
            egress: config.egress,
            host: netfilter::HostPolicy {
                // On ECS the credential endpoint is DNATed to the host's INPUT; it is
                // closed there unless the proxy signs with the task's credentials
                // (then each task's egress lock lets the proxy's uid alone through).
                block_credential_dnat: matches!(config.runtime, HostRuntime::Ecs { .. })
                    && !config.egress.proxy_task_credentials,
            },
            journal: Journal::default(),
        };
        let ecs_agent = match &config.runtime {
            HostRuntime::Ecs { agent_url } => Some(ecs::AgentClient::new(agent_url.clone())),
            HostRuntime::Docker => None,
        };
        let hostd = Self {
            config: Arc::new(config),
            runtime,
            enforcer,
            slots: Arc::new(Mutex::new(slots)),
            claims: Arc::default(),
            containers: Arc::default(),
            ecs_agent,
            branches_used: Arc::default(),
            checks: Arc::new(Mutex::new(BTreeMap::new())),
            profiles: Arc::new(profiles),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        };
        hostd.discover().await;
        hostd.enforce().await;
        hostd.check_health().await;
        Ok(hostd)
    }

    pub fn runtime(&self) -> &DockerRuntime {
        &self.runtime
    }

    pub fn journal(&self) -> &Journal {
        &self.enforcer.journal
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SlotInfo>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SlotContainers>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot's containers: as adopted (ECS), else the docker runtime's names.
    fn containers_of(&self, slot_id: &str) -> SlotContainers {
        self.containers()
            .get(slot_id)
            .cloned()
            .unwrap_or_else(|| SlotContainers::docker_mode(slot_id))
    }

    fn record_checks(&self, results: impl IntoIterator<Item = PolicyCheck>) {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        for c in results {
            checks.insert(c.name.clone(), c);
        }
    }

    /// The report sent on every heartbeat and served on `/status`.
    pub fn report(&self) -> HostReport {
        let slots: Vec<SlotInfo> = self.slots().values().cloned().collect();
        let checks: Vec<PolicyCheck> = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        HostReport {
            host_id: self.config.host_id.clone(),
            runtime: self.config.runtime.name().into(),
            hostd_url: self.config.advertise_url.clone(),
            instance_type: self.config.instance_type.clone(),
            branch_limit: self.config.branch_limit,
            branch_limit_source: self.config.branch_limit_source.as_str().to_owned(),
            branches_used: match self.config.runtime {
                HostRuntime::Docker => u32::try_from(slots.len()).unwrap_or(u32::MAX),
                // Every awsvpc task holds a branch, Berth's or not.
                HostRuntime::Ecs { .. } => self.branches_used.load(Ordering::Relaxed),
            },
            memory_total_mib: capacity::memory_total_mib(),
            memory_system_mib: self.config.memory_system_mib,
            memory_reserved_mib: slots.iter().map(|s| s.memory_mib).sum(),
            memory_limit_total_mib: slots.iter().map(|s| s.memory_limit_mib).sum(),
            draining: false,
            // No check has run yet: nothing is proven, so not compliant.
            compliant: !checks.is_empty() && checks.iter().all(|c| c.ok),
            checks,
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
        if berth_wire::secrets_equal(presented.as_bytes(), self.config.token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// Creates a slot from a template, counting it against the host's limit while
    /// it starts. The slot's egress lock is applied and proven before its workspace
    /// container starts; a slot whose lock cannot be proven is removed and refused.
    pub async fn create_slot(&self, req: CreateSlot) -> Result<SlotInfo, ApiError> {
        if self.ecs_agent.is_some() {
            return Err(ApiError::EcsManaged);
        }
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
                    memory_limit_mib: docker::slot_memory_limit_mib(&template),
                    memory_idle_mib: None,
                    reason: None,
                    rules_verified_at_ms: None,
                    created_at_ms: now_ms(),
                    claim_secret: None,
                },
            );
        }
        // The claim secret goes to the scheduler in this answer only; the agent gets
        // its hash; hostd keeps neither.
        let claim_secret = hex::encode(rand::random::<[u8; 32]>());
        let claim_hash = berth_wire::sha256_hex(claim_secret.as_bytes());
        let enforcer = self.enforcer.clone();
        let lock = |pid| async move { enforcer.lock_slot(&Netns::of_pid(pid)).await.map(|_| ()) };
        match self
            .runtime
            .create_slot(&req.slot_id, &template, &claim_hash, lock)
            .await
        {
            Ok(mut info) => {
                info.rules_verified_at_ms = Some(now_ms());
                self.slots().insert(info.slot_id.clone(), info.clone());
                tracing::info!(slot_id = %info.slot_id, agent_url = %info.agent_url, "slot ready, egress locked");
                info.claim_secret = Some(claim_secret);
                Ok(info)
            }
            Err(e) => {
                self.slots().remove(&req.slot_id);
                if let DockerError::Lockdown { reason, .. } = &e {
                    self.journal().event(
                        "slot_withdrawn",
                        Some(&req.slot_id),
                        format!("refused at start, its lock-down could not be proven: {reason}"),
                    );
                }
                Err(e.into())
            }
        }
    }

    pub async fn destroy_slot(&self, slot_id: &str) -> Result<usize, ApiError> {
        if self.ecs_agent.is_some() {
            return Err(ApiError::EcsManaged);
        }
        let n = self.runtime.destroy_slot(slot_id).await?;
        self.slots().remove(slot_id);
        self.forget_claim(slot_id);
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

    /// Probes every slot's agent (a bounded number at once): a slot is ready when its
    /// agent answers and its rules were proven; withdrawn slots stay withdrawn.
    async fn check_health(&self) {
        let candidates: Vec<(String, String)> = self
            .slots()
            .values()
            .filter(|s| !s.agent_url.is_empty() && s.state != SlotState::Withdrawn)
            .map(|s| (s.slot_id.clone(), s.agent_url.clone()))
            .collect();
        let results: Vec<(String, bool)> = futures_util::stream::iter(candidates)
            .map(|(slot_id, url)| async move {
                let healthy = self.runtime.agent_healthy(&url).await;
                (slot_id, healthy)
            })
            .buffer_unordered(PROBES_AT_ONCE)
            .collect()
            .await;
        let mut slots = self.slots();
        for (slot_id, healthy) in results {
            let Some(s) = slots.get_mut(&slot_id) else {
                continue;
            };
            let next = match (healthy, s.rules_verified_at_ms.is_some()) {
                _ if s.state == SlotState::Withdrawn => continue,
                (true, true) => SlotState::Ready,
                (true, false) => SlotState::Starting,
                (false, _) => SlotState::Unhealthy,
            };
            if s.state != next {
                tracing::warn!(%slot_id, from = ?s.state, to = ?next, "slot health changed");
                s.state = next;
                if next == SlotState::Ready {
                    s.reason = None;
                } else if next == SlotState::Unhealthy {
                    s.reason = Some("its agent does not answer /health".into());
                }
            }
        }
    }

    fn withdraw(&self, slot_id: &str, reason: String) {
        let mut slots = self.slots();
        if let Some(s) = slots.get_mut(slot_id)
            && s.state != SlotState::Withdrawn
        {
            s.state = SlotState::Withdrawn;
            s.reason = Some(reason.clone());
            drop(slots);
            self.journal().event(
                "slot_withdrawn",
                Some(slot_id),
                format!("withdrawn: {reason}"),
            );
        }
    }

    /// One enforcement pass: host rules, every slot's egress lock, the container audit.
    pub async fn enforce(&self) {
        if let Some(netns) = &self.config.host_rules {
            let first = !self
                .checks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key("host_rules_v4");
            let checks = self.enforcer.check_host_rules(netns, first).await;
            self.record_checks(checks);
        }
        self.discover().await;
        // The audit first: it inspects every container once, and the slot rules pass
        // takes each namespace's pid from what it saw.
        let profiles = self.profiles.clone();
        let ecs_mode = self.ecs_agent.is_some();
        let proxy_dirs: BTreeMap<String, Option<String>> = self
            .config
            .templates
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.proxy_config_dir.as_ref().map(|d| d.display().to_string()),
                )
            })
            .collect();
        // ECS mode: a task's containers are judged once adopted (adoption sets the
        // pids limit ECS cannot, then audits them itself before anything else).
        let adopted: std::collections::BTreeSet<String> =
            self.containers().keys().cloned().collect();
        let filter = if ecs_mode {
            berth_wire::ecs::LABEL_TASK_ARN.to_owned()
        } else {
            format!("{}={}", labels::HOST, self.config.host_id)
        };
        let audited = self
            .enforcer
            .audit_containers(&filter, |l| {
                if ecs_mode {
                    let task = l.get(berth_wire::ecs::LABEL_TASK_ARN)?;
                    if !adopted.contains(berth_wire::ecs::task_id(task)) {
                        return None;
                    }
                    return adopt::ecs_expectations(l);
                }
                let role = l.get(labels::ROLE).map(String::as_str);
                let template = l.get(labels::TEMPLATE).map(String::as_str).unwrap_or("");
                Some(if role == Some("proxy") {
                    audit::Expectations {
                        seccomp_profile: None,
                        joins_netns: false,
                        read_only_bind: proxy_dirs.get(template).cloned().flatten(),
                    }
                } else {
                    // Workspaces, and anything else claiming to be ours: the strictest.
                    audit::Expectations {
                        seccomp_profile: profiles.get(template).cloned().flatten(),
                        joins_netns: true,
                        read_only_bind: None,
                    }
                })
            })
            .await;
        for s in audited.stopped {
            if let Some(slot_id) = s.slot_id {
                self.withdraw(
                    &slot_id,
                    format!(
                        "container {} stopped by the audit: {}",
                        s.container, s.reason
                    ),
                );
            }
        }
        self.record_checks([audited.check]);
        if let Some(path) = &self.config.daemon_seccomp {
            let check = self.enforcer.check_daemon_seccomp(path).await;
            self.record_checks([check]);
        }
        self.check_slot_rules(&audited.pids).await;
        self.measure_idle().await;
    }

    /// Measures once what each ready slot uses at idle (both containers), soon after
    /// it became ready and before any claim could grow it much, so the page can say
    /// whether the template's reservation is true.
    async fn measure_idle(&self) {
        let candidates: Vec<String> = self
            .slots()
            .values()
            .filter(|s| s.state == SlotState::Ready && s.memory_idle_mib.is_none())
            .map(|s| s.slot_id.clone())
            .collect();
        let measured: Vec<(String, Option<u64>)> = futures_util::stream::iter(candidates)
            .map(|slot_id| async move {
                let p = &self.enforcer.privileged;
                let c = self.containers_of(&slot_id);
                let ws = p.container_memory(&c.workspace).await;
                let proxy = p.container_memory(&c.proxy).await;
                let mib = match (ws, proxy) {
                    (Ok(a), Ok(b)) => Some((a + b).div_ceil(1024 * 1024)),
                    _ => None,
                };
                (slot_id, mib)
            })
            .buffer_unordered(PROBES_AT_ONCE)
            .collect()
            .await;
        let mut slots = self.slots();
        for (slot_id, mib) in measured {
            if let (Some(s), Some(mib)) = (slots.get_mut(&slot_id), mib) {
                s.memory_idle_mib = Some(mib);
                if mib > s.memory_mib {
                    tracing::warn!(%slot_id, idle_mib = mib, reserved_mib = s.memory_mib,
                        "slot uses more at idle than its template reserves");
                }
            }
        }
    }

    /// Reads back every slot's egress lock, repairing drift; withdraws slots whose
    /// lock cannot be proven.
    /// `pids`: first pid of running containers by name, from this pass's audit.
    async fn check_slot_rules(&self, pids: &BTreeMap<String, i64>) {
        let candidates: Vec<(String, bool)> = self
            .slots()
            .values()
            .filter(|s| !s.agent_url.is_empty() && s.state != SlotState::Withdrawn)
            .map(|s| (s.slot_id.clone(), s.rules_verified_at_ms.is_some()))
            .collect();
        let total = candidates.len();
        let results: Vec<(String, bool, Result<enforce::Locked, String>)> =
            futures_util::stream::iter(candidates)
                .map(|(slot_id, verified_before)| async move {
                    let result = self.lock_existing(&slot_id, pids).await;
                    (slot_id, verified_before, result)
                })
                .buffer_unordered(PROBES_AT_ONCE)
                .collect()
                .await;
        let mut repaired = 0;
        let mut failed = Vec::new();
        for (slot_id, verified_before, result) in results {
            match result {
                Ok(locked) => {
                    if !locked.repaired.is_empty() {
                        repaired += 1;
                        let what = locked.repaired.join("; ");
                        if verified_before {
                            self.journal().event(
                                "rules_reapplied",
                                Some(&slot_id),
                                format!("egress lock restored: {what}"),
                            );
                        } else {
                            self.journal().event(
                                "rules_applied",
                                Some(&slot_id),
                                format!("egress lock applied to a rediscovered slot: {what}"),
                            );
                        }
                    }
                    if let Some(s) = self.slots().get_mut(&slot_id) {
                        s.rules_verified_at_ms = Some(now_ms());
                    }
                }
                Err(reason) => {
                    if self.slot_ended(&slot_id).await {
                        // Destroyed (a release, a stopped task) while it was probed:
                        // its namespace went with it. Nothing to hand out and
                        // nothing about the host; the health pass marks what remains.
                        tracing::debug!(%slot_id, %reason, "slot ended while its egress lock was read");
                        continue;
                    }
                    failed.push(format!("{slot_id}: {reason}"));
                    self.withdraw(&slot_id, format!("egress lock cannot be proven: {reason}"));
                }
            }
        }
        let detail = if failed.is_empty() {
            format!(
                "{total} slots' egress locks read back and matched; {repaired} repaired this pass"
            )
        } else {
            format!(
                "{} of {total} slots withdrawn: {}",
                failed.len(),
                failed.join("; ")
            )
        };
        let check = self.enforcer.check("slot_rules", failed.is_empty(), detail);
        self.record_checks([check]);
    }

    /// Whether a slot has ended: gone from the inventory, or none of its containers
    /// (namespace owner, workspace, proxy) runs any more — checked again after a
    /// failed probe, since the pass's pids are from its start. A container that
    /// still runs, or one that cannot be inspected for another reason, is not an
    /// end: its lock must be proven.
    async fn slot_ended(&self, slot_id: &str) -> bool {
        if !self.slots().contains_key(slot_id) {
            return true;
        }
        let c = self.containers_of(slot_id);
        self.enforcer
            .none_running(&[&c.netns_owner, &c.workspace, &c.proxy])
            .await
    }

    /// Finds the process owning a slot's namespace (in `pids`, else by inspecting
    /// its container: the audit could not see it) and locks that namespace.
    async fn lock_existing(
        &self,
        slot_id: &str,
        pids: &BTreeMap<String, i64>,
    ) -> Result<enforce::Locked, String> {
        let owner = self.containers_of(slot_id).netns_owner;
        if let Some(&pid) = pids.get(&owner).filter(|p| **p > 0) {
            return self.enforcer.lock_slot(&Netns::of_pid(pid)).await;
        }
        let facts = self
            .enforcer
            .privileged
            .inspect_container(&owner)
            .await
            .map_err(|e| e.to_string())?;
        if !facts.running || facts.pid <= 0 {
            return Err(format!(
                "{owner}, which owns its network namespace, is not running"
            ));
        }
        self.enforcer.lock_slot(&Netns::of_pid(facts.pid)).await
    }

    /// Background loops until `stop` fires: heartbeats on a task of their own (a slow
    /// health or enforcement pass can never delay them), and health and enforcement.
    pub fn spawn_loops(&self, stop: tokio::sync::watch::Receiver<bool>) {
        if let Some(url) = self.config.scheduler_url.clone() {
            let me = self.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
                loop {
                    tokio::select! {
                        _ = beat.tick() => me.heartbeat(&url).await,
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        let me = self.clone();
        let mut stop = stop;
        tokio::spawn(async move {
            let mut health = tokio::time::interval(HEALTH_EVERY);
            let mut enforce = tokio::time::interval(me.config.check_every);
            let mut discover = tokio::time::interval(DISCOVER_EVERY);
            loop {
                tokio::select! {
                    _ = health.tick() => me.check_health().await,
                    _ = enforce.tick() => me.enforce().await,
                    // ECS mode: new tasks are adopted within a second (no-op otherwise).
                    _ = discover.tick() => me.discover().await,
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
        .route("/v1/slots/{id}", get(get_slot).delete(destroy_slot))
        .route("/v1/slots/{id}/claim", post(claim_slot))
        .route("/v1/slots/{id}/egress", get(get_egress).put(put_egress))
        .route("/v1/slots/{id}/checkpoint", post(checkpoint_slot))
        .route("/v1/inventory", get(inventory))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(ErrorBody::new("not_found", "no such route")),
            )
        })
        .with_state(hostd)
}

async fn status_json(State(h): State<Hostd>) -> impl IntoResponse {
    axum::Json(h.status_view())
}

impl Hostd {
    /// Everything the status endpoints show.
    pub fn status_view(&self) -> status::StatusView {
        status::StatusView {
            report: self.report(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            host_rules: self.config.host_rules.as_ref().map(|n| n.to_string()),
            egress: self.config.egress,
            events: self.journal().events(),
            counters: self.journal().counters(),
        }
    }
}

async fn create_slot(
    State(h): State<Hostd>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    h.check_token(&headers)?;
    let req: CreateSlot = parse_json(&body)?;
    let info = h.create_slot(req).await?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

/// One slot as the report shows it (the scheduler polls this while an ECS task
/// it started comes up here); 404 `unknown_slot` while hostd does not know it.
async fn get_slot(
    State(h): State<Hostd>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    h.check_token(&headers)?;
    let info = h.slots().get(&id).cloned();
    Ok(match info {
        Some(mut s) => {
            s.claim_secret = None;
            axum::Json(s).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(ErrorBody::new(
                "unknown_slot",
                format!("no slot `{id}` on this host"),
            )),
        )
            .into_response(),
    })
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

/// `POST /v1/slots/{id}/claim`: binds the slot (see [`claim`]).
async fn claim_slot(
    State(h): State<Hostd>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    h.check_token(&headers)?;
    let req: berth_wire::SlotClaim = parse_json(&body)?;
    let workspace_id = req.workspace_id.clone();
    h.claim_slot(&id, req).await?;
    Ok(axum::Json(
        serde_json::json!({"slot_id": id, "workspace_id": workspace_id}),
    ))
}

/// `POST /v1/slots/{id}/checkpoint`: archives the slot's `/workspace` into the
/// checkpoint store (see [`checkpoint`]).
async fn checkpoint_slot(
    State(h): State<Hostd>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    h.check_token(&headers)?;
    let req: berth_wire::checkpoint::CheckpointRequest = parse_json(&body)?;
    Ok(axum::Json(h.checkpoint_slot(&id, req).await?))
}

/// `GET /v1/inventory`: every claimed slot's claim, for the scheduler's rebuild.
async fn inventory(
    State(h): State<Hostd>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    h.check_token(&headers)?;
    Ok(axum::Json(h.held_claims()))
}

/// A request body as JSON, or `400 invalid_json` saying why.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

fn claim_secret(headers: &HeaderMap) -> String {
    headers
        .get(berth_wire::settings::CLAIM_SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// `GET /v1/slots/{id}/egress`: the proxy's allowlist and latest refusals.
async fn get_egress(
    State(h): State<Hostd>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    h.check_token(&headers)?;
    Ok(axum::Json(
        h.slot_egress(&id, &claim_secret(&headers)).await?,
    ))
}

/// `PUT /v1/slots/{id}/egress`: replaces the proxy's allowlist.
async fn put_egress(
    State(h): State<Hostd>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    h.check_token(&headers)?;
    let update: berth_wire::EgressUpdate = parse_json(&body)?;
    Ok(axum::Json(
        h.set_slot_egress(&id, &claim_secret(&headers), &update)
            .await?,
    ))
}

async fn metrics(State(h): State<Hostd>) -> String {
    status::metrics(&h.report(), &h.journal().counters())
}

async fn status_page(State(h): State<Hostd>) -> Html<String> {
    Html(status::page(&h.status_view()))
}

pub use berth_wire::now_ms;

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
        if let Some(netns) = &hostd.config.host_rules {
            hostd.enforcer.remove_host_rules(netns).await;
        }
        let n = hostd.runtime.destroy_all().await?;
        tracing::info!(
            containers = n,
            "removed every container and network of this host"
        );
    }
    Ok(())
}

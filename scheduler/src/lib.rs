//! The scheduler: the backend's one entry point to Berth.
//!
//! # Background
//! The backend asks for a workspace per conversation. The scheduler answers from a
//! warm pool when it can (one atomic store step, see [`store`]) and starts one cold
//! otherwise, on a host chosen by [`placement`]. It is stateless: everything lives
//! in the [`store::Store`], so replicas can come and go. The reconcilers (pool
//! refill, TTL reaper, host-death handling) run in the leader only; with the
//! in-memory store there is one process, which is always the leader.
#![forbid(unsafe_code)]

pub mod addrs;
pub mod api;
pub mod clients;
#[cfg(feature = "dev")]
pub mod dev;
pub mod ecs;
pub mod placement;
pub mod redis_store;
pub mod runtime;
pub mod store;
pub mod templates;
pub mod throttle;
pub mod validate;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use berth_wire::{CreateWorkspace, SlotClaim, SlotInfo, Source, Workspace};
use placement::{HostView, Strategy};
use store::{Acquired, HostRecord, Store, StoreError, WarmSlot, WorkspaceRecord, WorkspaceStatus};

pub use api::{ApiError, router};

/// How the scheduler behaves; resolved by the binary from flags and environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Warm slots to keep ready, per template.
    pub pools: BTreeMap<String, usize>,
    pub strategy: Strategy,
    /// A host whose last heartbeat is older than this is dead.
    pub host_ttl: Duration,
    pub default_ttl_seconds: u64,
    pub max_ttl_seconds: u64,
    /// Memory placement reserves for one slot.
    pub slot_memory_mib: u64,
    /// Slots the refill reconciler starts at once.
    pub refill_parallelism: usize,
    /// Bearer token the backend must present; `None` leaves the API open (local use).
    pub api_token: Option<String>,
    /// Networks the scheduler may connect to agents in; empty: any. A slot whose
    /// agent address is outside is discarded (a host cannot steer our connections).
    pub agent_networks: Vec<addrs::Cidr>,
    /// How long a host that refused a slot is kept out of placement.
    pub stale_for: Duration,
    /// Slots of room the fleet keeps free: when placement finds less than the
    /// pools' shortfall plus this, the runtime scales out (ECS capacity provider).
    pub scale_out_headroom: usize,
    /// How long a running slot may be unknown to every state before it is stopped
    /// (longer than a slot takes to start and be recorded).
    pub orphan_grace: Duration,
    /// The fleet's host secret. Each host's token is [`berth_wire::host_token`] of it
    /// and the host id: hosts present theirs on heartbeats, we present it on slot calls.
    pub host_token: String,
    /// What a claim may push into each template's slots (late binding).
    pub templates: templates::Templates,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pools: BTreeMap::from([("default".to_owned(), 3)]),
            strategy: Strategy::Spread,
            host_ttl: Duration::from_secs(6),
            default_ttl_seconds: 3600,
            max_ttl_seconds: 7 * 24 * 3600,
            slot_memory_mib: 48,
            refill_parallelism: 4,
            api_token: None,
            agent_networks: Vec::new(),
            stale_for: Duration::from_secs(10),
            orphan_grace: Duration::from_secs(300),
            scale_out_headroom: 0,
            host_token: String::new(),
            templates: templates::Templates::default(),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub acquired_warm: AtomicU64,
    pub acquired_cold: AtomicU64,
    pub acquire_failed: AtomicU64,
    pub replaced_lost: AtomicU64,
    pub slots_started: AtomicU64,
    pub slot_start_failed: AtomicU64,
    pub reaped: AtomicU64,
    pub agent_address_refused: AtomicU64,
    pub host_refusals: AtomicU64,
    pub orphans_stopped: AtomicU64,
    pub scale_out_requested: AtomicU64,
    pub pool_shrunk: AtomicU64,
}

/// The scheduler's shared state.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Store,
    /// Talks to agents (the claim).
    clients: clients::Clients,
    /// Starts and stops slots.
    runtime: Arc<dyn runtime::Runtime>,
    /// Slots being started by this process, per host (placement counts them as used).
    starting: Mutex<HashMap<String, u32>>,
    /// Slots being started for each pool.
    refilling: Mutex<HashMap<String, usize>>,
    /// Hosts that refused a slot, kept out of placement until then.
    stale: Mutex<HashMap<String, std::time::Instant>>,
    /// Running slots no state knows, with when they were first seen so.
    orphans: Mutex<HashMap<String, std::time::Instant>>,
    /// When the runtime was last listed for orphans.
    orphans_listed: Mutex<Option<std::time::Instant>>,
    /// Slots started by this process, per host, until the host's report lists them
    /// (placement counts them meanwhile).
    recent: Mutex<HashMap<String, Vec<(String, std::time::Instant)>>>,
    /// When this process started (scale-out waits a heartbeat TTL after it).
    started: std::time::Instant,
    /// Each pool's target now: from the configuration, changed by operators
    /// (`PUT /v1/pools/{template}`) as the day's demand moves.
    targets: Mutex<BTreeMap<String, usize>>,
    counters: Counters,
    /// Names this process in the leader lease.
    replica_id: String,
}

/// Slots the refill reconciler asks one host for in one runtime call (ECS's
/// RunTask `count` limit).
pub const REFILL_BATCH: usize = 10;

/// The largest pool target an operator may set.
pub const MAX_POOL_TARGET: usize = 100_000;

/// How long the reconcilers' lease lasts without renewal.
pub const LEADER_LEASE: Duration = Duration::from_secs(5);

impl Scheduler {
    /// A scheduler on the docker runtime (each host's hostd makes its slots).
    pub fn new(config: Config, store: Store) -> Self {
        let clients = clients::Clients::new(config.host_token.clone());
        let runtime = Arc::new(runtime::HostdRuntime::new(clients.clone()));
        Self::with_runtime(config, store, runtime)
    }

    /// A scheduler on the given runtime.
    pub fn with_runtime(config: Config, store: Store, runtime: Arc<dyn runtime::Runtime>) -> Self {
        let clients = clients::Clients::new(config.host_token.clone());
        Self {
            inner: Arc::new(Inner {
                targets: Mutex::new(config.pools.clone()),
                config,
                store,
                clients,
                runtime,
                starting: Mutex::default(),
                refilling: Mutex::default(),
                stale: Mutex::default(),
                orphans: Mutex::default(),
                orphans_listed: Mutex::default(),
                recent: Mutex::default(),
                started: std::time::Instant::now(),
                counters: Counters::default(),
                replica_id: format!("r-{}", short_id()),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The runtime's own counters (ECS calls, throttles, …), for `/metrics`.
    pub fn runtime_metrics(&self) -> Vec<(&'static str, u64)> {
        self.inner.runtime.metrics()
    }

    /// Whether a host's last heartbeat is recent enough (the one liveness rule).
    fn alive(&self, h: &HostRecord, now_ms: u64) -> bool {
        now_ms.saturating_sub(h.last_seen_ms) <= ms(self.inner.config.host_ttl)
    }

    /// Hosts whose heartbeat has expired, among `hosts`.
    fn dead_among(&self, hosts: &[HostRecord]) -> Vec<String> {
        let now = now_ms();
        hosts
            .iter()
            .filter(|h| !self.alive(h, now))
            .map(|h| h.report.host_id.clone())
            .collect()
    }

    async fn hostd_url(&self, host_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .inner
            .store
            .hosts()
            .await?
            .into_iter()
            .find(|h| h.report.host_id == host_id)
            .map(|h| h.report.hostd_url))
    }

    /// Placement's view of the fleet, counting slots this process is starting.
    pub async fn host_views(&self) -> Result<Vec<HostView>, StoreError> {
        Ok(self.views_of(&self.inner.store.hosts().await?))
    }

    /// Placement's view of `hosts`, in the same order.
    pub(crate) fn views_of(&self, hosts: &[HostRecord]) -> Vec<HostView> {
        let now = now_ms();
        let starting = self
            .inner
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let recent = {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
            // A report comes every few seconds; after this long a slot the host does
            // not report is gone, not unreported.
            for ids in recent.values_mut() {
                ids.retain(|(_, at)| at.elapsed() < Duration::from_secs(30));
            }
            recent.retain(|_, ids| !ids.is_empty());
            recent.clone()
        };
        let per_slot = self.inner.config.slot_memory_mib;
        hosts
            .iter()
            .map(|h| {
                let r = &h.report;
                // Starting now, plus started but not yet in the host's last report.
                let unreported = recent
                    .get(&r.host_id)
                    .map(|ids| {
                        ids.iter()
                            .filter(|(id, _)| !r.slots.iter().any(|s| &s.slot_id == id))
                            .count()
                    })
                    .unwrap_or(0);
                let pending = starting.get(&r.host_id).copied().unwrap_or(0)
                    + u32::try_from(unreported).unwrap_or(u32::MAX);
                HostView {
                    host_id: r.host_id.clone(),
                    healthy: self.alive(h, now),
                    compliant: r.compliant,
                    draining: h.draining || r.draining,
                    branches_free: r.branch_limit.saturating_sub(r.branches_used + pending),
                    memory_free_mib: r.memory_total_mib.saturating_sub(
                        r.memory_system_mib + r.memory_reserved_mib + u64::from(pending) * per_slot,
                    ),
                }
            })
            .collect()
    }

    /// Starts one slot of `template` on the best host (the cold path).
    async fn start_slot(&self, template: &str) -> Result<WarmSlot, ApiError> {
        self.start_batch(template, 1)
            .await
            .pop()
            .unwrap_or(Err(ApiError::NoCapacity))
    }

    /// Starts `count` slots of `template`. Placement decides each slot's host (as if
    /// they were placed one by one, so spread spreads them); each host's share is
    /// started in one runtime call (batched into RunTask calls of up to 10 on ECS),
    /// hosts in parallel. What a host refuses (ECS `failures[]`) marks its view
    /// stale and is placed again elsewhere. One result per slot asked for.
    async fn start_batch(&self, template: &str, count: usize) -> Vec<Result<WarmSlot, ApiError>> {
        let mut results = Vec::with_capacity(count);
        let mut left = count;
        let mut refused_by: Vec<String> = Vec::new();
        let per_slot = self.inner.config.slot_memory_mib;
        while left > 0 {
            let hosts = match self.inner.store.hosts().await {
                Ok(h) => h,
                Err(e) => {
                    let text = e.to_string();
                    results.extend((0..left).map(|_| Err(ApiError::Runtime(text.clone()))));
                    return results;
                }
            };
            let mut views = self.views_of(&hosts);
            for v in &mut views {
                if refused_by.contains(&v.host_id) || self.is_stale(&v.host_id) {
                    v.healthy = false;
                }
            }
            // One decision per slot, each counting the ones before it.
            let mut plan: BTreeMap<usize, usize> = BTreeMap::new();
            for _ in 0..left {
                let Some(i) = placement::choose_index(&views, per_slot, self.inner.config.strategy)
                else {
                    break;
                };
                *plan.entry(i).or_default() += 1;
                views[i].branches_free = views[i].branches_free.saturating_sub(1);
                views[i].memory_free_mib = views[i].memory_free_mib.saturating_sub(per_slot);
            }
            let planned: usize = plan.values().sum();
            if planned == 0 {
                results.extend((0..left).map(|_| Err(ApiError::NoCapacity)));
                return results;
            }
            // Slots placement found no room for now.
            results.extend((planned..left).map(|_| Err(ApiError::NoCapacity)));
            left = 0;
            let starts = plan.into_iter().map(|(i, n)| {
                let target = runtime::HostTarget {
                    host_id: hosts[i].report.host_id.clone(),
                    hostd_url: hosts[i].report.hostd_url.clone(),
                };
                async move {
                    let k = i32::try_from(n).unwrap_or(i32::MAX);
                    self.bump_starting(&target.host_id, k);
                    let started = self.inner.runtime.start_slots(&target, template, n).await;
                    self.bump_starting(&target.host_id, -k);
                    (target.host_id, n, started)
                }
            });
            for (host, n, started) in futures_util::future::join_all(starts).await {
                let mut refused = 0;
                let mut answered = 0;
                for r in started.into_iter().take(n) {
                    answered += 1;
                    match r {
                        Ok(info) => results.push(self.accept_started(template, info).await),
                        Err(runtime::RuntimeError::HostRefused { host_id, reason }) => {
                            refused += 1;
                            self.mark_stale(&host_id, &reason);
                        }
                        Err(e) => {
                            self.inner
                                .counters
                                .slot_start_failed
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(host_id = %host, %template, error = %e, "slot start failed");
                            results.push(Err(ApiError::Runtime(e.to_string())));
                        }
                    }
                }
                results.extend((answered..n).map(|_| {
                    Err(ApiError::Runtime(
                        "the runtime answered for fewer slots".into(),
                    ))
                }));
                if refused > 0 {
                    self.inner
                        .counters
                        .host_refusals
                        .fetch_add(refused as u64, Ordering::Relaxed);
                    refused_by.push(host);
                    // Placed again, elsewhere.
                    left += refused;
                }
            }
            if left > 0 && refused_by.len() >= 3 {
                results.extend((0..left).map(|_| Err(ApiError::NoCapacity)));
                return results;
            }
        }
        results
    }

    /// A slot the runtime reports started: refused if its agent's address is outside
    /// the networks this scheduler may connect to.
    async fn accept_started(&self, template: &str, info: SlotInfo) -> Result<WarmSlot, ApiError> {
        if !addrs::url_allowed(&info.agent_url, &self.inner.config.agent_networks) {
            self.inner
                .counters
                .agent_address_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(slot_id = %info.slot_id, host_id = %info.host_id, agent_url = %info.agent_url,
                "slot's agent address is outside --agent-networks; discarding the slot");
            self.discard_slot(
                &info.host_id,
                &info.slot_id,
                "agent address outside the allowed networks",
            )
            .await;
            return Err(ApiError::Runtime(format!(
                "slot {}: agent address {} is outside the allowed networks",
                info.slot_id, info.agent_url
            )));
        }
        self.inner
            .counters
            .slots_started
            .fetch_add(1, Ordering::Relaxed);
        self.inner
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(info.host_id.clone())
            .or_default()
            .push((info.slot_id.clone(), std::time::Instant::now()));
        Ok(WarmSlot {
            slot_id: info.slot_id,
            host_id: info.host_id,
            template: template.into(),
            agent_url: info.agent_url,
            claim_secret: info.claim_secret.unwrap_or_default(),
        })
    }

    /// Keeps placement off `host_id` for a while: it refused a slot.
    fn mark_stale(&self, host_id: &str, reason: &str) {
        tracing::warn!(%host_id, %reason, secs = self.inner.config.stale_for.as_secs(),
            "host refused a slot; placing elsewhere while its view is stale");
        self.inner
            .stale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                host_id.to_owned(),
                std::time::Instant::now() + self.inner.config.stale_for,
            );
    }

    fn is_stale(&self, host_id: &str) -> bool {
        let mut stale = self.inner.stale.lock().unwrap_or_else(|e| e.into_inner());
        match stale.get(host_id) {
            Some(until) if *until > std::time::Instant::now() => true,
            Some(_) => {
                stale.remove(host_id);
                false
            }
            None => false,
        }
    }

    fn bump_starting(&self, host: &str, delta: i32) {
        let mut s = self
            .inner
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = s.entry(host.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
    }

    /// Best-effort removal of a slot, saying why.
    async fn discard_slot(&self, host_id: &str, slot_id: &str, reason: &str) {
        match self.hostd_url(host_id).await {
            Ok(Some(url)) => {
                let target = runtime::HostTarget {
                    host_id: host_id.to_owned(),
                    hostd_url: url,
                };
                if let Err(e) = self.inner.runtime.stop_slot(&target, slot_id, reason).await {
                    tracing::warn!(%host_id, %slot_id, error = %e, "could not destroy slot");
                }
            }
            _ => {
                tracing::warn!(%host_id, %slot_id, "slot's host unknown; orphan cleanup will remove it")
            }
        }
    }

    /// Hands out the conversation's workspace: the one it has while that lives, else
    /// a warm slot, else a cold one. See `POST /v1/workspaces`.
    pub async fn acquire(&self, req: CreateWorkspace) -> Result<Workspace, ApiError> {
        let template = req.template.clone().unwrap_or_else(|| "default".into());
        validate::create(&req, &template, &self.inner.config)?;
        let ttl = req
            .ttl_seconds
            .unwrap_or(self.inner.config.default_ttl_seconds);
        let mut replaced = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut warm_failures = 0;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(ApiError::NoCapacity);
            }
            // One read of the fleet per attempt: whether the conversation's host lives,
            // and which hosts' warm slots must not be handed out.
            let hosts = self.inner.store.hosts().await?;
            let dead = self.dead_among(&hosts);
            if let Some(existing) = self
                .inner
                .store
                .workspace_for_conversation(&req.conversation_id)
                .await?
            {
                let host = &existing.workspace.host_id;
                let host_lives = hosts
                    .iter()
                    .any(|h| &h.report.host_id == host && !dead.contains(host));
                if !host.is_empty() && !host_lives {
                    // Its host died: forget it and hand out a new one, saying so.
                    tracing::warn!(workspace_id = %existing.workspace.id, host_id = %existing.workspace.host_id,
                        conversation_id = %req.conversation_id, "workspace lost with its host; replacing");
                    self.inner
                        .store
                        .remove_workspace(&existing.workspace.id)
                        .await?;
                    self.inner
                        .counters
                        .replaced_lost
                        .fetch_add(1, Ordering::Relaxed);
                    replaced = Some(existing.workspace.id);
                    continue;
                }
                if existing.status == WorkspaceStatus::Claiming {
                    // Another request for this conversation is binding it right now.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                return Ok(existing.workspace);
            }
            let now = now_ms() / 1000;
            let candidate = WorkspaceRecord {
                workspace: Workspace {
                    id: format!("ws-{}", short_id()),
                    conversation_id: req.conversation_id.clone(),
                    agent_url: String::new(),
                    token: token(),
                    host_id: String::new(),
                    template: template.clone(),
                    source: Source::Warm,
                    created_at: now,
                    expires_at: now + ttl,
                    labels: req.labels.clone(),
                    replaced: replaced.clone(),
                },
                slot_id: String::new(),
                status: WorkspaceStatus::Claiming,
                claim_secret: String::new(),
            };
            let (slot, source) = match self.inner.store.acquire(&candidate, &dead).await? {
                Acquired::Existing(_) => continue,
                Acquired::Warm(slot) => {
                    if let Some(why) = not_ready_reason(&hosts, &slot) {
                        // hostd withdrew it (its lock-down could not be proven) or its
                        // agent stopped answering since it joined the pool.
                        tracing::warn!(slot_id = %slot.slot_id, host_id = %slot.host_id, reason = %why,
                            "warm slot no longer ready on its host; discarding it");
                        self.inner
                            .store
                            .remove_workspace(&candidate.workspace.id)
                            .await?;
                        self.discard_slot(&slot.host_id, &slot.slot_id, "withdrawn by its host")
                            .await;
                        continue;
                    }
                    (slot, Source::Warm)
                }
                Acquired::Cold => match self.start_slot(&template).await {
                    Ok(slot) => (slot, Source::Cold),
                    Err(e) => {
                        self.inner
                            .store
                            .remove_workspace(&candidate.workspace.id)
                            .await?;
                        self.inner
                            .counters
                            .acquire_failed
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                },
            };
            let mut record = candidate;
            record.slot_id = slot.slot_id.clone();
            record.workspace.host_id = slot.host_id.clone();
            record.workspace.agent_url = slot.agent_url.clone();
            record.workspace.source = source;
            record.claim_secret = slot.claim_secret.clone();
            let policy = self.inner.config.templates.policy(&template);
            let mut routes = policy.credentials.clone();
            routes.extend(req.credentials.iter().cloned());
            // Env and files go to the agent, routes and egress to the proxy, all
            // through the slot's hostd; none of it is written to the state store.
            let claim = SlotClaim {
                workspace_id: record.workspace.id.clone(),
                token: record.workspace.token.clone(),
                claim_secret: Some(slot.claim_secret.clone()).filter(|s| !s.is_empty()),
                env: req.env.clone(),
                files: req.files.clone(),
                policy: berth_wire::ProxyPolicy {
                    workspace_id: record.workspace.id.clone(),
                    egress: req.egress.clone().unwrap_or_else(|| policy.egress.clone()),
                    routes,
                    allow_private: policy.allow_private.clone(),
                },
            };
            let hostd_url = hosts
                .iter()
                .find(|h| h.report.host_id == slot.host_id)
                .map(|h| h.report.hostd_url.clone())
                .unwrap_or_default();
            let claimed = self
                .inner
                .clients
                .claim_slot(&hostd_url, &slot.host_id, &slot.slot_id, &claim)
                .await;
            if let Err(e) = claimed {
                tracing::warn!(slot_id = %slot.slot_id, error = %e, "claim failed; discarding slot");

                self.inner
                    .store
                    .remove_workspace(&record.workspace.id)
                    .await?;
                self.discard_slot(&slot.host_id, &slot.slot_id, "claim failed")
                    .await;
                warm_failures += 1;
                if warm_failures >= 3 {
                    self.inner
                        .counters
                        .acquire_failed
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::Runtime(e.to_string()));
                }
                continue;
            }
            record.status = WorkspaceStatus::Ready;
            self.inner.store.put_workspace(&record).await?;
            let counter = match source {
                Source::Warm => &self.inner.counters.acquired_warm,
                Source::Cold => &self.inner.counters.acquired_cold,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::info!(workspace_id = %record.workspace.id, conversation_id = %req.conversation_id,
                host_id = %slot.host_id, source = ?source, "workspace handed out");
            return Ok(record.workspace);
        }
    }

    /// Ends a workspace and removes its slot.
    pub async fn release(&self, id: &str) -> Result<Workspace, ApiError> {
        let record = self
            .inner
            .store
            .remove_workspace(id)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                what: "workspace",
                id: id.into(),
            })?;
        if !record.slot_id.is_empty() {
            self.discard_slot(&record.workspace.host_id, &record.slot_id, "released")
                .await;
        }
        tracing::info!(workspace_id = %id, "workspace released");
        Ok(record.workspace)
    }

    /// A running workspace's egress allowlist and its proxy's latest refusals; with
    /// `update`, the allowlist is replaced first (checked against the template's
    /// policy like a create's), effective for new connections at once.
    pub async fn egress(
        &self,
        id: &str,
        update: Option<berth_wire::EgressUpdate>,
    ) -> Result<berth_wire::EgressView, ApiError> {
        let record = self
            .inner
            .store
            .workspace(id)
            .await?
            .filter(|r| r.status == WorkspaceStatus::Ready)
            .ok_or_else(|| ApiError::NotFound {
                what: "workspace",
                id: id.into(),
            })?;
        if let Some(u) = &update {
            let policy = self
                .inner
                .config
                .templates
                .policy(&record.workspace.template);
            validate::egress(&policy, &u.egress)?;
        }
        let Some(url) = self.hostd_url(&record.workspace.host_id).await? else {
            return Err(ApiError::Slot {
                status: 502,
                code: "host_unknown".into(),
                message: format!("host {} is not in the fleet", record.workspace.host_id),
            });
        };
        let result = self
            .inner
            .clients
            .slot_egress(
                &url,
                &record.workspace.host_id,
                &record.slot_id,
                &record.claim_secret,
                update.as_ref(),
            )
            .await;
        match result {
            Ok(view) => {
                if let Some(u) = &update {
                    tracing::info!(workspace_id = %id, rules = u.egress.len(), "egress allowlist replaced");
                }
                Ok(view)
            }
            Err(clients::CallError::Refused {
                status,
                code,
                message,
                ..
            }) => Err(ApiError::Slot {
                status,
                code,
                message,
            }),
            Err(e) => Err(ApiError::Slot {
                status: 502,
                code: "unreachable".into(),
                message: e.to_string(),
            }),
        }
    }

    /// Pushes a workspace's expiry `ttl` seconds into the future.
    pub async fn keepalive(
        &self,
        id: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<Workspace, ApiError> {
        let mut record =
            self.inner
                .store
                .workspace(id)
                .await?
                .ok_or_else(|| ApiError::NotFound {
                    what: "workspace",
                    id: id.into(),
                })?;
        let ttl = ttl_seconds.unwrap_or(self.inner.config.default_ttl_seconds);
        if ttl == 0 || ttl > self.inner.config.max_ttl_seconds {
            return Err(ApiError::InvalidField {
                field: "ttl_seconds",
                reason: format!(
                    "must be between 1 and {}",
                    self.inner.config.max_ttl_seconds
                ),
            });
        }
        record.workspace.expires_at = now_ms() / 1000 + ttl;
        self.inner.store.put_workspace(&record).await?;
        Ok(record.workspace)
    }

    /// One pass of every reconciler. The leader calls this on a timer.
    pub async fn reconcile(&self) {
        if let Err(e) = self.reap_dead_hosts().await {
            tracing::warn!(error = %e, "host-death pass failed");
        }
        if let Err(e) = self.reap_expired().await {
            tracing::warn!(error = %e, "reaper pass failed");
        }
        if let Err(e) = self.refill().await {
            tracing::warn!(error = %e, "refill pass failed");
        }
        if let Err(e) = self.reap_orphans().await {
            tracing::warn!(error = %e, "orphan pass failed");
        }
    }

    /// Stops slots the runtime runs on live hosts that no state knows (neither a
    /// warm pool nor a workspace), once they have been unknown for the orphan grace
    /// period: a replica that died between RunTask and recording the slot, a
    /// release whose stop failed. Listing is paced to once per grace/4.
    async fn reap_orphans(&self) -> Result<(), ApiError> {
        let grace = self.inner.config.orphan_grace;
        {
            let mut last = self
                .inner
                .orphans_listed
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < grace / 4) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        let hosts = self.inner.store.hosts().await?;
        let now = now_ms();
        let targets: Vec<runtime::HostTarget> = hosts
            .iter()
            .filter(|h| self.alive(h, now))
            .map(|h| runtime::HostTarget {
                host_id: h.report.host_id.clone(),
                hostd_url: h.report.hostd_url.clone(),
            })
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let running = self
            .inner
            .runtime
            .list_slots(&targets)
            .await
            .map_err(|e| ApiError::Runtime(e.to_string()))?;
        let mut known: std::collections::HashSet<String> = self
            .inner
            .store
            .warm_slots()
            .await?
            .into_iter()
            .map(|w| w.slot_id)
            .collect();
        known.extend(
            self.inner
                .store
                .workspaces()
                .await?
                .into_iter()
                .map(|r| r.slot_id),
        );
        let mut suspects = self
            .inner
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        suspects.retain(|id, _| running.iter().any(|r| &r.slot_id == id) && !known.contains(id));
        let mut stop = Vec::new();
        for r in &running {
            if known.contains(&r.slot_id) {
                continue;
            }
            let first = *suspects
                .entry(r.slot_id.clone())
                .or_insert_with(std::time::Instant::now);
            if first.elapsed() >= grace {
                stop.push(r.clone());
            }
        }
        for r in &stop {
            suspects.remove(&r.slot_id);
        }
        *self.inner.orphans.lock().unwrap_or_else(|e| e.into_inner()) = suspects;
        for r in stop {
            tracing::warn!(slot_id = %r.slot_id, host_id = %r.host_id, "orphan: running, known to no state; stopping it");
            self.discard_slot(&r.host_id, &r.slot_id, "orphan: known to no state")
                .await;
            self.inner
                .counters
                .orphans_stopped
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn reap_dead_hosts(&self) -> Result<(), StoreError> {
        let hosts = self.inner.store.hosts().await?;
        for host in self.dead_among(&hosts) {
            let gone = self.inner.store.take_warm_on_host(&host).await?;
            if !gone.is_empty() {
                tracing::warn!(host_id = %host, slots = gone.len(), "host heartbeat expired; its warm slots left the pools");
            }
        }
        Ok(())
    }

    async fn reap_expired(&self) -> Result<(), StoreError> {
        let now = now_ms() / 1000;
        for r in self.inner.store.workspaces().await? {
            if r.status == WorkspaceStatus::Ready && r.workspace.expires_at <= now {
                tracing::info!(workspace_id = %r.workspace.id, "workspace expired");
                if self.release(&r.workspace.id).await.is_ok() {
                    self.inner.counters.reaped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Starts slots for every pool below its target, in batches of up to
    /// [`REFILL_BATCH`] (one RunTask call on ECS), at most `refill_parallelism` slots
    /// in flight per pool.
    async fn refill(&self) -> Result<(), StoreError> {
        let sizes = self.inner.store.pool_sizes().await?;
        for (template, target) in self.pool_targets() {
            let template = &template;
            let ready = sizes.get(template).copied().unwrap_or(0);
            let in_flight = self.refilling(template);
            if ready > target {
                self.shrink(template, ready - target).await?;
                continue;
            }
            let want = target.saturating_sub(ready + in_flight);
            let room = self
                .inner
                .config
                .refill_parallelism
                .saturating_sub(in_flight);
            let wanted = want.min(room);
            // What the fleet cannot take now (keeping the headroom free) is started
            // where the cluster's capacity management puts it, if the runtime can.
            let placeable = self
                .fleet_room()
                .await
                .saturating_sub(self.inner.config.scale_out_headroom);
            let mut left = wanted.min(placeable);
            let shortfall = wanted - left;
            if shortfall > 0 && self.scale_out(template, shortfall) {
                tracing::info!(%template, slots = shortfall, placeable,
                    headroom = self.inner.config.scale_out_headroom,
                    "no room for the pool's target plus headroom; scaling out");
            } else {
                left = wanted;
            }
            while left > 0 {
                let n = left.min(REFILL_BATCH);
                left -= n;
                *self
                    .inner
                    .refilling
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(template.clone())
                    .or_default() += n;
                let me = self.clone();
                let template = template.clone();
                tokio::spawn(async move {
                    for r in me.start_batch(&template, n).await {
                        match r {
                            Ok(slot) => me.record_warm(slot).await,
                            Err(ApiError::NoCapacity) => {
                                tracing::debug!(%template, "no host has room for another warm slot")
                            }
                            Err(e) => tracing::warn!(%template, error = %e, "refill failed"),
                        }
                    }
                    if let Some(k) = me
                        .inner
                        .refilling
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_mut(&template)
                    {
                        *k = k.saturating_sub(n);
                    }
                });
            }
        }
        Ok(())
    }

    /// Puts a started slot into its pool; one that cannot be recorded is discarded
    /// (no state would know it).
    async fn record_warm(&self, slot: WarmSlot) {
        if let Err(e) = self.inner.store.push_warm(slot.clone()).await {
            tracing::warn!(error = %e, "could not record warm slot; discarding it");
            self.discard_slot(&slot.host_id, &slot.slot_id, "could not be recorded")
                .await;
        }
    }

    /// Every pool's target now.
    pub fn pool_targets(&self) -> BTreeMap<String, usize> {
        self.inner
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets a pool's target (the refill reconciler grows or shrinks it); the
    /// template must be configured.
    pub fn set_pool_target(&self, template: &str, target: usize) -> Result<(), ApiError> {
        if target > MAX_POOL_TARGET {
            return Err(ApiError::InvalidField {
                field: "target",
                reason: format!("must be 0 to {MAX_POOL_TARGET}"),
            });
        }
        let mut t = self.inner.targets.lock().unwrap_or_else(|e| e.into_inner());
        match t.get_mut(template) {
            Some(v) => {
                tracing::info!(%template, from = *v, to = target, "pool target set");
                *v = target;
                Ok(())
            }
            None => Err(ApiError::NotFound {
                what: "template",
                id: template.to_owned(),
            }),
        }
    }

    /// Takes `excess` warm slots of `template` out of the pool and stops them,
    /// emptying first the hosts that hold the fewest claimed workspaces (then the
    /// fewest warm slots), so whole hosts fall idle and ECS managed scaling can let
    /// them go (termination protection keeps every host with a task).
    async fn shrink(&self, template: &str, excess: usize) -> Result<(), StoreError> {
        let claimed: HashMap<String, usize> = self
            .inner
            .store
            .workspaces()
            .await?
            .into_iter()
            .fold(HashMap::new(), |mut m, r| {
                *m.entry(r.workspace.host_id).or_default() += 1;
                m
            });
        let mut warm: Vec<WarmSlot> = self
            .inner
            .store
            .warm_slots()
            .await?
            .into_iter()
            .filter(|w| w.template == template)
            .collect();
        let mut per_host: HashMap<String, usize> = HashMap::new();
        for w in &warm {
            *per_host.entry(w.host_id.clone()).or_default() += 1;
        }
        warm.sort_by_key(|w| {
            (
                claimed.get(&w.host_id).copied().unwrap_or(0),
                per_host.get(&w.host_id).copied().unwrap_or(0),
                w.host_id.clone(),
            )
        });
        let mut taken = 0;
        for w in warm {
            if taken >= excess {
                break;
            }
            // Only a slot still in the pool is ours to stop (an acquire may have
            // just popped it).
            if self.inner.store.take_warm_slot(&w).await? {
                self.discard_slot(&w.host_id, &w.slot_id, "pool shrank")
                    .await;
                self.inner
                    .counters
                    .pool_shrunk
                    .fetch_add(1, Ordering::Relaxed);
                taken += 1;
            }
        }
        if taken > 0 {
            tracing::info!(%template, slots = taken, "pool above its target; warm slots stopped");
        }
        Ok(())
    }

    /// Slots the fleet's live, compliant, non-draining hosts can still take.
    async fn fleet_room(&self) -> usize {
        let per_slot = self.inner.config.slot_memory_mib.max(1);
        match self.host_views().await {
            Ok(views) => views
                .iter()
                .filter(|v| v.healthy && v.compliant && !v.draining && !self.is_stale(&v.host_id))
                .map(|v| {
                    usize::try_from(
                        v.branches_free
                            .min(u32::try_from(v.memory_free_mib / per_slot).unwrap_or(u32::MAX)),
                    )
                    .unwrap_or(0)
                })
                .sum(),
            Err(_) => 0,
        }
    }

    /// Starts `n` slots of `template` through the runtime's scale-out path, in the
    /// background; false if the runtime cannot scale out.
    fn scale_out(&self, template: &str, n: usize) -> bool {
        if !self.inner.runtime.can_scale_out() {
            return false;
        }
        // Until every live host had time to report, "no room" may only mean "not
        // heard from yet": a restarted scheduler must not add instances.
        if self.inner.started.elapsed() < self.inner.config.host_ttl {
            return false;
        }
        let me = self.clone();
        let resolver_of = self.clone();
        let resolve: runtime::HostResolver = Arc::new(move |host_id: String| {
            let me = resolver_of.clone();
            Box::pin(async move {
                let hosts = me.inner.store.hosts().await.ok()?;
                let now = now_ms();
                hosts
                    .into_iter()
                    .find(|h| h.report.host_id == host_id && me.alive(h, now))
                    .map(|h| runtime::HostTarget {
                        host_id: h.report.host_id,
                        hostd_url: h.report.hostd_url,
                    })
            })
        });
        *self
            .inner
            .refilling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(template.to_owned())
            .or_default() += n;
        self.inner
            .counters
            .scale_out_requested
            .fetch_add(n as u64, Ordering::Relaxed);
        let template = template.to_owned();
        tokio::spawn(async move {
            let started = me.inner.runtime.start_unplaced(&template, n, resolve).await;
            for r in started {
                match r {
                    Ok(info) => match me.accept_started(&template, info).await {
                        Ok(slot) => me.record_warm(slot).await,
                        Err(e) => tracing::warn!(%template, error = %e, "scale-out slot refused"),
                    },
                    Err(e) => {
                        me.inner
                            .counters
                            .slot_start_failed
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%template, error = %e, "scale-out start failed");
                    }
                }
            }
            if let Some(k) = me
                .inner
                .refilling
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&template)
            {
                *k = k.saturating_sub(n);
            }
        });
        true
    }

    fn refilling(&self, template: &str) -> usize {
        self.inner
            .refilling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(template)
            .copied()
            .unwrap_or(0)
    }

    /// Runs the reconcilers every `every` while this replica holds the leader lease,
    /// until `stop` fires. The lease lasts [`LEADER_LEASE`]; a leader that stops
    /// renewing it is replaced by another replica within that time.
    pub fn spawn_reconcilers(&self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut leading = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let epoch = match me
                    .inner
                    .store
                    .lead(&me.inner.replica_id, ms(LEADER_LEASE))
                    .await
                {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the leader lease");
                        None
                    }
                };
                if epoch != leading {
                    match epoch {
                        Some(e) => {
                            tracing::info!(replica = %me.inner.replica_id, epoch = e, "leading the reconcilers")
                        }
                        None => {
                            tracing::info!(replica = %me.inner.replica_id, "following; another replica leads")
                        }
                    }
                    leading = epoch;
                }
                if leading.is_some() {
                    me.reconcile().await;
                }
            }
        });
    }

    /// This replica's id in the leader lease.
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }
}

/// A 128-bit random bearer token, hex.
fn token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

pub(crate) fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub use berth_wire::now_ms;

/// Serves the API on `listener` and runs the reconcilers until `shutdown` completes.
pub async fn run(
    scheduler: Scheduler,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    scheduler.spawn_reconcilers(Duration::from_millis(500), stop_rx);
    let result = axum::serve(listener, router(scheduler))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop_tx.send(true);
    result
}

/// Why the host's latest report says `slot` must not be handed out, if it does.
fn not_ready_reason(hosts: &[HostRecord], slot: &WarmSlot) -> Option<String> {
    let info = hosts
        .iter()
        .find(|h| h.report.host_id == slot.host_id)?
        .report
        .slots
        .iter()
        .find(|s| s.slot_id == slot.slot_id)?;
    match info.state {
        // A slot enters a pool only once its hostd answered it ready, so `Starting`
        // is a report from before that (heartbeats lag by up to one period), not a
        // reason to throw a good slot away.
        berth_wire::SlotState::Ready | berth_wire::SlotState::Starting => None,
        other => Some(format!(
            "{other:?}: {}",
            info.reason.as_deref().unwrap_or("no reason given")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Runtime;
    use berth_wire::{HostReport, SlotInfo, SlotState};

    fn host_with(slot: &str, state: SlotState) -> HostRecord {
        HostRecord {
            report: HostReport {
                host_id: "h1".into(),
                runtime: "docker".into(),
                hostd_url: "http://127.0.0.1:1".into(),
                instance_type: "local".into(),
                branch_limit: 4,
                branch_limit_source: "configured".into(),
                branches_used: 1,
                memory_total_mib: 1024,
                memory_system_mib: 512,
                memory_reserved_mib: 32,
                memory_limit_total_mib: 320,
                draining: false,
                compliant: true,
                slots: vec![SlotInfo {
                    slot_id: slot.into(),
                    template: "default".into(),
                    host_id: "h1".into(),
                    agent_url: "http://172.18.0.2:9000".into(),
                    state,
                    memory_mib: 32,
                    memory_limit_mib: 320,
                    memory_idle_mib: None,
                    reason: Some("egress lock cannot be proven".into()),
                    rules_verified_at_ms: None,
                    created_at_ms: 0,
                    claim_secret: None,
                }],
                reported_at_ms: 0,
                checks: Vec::new(),
            },
            last_seen_ms: 0,
            draining: false,
        }
    }

    fn warm(slot: &str) -> WarmSlot {
        WarmSlot {
            slot_id: slot.into(),
            host_id: "h1".into(),
            template: "default".into(),
            agent_url: "http://172.18.0.2:9000".into(),
            claim_secret: String::new(),
        }
    }

    #[test]
    fn a_slot_its_host_withdrew_is_not_handed_out() {
        let hosts = [host_with("s1", SlotState::Withdrawn)];
        let why = not_ready_reason(&hosts, &warm("s1")).expect("withdrawn is not ready");
        assert!(
            why.contains("Withdrawn") && why.contains("egress lock cannot be proven"),
            "{why}"
        );
        assert!(not_ready_reason(&[host_with("s1", SlotState::Unhealthy)], &warm("s1")).is_some());
        // A report older than the slot's readiness still says Starting: not a reason.
        assert_eq!(
            not_ready_reason(&[host_with("s1", SlotState::Starting)], &warm("s1")),
            None
        );
    }

    #[test]
    fn placement_offers_only_memory_beyond_the_system_reserve() {
        let s = Scheduler::new(Config::default(), Store::memory());
        let views = s.views_of(&[host_with("s1", SlotState::Ready)]);
        // 1024 total - 512 for the system - 32 reserved by the one slot.
        assert_eq!(views[0].memory_free_mib, 480);
    }

    /// A scheduler on the recording runtime, with host `h1` alive in its store.
    async fn on_fake_runtime(pool: usize) -> (Scheduler, runtime::RecordingRuntime) {
        on_fake_runtime_with(Config {
            pools: [("default".to_owned(), pool)].into(),
            ..Config::default()
        })
        .await
    }

    /// The same with `config`.
    async fn on_fake_runtime_with(config: Config) -> (Scheduler, runtime::RecordingRuntime) {
        let fake = runtime::RecordingRuntime::new();
        let s = Scheduler::with_runtime(config, Store::memory(), Arc::new(fake.clone()));
        let mut report = host_with("none", SlotState::Ready).report;
        report.slots.clear();
        report.branch_limit = 10;
        report.memory_total_mib = 4096;
        s.store().put_host(report, now_ms()).await.unwrap();
        (s, fake)
    }

    #[tokio::test]
    async fn refill_starts_slots_through_the_runtime_on_the_placed_host() {
        let (s, fake) = on_fake_runtime(2).await;
        s.reconcile().await;
        for _ in 0..100 {
            if s.store().pool_sizes().await.unwrap().get("default") == Some(&2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            s.store().pool_sizes().await.unwrap().get("default"),
            Some(&2)
        );
        let started: usize = fake
            .calls()
            .into_iter()
            .map(|c| match c {
                runtime::RuntimeCall::Start {
                    host_id,
                    template,
                    count,
                } if host_id == "h1" && template == "default" => count,
                _ => 0,
            })
            .sum();
        assert_eq!(started, 2, "{:?}", fake.calls());
    }

    #[tokio::test]
    async fn a_host_that_refuses_is_marked_stale_and_the_next_host_takes_the_slots() {
        let (s, fake) = on_fake_runtime(0).await;
        let mut h2 = host_with("none", SlotState::Ready).report;
        h2.host_id = "h2".into();
        h2.slots.clear();
        h2.branch_limit = 10;
        h2.memory_total_mib = 2048;
        s.store().put_host(h2, now_ms()).await.unwrap();
        // h1 has more room, so placement tries it first; it refuses (no ENI left).
        fake.refuse_on("h1", Some("RESOURCE:ENI"));
        let got = s.start_batch("default", 3).await;
        assert_eq!(got.len(), 3);
        for r in &got {
            assert_eq!(
                r.as_ref().map(|w| w.host_id.as_str()).ok(),
                Some("h2"),
                "{r:?}"
            );
        }
        // Spread placed some on each; what h1 refused was placed again on h2.
        let on = |h: &str| -> usize {
            fake.calls()
                .iter()
                .map(|c| match c {
                    runtime::RuntimeCall::Start { host_id, count, .. } if host_id == h => *count,
                    _ => 0,
                })
                .sum()
        };
        let refused = on("h1");
        assert!(refused >= 1, "{:?}", fake.calls());
        assert_eq!(on("h2"), 3, "{:?}", fake.calls());
        assert!(s.is_stale("h1") && !s.is_stale("h2"));
        assert_eq!(
            s.counters().host_refusals.load(Ordering::Relaxed),
            refused as u64
        );
        // While h1 is stale, a new start goes straight to h2.
        fake.refuse_on("h1", None);
        let one = s.start_slot("default").await.unwrap();
        assert_eq!(one.host_id, "h2");
    }

    #[tokio::test]
    async fn a_slot_whose_agent_is_outside_the_allowed_networks_is_discarded() {
        let fake = runtime::RecordingRuntime::new();
        let config = Config {
            pools: [("default".to_owned(), 0)].into(),
            // The fake's agents are on 127.0.0.1: allow only a Docker network.
            agent_networks: addrs::Cidr::parse_list("172.18.0.0/16").unwrap(),
            ..Config::default()
        };
        let s = Scheduler::with_runtime(config, Store::memory(), Arc::new(fake.clone()));
        let mut report = host_with("none", SlotState::Ready).report;
        report.slots.clear();
        s.store().put_host(report, now_ms()).await.unwrap();
        let err = s.start_slot("default").await.unwrap_err();
        assert!(
            err.to_string().contains("outside the allowed networks"),
            "{err}"
        );
        assert_eq!(
            s.counters().agent_address_refused.load(Ordering::Relaxed),
            1
        );
        assert!(
            fake.calls()
                .iter()
                .any(|c| matches!(c, runtime::RuntimeCall::Stop { reason, .. }
            if reason.contains("outside the allowed networks")))
        );
    }

    /// A stand-in for one host's hostd claim endpoint: refuses the first claim it gets
    /// (as when that slot's proxy is gone), takes the others; records what it was sent.
    async fn claim_endpoint() -> (String, Arc<Mutex<Vec<(String, SlotClaim)>>>) {
        use axum::{Json, extract::Path, http::StatusCode, routing::post};
        let seen: Arc<Mutex<Vec<(String, SlotClaim)>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/v1/slots/{id}/claim",
            post(move |Path(id): Path<String>, Json(c): Json<SlotClaim>| {
                let record = record.clone();
                async move {
                    let first = {
                        let mut r = record.lock().unwrap();
                        r.push((id, c));
                        r.len() == 1
                    };
                    if first {
                        (
                            StatusCode::BAD_GATEWAY,
                            Json(berth_wire::ErrorBody::new(
                                "push_failed",
                                "proxy unreachable",
                            )),
                        )
                    } else {
                        (
                            StatusCode::OK,
                            Json(berth_wire::ErrorBody::new("ok", "claimed")),
                        )
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_slot_whose_push_fails_is_discarded_and_the_next_warm_one_serves() {
        let (s, fake) = on_fake_runtime(0).await;
        let (url, seen) = claim_endpoint().await;
        let mut report = host_with("none", SlotState::Ready).report;
        report.slots.clear();
        report.hostd_url = url;
        s.store().put_host(report, now_ms()).await.unwrap();
        for id in ["s1", "s2"] {
            s.store().push_warm(warm(id)).await.unwrap();
        }
        let ws = s
            .acquire(CreateWorkspace {
                conversation_id: "c1".into(),
                env: [("GREETING".to_owned(), "hi".to_owned())].into(),
                egress: Some(vec![berth_wire::EgressRule {
                    host: "pypi.org".into(),
                    ports: vec![],
                }]),
                ..Default::default()
            })
            .await
            .expect("the second warm slot serves");
        assert_eq!(ws.source, Source::Warm, "still a warm hand-out");
        let record = s.store().workspace(&ws.id).await.unwrap().unwrap();
        let seen = seen.lock().unwrap().clone();
        let tried: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(tried.len(), 2, "{tried:?}");
        assert_eq!(record.slot_id, tried[1]);
        let (_, claim) = &seen[1];
        assert_eq!(claim.env.get("GREETING").map(String::as_str), Some("hi"));
        assert_eq!(claim.policy.egress[0].host, "pypi.org");
        assert_eq!(claim.policy.workspace_id, ws.id);
        let stops: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| matches!(c, runtime::RuntimeCall::Stop { reason, .. } if reason == "claim failed"))
            .collect();
        assert_eq!(
            stops.len(),
            1,
            "the refused slot is stopped: {:?}",
            fake.calls()
        );
    }

    #[tokio::test]
    async fn a_failed_claim_stops_the_slot_through_the_runtime_and_says_why() {
        let (s, fake) = on_fake_runtime(0).await;
        // No warm slot: the cold path starts one; its (fake) agent cannot be claimed.
        let err = s
            .acquire(CreateWorkspace {
                conversation_id: "c1".into(),
                template: None,
                ttl_seconds: None,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Runtime(_)), "{err:?}");
        let stops: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| matches!(c, runtime::RuntimeCall::Stop { reason, .. } if reason == "claim failed"))
            .collect();
        assert_eq!(
            stops.len(),
            3,
            "each of three failed claims stops its slot: {:?}",
            fake.calls()
        );
        assert!(
            fake.list_slots(&[runtime::HostTarget {
                host_id: "h1".into(),
                hostd_url: String::new()
            }])
            .await
            .unwrap()
            .is_empty()
        );
    }

    #[tokio::test]
    async fn a_runtime_that_cannot_start_counts_the_failure() {
        let (s, fake) = on_fake_runtime(0).await;
        fake.fail_starts(Some("RESOURCE:ENI"));
        let err = s.start_slot("default").await.unwrap_err();
        assert!(err.to_string().contains("RESOURCE:ENI"), "{err}");
        assert_eq!(s.counters().slot_start_failed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_running_slot_no_state_knows_is_stopped_after_the_grace_period() {
        let (s, fake) = on_fake_runtime_with(Config {
            pools: [("default".to_owned(), 1)].into(),
            orphan_grace: Duration::from_millis(80),
            ..Config::default()
        })
        .await;
        // A warm slot the pool knows, and one started behind the state's back.
        let known = s.start_slot("default").await.unwrap();
        s.store().push_warm(known.clone()).await.unwrap();
        let target = runtime::HostTarget {
            host_id: "h1".into(),
            hostd_url: String::new(),
        };
        let orphan = fake
            .start_slots(&target, "default", 1)
            .await
            .pop()
            .unwrap()
            .unwrap();
        s.reap_orphans().await.unwrap();
        let stopped = |f: &runtime::RecordingRuntime| -> Vec<String> {
            f.calls()
                .into_iter()
                .filter_map(|c| match c {
                    runtime::RuntimeCall::Stop {
                        slot_id, reason, ..
                    } if reason.starts_with("orphan") => Some(slot_id),
                    _ => None,
                })
                .collect()
        };
        assert!(stopped(&fake).is_empty(), "stopped before its grace period");
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.reap_orphans().await.unwrap();
        assert_eq!(stopped(&fake), vec![orphan.slot_id.clone()]);
        assert_eq!(s.counters().orphans_stopped.load(Ordering::Relaxed), 1);
        // The known slot still runs.
        let running = fake.list_slots(&[target]).await.unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].slot_id, known.slot_id);
    }

    #[test]
    fn a_ready_or_not_yet_reported_slot_is_handed_out() {
        assert_eq!(
            not_ready_reason(&[host_with("s1", SlotState::Ready)], &warm("s1")),
            None
        );
        // Created after the host's last report: nothing says otherwise.
        assert_eq!(
            not_ready_reason(&[host_with("s1", SlotState::Withdrawn)], &warm("s2")),
            None
        );
    }
}

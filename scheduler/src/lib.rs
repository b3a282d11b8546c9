//! The scheduler: the backend's one entry point to Berth.
//!
//! # Background
//! The backend asks for a workspace per conversation. The scheduler answers from a
//! warm pool when it can (one atomic store step, see [`store`]) and starts one cold
//! otherwise, on a host chosen by [`placement`]. It is stateless: everything lives
//! in the [`store::Store`], so replicas can come and go. The reconcilers (pool
//! refill, TTL reaper, host-death handling) run in the leader only; with the
//! in-memory store there is one process, which is always the leader.
//!
//! Modules: `service` (acquire, release, keepalive, egress), `starting` (placement
//! and slot starts), `reconcile` (the leader's passes), `leader` (the lease),
//! [`validate`] and [`templates`] (what a request may ask), [`api`] (HTTP), [`store`]
//! (the state, behind one trait), [`runtime`] (slots, behind one trait).
#![forbid(unsafe_code)]

pub mod addrs;
pub mod api;
mod checkpoints;
pub mod clients;
#[cfg(feature = "dev")]
pub mod dev;
pub mod ecs;
pub mod fleet;
mod idle;
mod leader;
pub mod metrics;
pub mod openapi;
pub mod placement;
mod rebuild;
mod reconcile;
pub mod redis_store;
pub mod runtime;
mod service;
mod starting;
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
use store::{
    Acquired, Condition, Fence, HostRecord, Store, StoreError, WarmSlot, WorkspaceRecord,
    WorkspaceStatus,
};

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
    /// The operator's token, for the fleet page, `/metrics`, hosts, drain and pools;
    /// `None`: those routes take the backend's token like the rest.
    pub operator_token: Option<String>,
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
    /// A binding still `Claiming` after this long belongs to a replica that died
    /// mid-claim (no acquire takes as long): the leader removes it and stops its slot.
    pub claim_recovery: Duration,
    /// A host silent for this long is forgotten (its lost workspaces stay visible
    /// until their conversations are served again).
    pub host_retention: Duration,
    /// How long one create may take, every call inside it included (placement,
    /// starting a cold slot, the claim); past it the answer is `503` with
    /// `Retry-After` and nothing is left bound.
    pub acquire_deadline: Duration,
    /// Cold starts in flight at once on this replica; creates beyond wait for one
    /// (within the deadline) so a burst on an empty pool cannot start a slot each.
    pub max_cold_starts: usize,
    /// A workspace with no attached stream, no process and no egress through its
    /// proxy for this long is released (a template's `idle_timeout_seconds` wins);
    /// zero: never.
    pub idle_timeout: Duration,
    /// Where checkpoints are (the hosts' store too); `None`: no checkpoints, no
    /// restores.
    pub checkpoints: Option<berth_checkpoint::Store>,
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
            operator_token: None,
            agent_networks: Vec::new(),
            stale_for: Duration::from_secs(10),
            orphan_grace: Duration::from_secs(300),
            scale_out_headroom: 0,
            host_token: String::new(),
            templates: templates::Templates::default(),
            claim_recovery: Duration::from_secs(90),
            host_retention: Duration::from_secs(3600),
            acquire_deadline: Duration::from_secs(30),
            max_cold_starts: 16,
            idle_timeout: Duration::from_secs(30 * 60),
            checkpoints: None,
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
    pub claims_recovered: AtomicU64,
    pub workspaces_lost: AtomicU64,
    pub hosts_forgotten: AtomicU64,
    pub idle_reaped: AtomicU64,
    /// Leader writes the store refused because the lease had moved on.
    pub fenced_writes: AtomicU64,
    /// Times the state was rebuilt from the hosts (a fresh or emptied store).
    pub state_rebuilds: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoints_failed: AtomicU64,
    /// New workspaces that got their conversation's latest checkpoint.
    pub restores: AtomicU64,
    pub restores_failed: AtomicU64,
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
    /// Cold starts this replica may have in flight ([`Config::max_cold_starts`]).
    cold_starts: tokio::sync::Semaphore,
    /// The idle reaper's memory: per workspace, the latest activity it saw (unix
    /// ms), so it asks each workspace at most once per idle period.
    active_at: Mutex<HashMap<String, u64>>,
    /// Workspaces a reaper is checkpointing before it releases them (in tasks of
    /// their own): one at a time per workspace.
    reaping: Mutex<std::collections::HashSet<String>>,
    /// When the leader first found the store without its state marker.
    lost_since: Mutex<Option<std::time::Instant>>,
    /// The lease's epoch while this replica leads, else 0.
    leading: AtomicU64,
    /// The latest events, for the fleet page.
    events: fleet::Events,
    /// The hosts' reports as last read, shared by every create in flight (see
    /// [`Scheduler::hosts_now`]).
    hosts_cache: HostsCache,
    /// Create latencies, for `/metrics`.
    acquire_histogram: metrics::AcquireHistogram,
    /// When the reconcilers last swept every workspace.
    last_sweep: Mutex<Option<std::time::Instant>>,
    /// Pools below their target, since when (the fleet page's grace).
    pools_below_since: Mutex<HashMap<String, std::time::Instant>>,
}

/// How often the leader's passes over every workspace run (host death, expiry,
/// idleness, claim recovery); the refill runs on every pass.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// How old a read of the hosts' reports a create may use. Heartbeats come every
/// 2 s, so this adds little staleness, and a burst of creates reads (and parses)
/// the reports once per period instead of once per create.
pub const HOSTS_FRESH_FOR: Duration = Duration::from_millis(500);

/// The last read of the hosts' reports, and whether a newer one is being made.
#[derive(Default)]
struct HostsCache {
    last: std::sync::RwLock<Option<(std::time::Instant, Arc<Vec<HostRecord>>)>>,
    refreshing: std::sync::atomic::AtomicBool,
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
                cold_starts: tokio::sync::Semaphore::new(config.max_cold_starts.max(1)),
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
                active_at: Mutex::default(),
                reaping: Mutex::default(),
                lost_since: Mutex::default(),
                leading: AtomicU64::new(0),
                events: fleet::Events::default(),
                hosts_cache: HostsCache::default(),
                acquire_histogram: metrics::AcquireHistogram::default(),
                last_sweep: Mutex::default(),
                pools_below_since: Mutex::default(),
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

    pub fn acquire_histogram(&self) -> &metrics::AcquireHistogram {
        &self.inner.acquire_histogram
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

    /// The hosts' reports as a create uses them: the last read while it is younger
    /// than [`HOSTS_FRESH_FOR`]; past that, still the last read while one create
    /// refreshes it in the background (no create waits for a read but the first,
    /// and a read older than four periods is not used).
    pub(crate) async fn hosts_now(&self) -> Result<Arc<Vec<HostRecord>>, StoreError> {
        let cache = &self.inner.hosts_cache;
        let last = cache.last.read().unwrap_or_else(|e| e.into_inner()).clone();
        match last {
            Some((at, hosts)) if at.elapsed() < HOSTS_FRESH_FOR => Ok(hosts),
            Some((at, hosts)) if at.elapsed() < HOSTS_FRESH_FOR * 4 => {
                if !cache.refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = me.read_hosts().await;
                        me.inner
                            .hosts_cache
                            .refreshing
                            .store(false, Ordering::Release);
                    });
                }
                Ok(hosts)
            }
            _ => self.read_hosts().await,
        }
    }

    /// The hosts' reports read now (and shared with the creates that follow).
    pub(crate) async fn read_hosts(&self) -> Result<Arc<Vec<HostRecord>>, StoreError> {
        let hosts = Arc::new(self.inner.store.hosts().await?);
        *self
            .inner
            .hosts_cache
            .last
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), hosts.clone()));
        Ok(hosts)
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
        // Slots started here that the host's last report does not list yet. One
        // that a report lists, or that is older than 30 s (a report comes every few
        // seconds: it is gone, not unreported), is forgotten here.
        let unreported: HashMap<String, usize> = {
            let reported: HashMap<&str, &HostRecord> = hosts
                .iter()
                .map(|h| (h.report.host_id.as_str(), h))
                .collect();
            let mut recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.retain(|host_id, ids| {
                let listed: std::collections::HashSet<&str> = reported
                    .get(host_id.as_str())
                    .map(|h| h.slot_ids.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                ids.retain(|(id, at)| {
                    at.elapsed() < Duration::from_secs(30) && !listed.contains(id.as_str())
                });
                !ids.is_empty()
            });
            recent
                .iter()
                .map(|(h, ids)| (h.clone(), ids.len()))
                .collect()
        };
        let per_slot = self.inner.config.slot_memory_mib;
        hosts
            .iter()
            .map(|h| {
                let r = &h.report;
                // Starting now, plus started but not yet in the host's last report.
                let unreported = unreported.get(&r.host_id).copied().unwrap_or(0);
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

#[cfg(test)]
mod tests;

//! Runtimes: how slots come to exist on a host and how they go. The acquire path,
//! the refill reconciler and release call only [`Runtime`]; which runtime a fleet
//! runs is chosen once, when the [`crate::Scheduler`] is made.
//!
//! # Background
//! A slot's life differs by runtime: in the docker runtime hostd makes the two
//! containers itself (its slot API); on ECS the scheduler calls RunTask with a
//! placement constraint naming the host and hostd adopts the task. What the
//! scheduler needs from either is the same three things — start slots of a template
//! on the host placement chose, stop one, and list what runs (for reconciliation) —
//! so those three are the trait, and the claim (which talks to the slot's agent, not
//! to the runtime) stays outside it.
//!
//! - [`HostdRuntime`]: the docker runtime, through each host's hostd.
//! - [`RecordingRuntime`]: a fake that records calls and answers from a script, for
//!   unit tests of the scheduler's logic.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};

use berth_wire::{CreateSlot, SlotInfo};

use crate::clients::{CallError, Clients};

/// A boxed future, so that [`Runtime`] can be used as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Finds how to reach a host by its id (its hostd's URL, from the state store),
/// once it has reported; used when the runtime learns a slot's host only after
/// starting it (scale-out).
pub type HostResolver =
    std::sync::Arc<dyn Fn(String) -> BoxFuture<'static, Option<HostTarget>> + Send + Sync>;

/// A host as the runtime addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTarget {
    pub host_id: String,
    /// Its hostd's base URL (the docker runtime calls it; ECS does not need it).
    pub hostd_url: String,
}

/// A slot the runtime reports running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningSlot {
    pub slot_id: String,
    pub host_id: String,
    pub template: String,
}

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Call(#[from] CallError),
    /// The host cannot take the slot now (ECS `failures[]`: `RESOURCE:ENI`, `AGENT`,
    /// …): placement should treat its view as stale and try another host.
    #[error("host {host_id} refused the slot: {reason}")]
    HostRefused { host_id: String, reason: String },
    /// An AWS call failed for good (after retries, if it was retryable).
    #[error("{op} failed after {attempts} attempt(s): {code}: {message}")]
    Aws {
        op: &'static str,
        code: String,
        message: String,
        attempts: u32,
    },
    #[error("{0}")]
    Other(String),
}

/// Starts, stops and lists slots.
pub trait Runtime: Send + Sync + 'static {
    /// Starts `count` slots of `template` on `host` (the runtime names them); one
    /// result per slot asked for. A slot is returned once its host reports it ready
    /// (its agent answers and its lock-down is proven).
    fn start_slots<'a>(
        &'a self,
        host: &'a HostTarget,
        template: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Vec<Result<SlotInfo, RuntimeError>>>;

    /// Starts `count` slots of `template` wherever the cluster's own capacity
    /// management puts them, on new hosts if it must (ECS: the capacity provider
    /// strategy, no instance constraint, so managed scaling adds instances); waits
    /// for the host each lands on to report it ready (`resolve` finds that host).
    /// Only called when [`Runtime::can_scale_out`]; by default every slot fails.
    fn start_unplaced<'a>(
        &'a self,
        _template: &'a str,
        count: usize,
        _resolve: HostResolver,
    ) -> BoxFuture<'a, Vec<Result<SlotInfo, RuntimeError>>> {
        Box::pin(async move {
            (0..count)
                .map(|_| Err(RuntimeError::Other("this runtime cannot scale out".into())))
                .collect()
        })
    }

    /// Whether [`Runtime::start_unplaced`] can add hosts (ECS with a capacity
    /// provider configured); the docker runtime cannot.
    fn can_scale_out(&self) -> bool {
        false
    }

    /// Counters for `/metrics`, as `(name, value)`; none by default.
    fn metrics(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Stops a slot and removes what it was made of; stopping one that is gone is
    /// not an error.
    fn stop_slot<'a>(
        &'a self,
        host: &'a HostTarget,
        slot_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// What runs on `hosts`, for reconciliation against the state store.
    fn list_slots<'a>(
        &'a self,
        hosts: &'a [HostTarget],
    ) -> BoxFuture<'a, Result<Vec<RunningSlot>, RuntimeError>>;
}

// === impl HostdRuntime ===

/// The docker runtime: each host's hostd makes and removes slots.
#[derive(Clone)]
pub struct HostdRuntime {
    clients: Clients,
}

impl HostdRuntime {
    pub fn new(clients: Clients) -> Self {
        Self { clients }
    }
}

impl Runtime for HostdRuntime {
    fn start_slots<'a>(
        &'a self,
        host: &'a HostTarget,
        template: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Vec<Result<SlotInfo, RuntimeError>>> {
        Box::pin(async move {
            let starts = (0..count).map(|_| async move {
                let req = CreateSlot {
                    slot_id: format!("s-{}", crate::short_id()),
                    template: template.to_owned(),
                };
                self.clients
                    .create_slot(&host.hostd_url, &host.host_id, &req)
                    .await
                    .map_err(RuntimeError::from)
            });
            futures_util::future::join_all(starts).await
        })
    }

    fn stop_slot<'a>(
        &'a self,
        host: &'a HostTarget,
        slot_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            tracing::info!(host_id = %host.host_id, %slot_id, %reason, "stopping slot");
            self.clients
                .destroy_slot(&host.hostd_url, &host.host_id, slot_id)
                .await
                .map_err(RuntimeError::from)
        })
    }

    fn list_slots<'a>(
        &'a self,
        hosts: &'a [HostTarget],
    ) -> BoxFuture<'a, Result<Vec<RunningSlot>, RuntimeError>> {
        Box::pin(async move {
            let mut running = Vec::new();
            for host in hosts {
                let report = self.clients.host_status(&host.hostd_url).await?;
                running.extend(report.slots.into_iter().map(|s| RunningSlot {
                    slot_id: s.slot_id,
                    host_id: host.host_id.clone(),
                    template: s.template,
                }));
            }
            Ok(running)
        })
    }
}

// === impl RecordingRuntime ===

/// One call made to [`RecordingRuntime`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeCall {
    Start {
        host_id: String,
        template: String,
        count: usize,
    },
    Stop {
        host_id: String,
        slot_id: String,
        reason: String,
    },
    List,
}

#[derive(Default)]
struct Recorded {
    calls: Vec<RuntimeCall>,
    running: Vec<RunningSlot>,
    /// Starts fail with this message while set.
    failing: Option<String>,
    /// Starts on these hosts are refused with this reason.
    refusing: std::collections::HashMap<String, String>,
}

/// A fake runtime: records every call; started slots "run" until stopped.
#[derive(Clone, Default)]
pub struct RecordingRuntime {
    inner: Arc<Mutex<Recorded>>,
}

impl RecordingRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn calls(&self) -> Vec<RuntimeCall> {
        self.lock().calls.clone()
    }

    /// Makes starts on `host_id` be refused as a full host would (`None`: accepted).
    pub fn refuse_on(&self, host_id: &str, reason: Option<&str>) {
        let mut r = self.lock();
        match reason {
            Some(why) => r.refusing.insert(host_id.to_owned(), why.to_owned()),
            None => r.refusing.remove(host_id),
        };
    }

    /// Makes every start fail with `message` (`None`: succeed again).
    pub fn fail_starts(&self, message: Option<&str>) {
        self.lock().failing = message.map(str::to_owned);
    }
}

impl Runtime for RecordingRuntime {
    fn start_slots<'a>(
        &'a self,
        host: &'a HostTarget,
        template: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Vec<Result<SlotInfo, RuntimeError>>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(RuntimeCall::Start {
                host_id: host.host_id.clone(),
                template: template.to_owned(),
                count,
            });
            let failing = r.failing.clone();
            let refusing = r.refusing.get(&host.host_id).cloned();
            (0..count)
                .map(|_| {
                    let slot_id = &format!("s-{}", crate::short_id());
                    if let Some(msg) = &failing {
                        return Err(RuntimeError::Other(msg.clone()));
                    }
                    if let Some(reason) = &refusing {
                        return Err(RuntimeError::HostRefused {
                            host_id: host.host_id.clone(),
                            reason: reason.clone(),
                        });
                    }
                    r.running.push(RunningSlot {
                        slot_id: slot_id.clone(),
                        host_id: host.host_id.clone(),
                        template: template.to_owned(),
                    });
                    Ok(SlotInfo {
                        slot_id: slot_id.clone(),
                        template: template.to_owned(),
                        host_id: host.host_id.clone(),
                        // Loopback port 1: nothing listens, so a claim fails at once
                        // and no name is ever resolved.
                        agent_url: "http://127.0.0.1:1".into(),
                        state: berth_wire::SlotState::Ready,
                        memory_mib: 48,
                        memory_limit_mib: 576,
                        memory_idle_mib: None,
                        reason: None,
                        rules_verified_at_ms: Some(0),
                        created_at_ms: 0,
                        claim_secret: Some(format!("secret-of-{slot_id}")),
                    })
                })
                .collect()
        })
    }

    fn stop_slot<'a>(
        &'a self,
        host: &'a HostTarget,
        slot_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(RuntimeCall::Stop {
                host_id: host.host_id.clone(),
                slot_id: slot_id.to_owned(),
                reason: reason.to_owned(),
            });
            r.running.retain(|s| s.slot_id != slot_id);
            Ok(())
        })
    }

    fn list_slots<'a>(
        &'a self,
        hosts: &'a [HostTarget],
    ) -> BoxFuture<'a, Result<Vec<RunningSlot>, RuntimeError>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(RuntimeCall::List);
            Ok(r.running
                .iter()
                .filter(|s| hosts.iter().any(|h| h.host_id == s.host_id))
                .cloned()
                .collect())
        })
    }
}

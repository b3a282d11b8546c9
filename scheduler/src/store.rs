//! The scheduler's state: hosts, warm slots, workspaces and conversation bindings.
//!
//! Every replica of the scheduler reads and writes the same store. The one step that
//! must never race — hand out a warm slot and bind the conversation to it — is a
//! single atomic operation ([`Store::acquire`]): under the memory store's lock, or a
//! Lua script in Redis. Two replicas therefore never hand out one slot twice, and two
//! requests for one conversation get one workspace.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use berth_wire::{HostReport, Workspace};
use serde::{Deserialize, Serialize};

/// A ready slot waiting in a pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WarmSlot {
    pub slot_id: String,
    pub host_id: String,
    pub template: String,
    pub agent_url: String,
    /// What the slot's agent demands in the claim (from hostd's create answer).
    #[serde(default)]
    pub claim_secret: String,
}

/// Where a workspace is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceStatus {
    /// Bound to its conversation; the agent is being claimed (or a cold slot made).
    Claiming,
    Ready,
    /// Its host died; kept (and shown) until the conversation is served again.
    Lost,
}

/// A workspace as the store keeps it: the API view plus the slot behind it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkspaceRecord {
    pub workspace: Workspace,
    pub slot_id: String,
    pub status: WorkspaceStatus,
    /// The slot's claim secret, which hostd's per-slot calls (egress changes) need
    /// again; never part of the API view.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim_secret: String,
}

/// The last report of a host and when it came, as every create reads it: the
/// report's `slots` hold only the slots that are not ready (unhealthy, withdrawn:
/// what a create must not hand out), `slot_ids` names every slot it reported. The
/// full slot list is [`StateStore::host_slots`]. Reading every host's full list on
/// every create would cost O(slots in the fleet) per create.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostRecord {
    pub report: HostReport,
    pub last_seen_ms: u64,
    pub draining: bool,
    #[serde(default)]
    pub slot_ids: Vec<String>,
}

/// A host's report as [`StateStore::put_host`] keeps it: the brief report (its
/// ready and starting slots left out), every slot's id, and the full slot list.
pub fn split_report(
    mut report: HostReport,
) -> (HostReport, Vec<String>, Vec<berth_wire::SlotInfo>) {
    let slots = std::mem::take(&mut report.slots);
    let ids = slots.iter().map(|s| s.slot_id.clone()).collect();
    report.slots = slots
        .iter()
        .filter(|s| {
            !matches!(
                s.state,
                berth_wire::SlotState::Ready | berth_wire::SlotState::Starting
            )
        })
        .cloned()
        .collect();
    (report, ids, slots)
}

/// The outcome of [`Store::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The conversation already has this workspace.
    Existing(Box<WorkspaceRecord>),
    /// A warm slot was popped and bound to the new workspace.
    Warm(WarmSlot),
    /// No warm slot: the conversation is bound to the new workspace, which must be
    /// started cold.
    Cold,
    /// The store has no state marker (it lost its data, or was never used): nothing
    /// was bound; the leader is rebuilding the state and creates must wait.
    Rebuilding,
}

/// The leader's proof that it still leads: the owner and the fencing epoch its lease
/// was granted with. Every reconciler write carries it, and the store refuses the
/// write ([`StoreError::Fenced`]) once another replica holds the lease, so a leader
/// that paused (GC, a stalled VM, a partition) and woke up deposed changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub epoch: u64,
}

/// What a conditional removal ([`StateStore::remove_workspace_if`]) requires of the
/// stored record; `None` fields are not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Condition {
    pub status: Option<WorkspaceStatus>,
    /// The stored `expires_at` must still be this one: a `keepalive` that landed
    /// since the reaper looked makes the removal a no-op.
    pub expires_at: Option<u64>,
}

impl Condition {
    pub fn status(status: WorkspaceStatus) -> Self {
        Self {
            status: Some(status),
            expires_at: None,
        }
    }

    /// Still `Ready` and not kept alive since `record` was read.
    pub fn unchanged_ready(record: &WorkspaceRecord) -> Self {
        Self {
            status: Some(WorkspaceStatus::Ready),
            expires_at: Some(record.workspace.expires_at),
        }
    }

    pub fn holds(&self, record: &WorkspaceRecord) -> bool {
        self.status.is_none_or(|s| s == record.status)
            && self
                .expires_at
                .is_none_or(|e| e == record.workspace.expires_at)
    }
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A leader write from a replica that no longer holds the lease.
    #[error("write refused: epoch {epoch} of {owner} no longer leads")]
    Fenced { owner: String, epoch: u64 },
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Records a popped slot in the workspace bound to it.
pub fn bind_slot(record: &mut WorkspaceRecord, slot: &WarmSlot) {
    record.slot_id = slot.slot_id.clone();
    record.workspace.host_id = slot.host_id.clone();
    record.workspace.agent_url = slot.agent_url.clone();
    record.claim_secret = slot.claim_secret.clone();
}

/// A boxed future, for the object-safe [`StateStore`] trait.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the scheduler keeps and shares between replicas. Two implementations:
/// [`MemoryStore`] (one process) and [`crate::redis_store::RedisStore`] (a fleet); both
/// pass the same conformance suite ([`conformance`]).
pub trait StateStore: Send + Sync + 'static {
    /// Records a host's report, seen at `now_ms` (keeps its draining mark).
    fn put_host<'a>(
        &'a self,
        report: HostReport,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Every host's record ([`HostRecord`]: the report without its ready slots).
    fn hosts<'a>(&'a self) -> BoxFuture<'a, Result<Vec<HostRecord>, StoreError>>;
    /// Every slot of a host's last report (empty for an unknown host).
    fn host_slots<'a>(
        &'a self,
        host_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<berth_wire::SlotInfo>, StoreError>>;
    /// Marks a host draining; false if the host is unknown.
    fn set_draining<'a>(
        &'a self,
        host_id: &'a str,
        draining: bool,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn push_warm<'a>(&'a self, slot: WarmSlot) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Ready slots per template.
    fn pool_sizes<'a>(&'a self) -> BoxFuture<'a, Result<BTreeMap<String, usize>, StoreError>>;
    /// Every warm slot in every pool (for reconciliation against the runtime).
    fn warm_slots<'a>(&'a self) -> BoxFuture<'a, Result<Vec<WarmSlot>, StoreError>>;
    /// Takes one warm slot out of its pool (the leader shrinking it); false if it
    /// is no longer there.
    fn take_warm_slot<'a>(
        &'a self,
        slot: &'a WarmSlot,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Takes every warm slot on `host_id` out of the pools: its host died (the
    /// leader, fenced) or an operator drains it (`None`).
    fn take_warm_on_host<'a>(
        &'a self,
        host_id: &'a str,
        fence: Option<&'a Fence>,
    ) -> BoxFuture<'a, Result<Vec<WarmSlot>, StoreError>>;
    /// The atomic step: the conversation's workspace if it has one, else the
    /// candidate bound to it with a warm slot of its template popped (not on a dead
    /// host) and recorded in the binding (slot, host, agent, claim secret), so a
    /// replica dying now leaks nothing; else the candidate bound for a cold start.
    fn acquire<'a>(
        &'a self,
        candidate: &'a WorkspaceRecord,
        dead_hosts: &'a [String],
    ) -> BoxFuture<'a, Result<Acquired, StoreError>>;
    fn put_workspace<'a>(
        &'a self,
        record: &'a WorkspaceRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Replaces a workspace's record only if the stored one exists and is in
    /// `expect` (a claim finishing, a keepalive; the leader marking it lost, fenced):
    /// false if it was removed or moved on meanwhile (recovered, released), and then
    /// nothing is written.
    fn replace_workspace<'a>(
        &'a self,
        record: &'a WorkspaceRecord,
        expect: WorkspaceStatus,
        fence: Option<&'a Fence>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn workspace<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>>;
    fn workspace_for_conversation<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>>;
    fn workspaces<'a>(&'a self) -> BoxFuture<'a, Result<Vec<WorkspaceRecord>, StoreError>>;
    /// Removes a workspace and its conversation binding; returns what was removed.
    fn remove_workspace<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>>;
    /// As [`StateStore::remove_workspace`], for the leader's reapers: only while the
    /// record meets `cond` (recovering a stuck claim must not remove a workspace that
    /// just became ready; expiry must not remove one kept alive meanwhile).
    fn remove_workspace_if<'a>(
        &'a self,
        id: &'a str,
        cond: Condition,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>>;
    /// Forgets a host (its heartbeats stopped long ago); false if it was unknown.
    fn remove_host<'a>(
        &'a self,
        host_id: &'a str,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Whether the state marker is present. A store that lost its data (a flush, a
    /// failover to an empty replica) has none, and neither has one never used: then
    /// [`StateStore::acquire`] refuses with [`Acquired::Rebuilding`] until the
    /// leader has rebuilt the state from the hosts and set the marker.
    fn state_marked<'a>(&'a self) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Sets the state marker (the leader, once the state is rebuilt).
    fn mark_state<'a>(&'a self, fence: &'a Fence) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Puts back a workspace found on a host while rebuilding: recorded, and its
    /// conversation bound to it, only if neither its id nor its conversation is
    /// known (false then, and nothing is written).
    fn restore_workspace<'a>(
        &'a self,
        record: &'a WorkspaceRecord,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Takes or renews the reconcilers' lease for `owner`; the fencing epoch while
    /// `owner` leads (a new, higher one when the lease changes hands), `None` while
    /// another replica does.
    fn lead<'a>(
        &'a self,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
}

/// The scheduler's handle on its state store: cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Store(std::sync::Arc<dyn StateStore>);

impl std::ops::Deref for Store {
    type Target = dyn StateStore;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl Store {
    /// A store in this process's memory (one scheduler; it always leads). It starts
    /// marked: nothing outlives the process for a rebuild to find.
    pub fn memory() -> Self {
        Self::new(MemoryStore::marked())
    }

    /// Connects to Redis at `url` (`redis://host:port[/db]`).
    pub async fn redis(url: &str) -> Result<Self, StoreError> {
        Ok(Self::new(
            crate::redis_store::RedisStore::connect(url).await?,
        ))
    }

    pub fn new(store: impl StateStore) -> Self {
        Self(std::sync::Arc::new(store))
    }
}

// === impl MemoryStore ===

/// State for a single scheduler process (local development, tests). That process is
/// always the leader.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryState>,
}

impl MemoryStore {
    /// An empty store without the state marker, as a fresh Redis is (the
    /// conformance suite starts from one).
    pub fn unmarked() -> Self {
        Self::default()
    }

    /// An empty store with the marker set: a process's own state, complete.
    pub fn marked() -> Self {
        let s = Self::default();
        s.lock().marked = true;
        s
    }
}

#[derive(Default)]
struct MemoryState {
    hosts: BTreeMap<String, HostRecord>,
    host_slots: BTreeMap<String, Vec<berth_wire::SlotInfo>>,
    pools: BTreeMap<String, VecDeque<WarmSlot>>,
    workspaces: HashMap<String, WorkspaceRecord>,
    conversations: HashMap<String, String>,
    /// The reconcilers' lease: owner, epoch and when it lapses.
    lease: Option<(String, u64, std::time::Instant)>,
    epoch: u64,
    marked: bool,
}

impl MemoryState {
    /// Refuses a leader write whose lease has lapsed or changed hands.
    fn check(&self, fence: Option<&Fence>) -> Result<(), StoreError> {
        let Some(f) = fence else { return Ok(()) };
        match &self.lease {
            Some((owner, epoch, until))
                if *owner == f.owner && *epoch == f.epoch && *until > std::time::Instant::now() =>
            {
                Ok(())
            }
            _ => Err(StoreError::Fenced {
                owner: f.owner.clone(),
                epoch: f.epoch,
            }),
        }
    }
}

impl MemoryStore {
    fn remove_if(
        &self,
        id: &str,
        cond: Condition,
        fence: Option<&Fence>,
    ) -> Result<Option<WorkspaceRecord>, StoreError> {
        let mut s = self.lock();
        s.check(fence)?;
        if s.workspaces.get(id).is_some_and(|r| !cond.holds(r)) {
            return Ok(None);
        }
        let removed = s.workspaces.remove(id);
        if let Some(r) = &removed
            && s.conversations.get(&r.workspace.conversation_id) == Some(&r.workspace.id)
        {
            s.conversations.remove(&r.workspace.conversation_id);
        }
        Ok(removed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StateStore for MemoryStore {
    fn put_host<'a>(
        &'a self,
        report: HostReport,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut s = self.lock();
            let draining = s.hosts.get(&report.host_id).is_some_and(|h| h.draining);
            let (trimmed, slot_ids, slots) = split_report(report);
            s.host_slots.insert(trimmed.host_id.clone(), slots);
            s.hosts.insert(
                trimmed.host_id.clone(),
                HostRecord {
                    report: trimmed,
                    last_seen_ms: now_ms,
                    draining,
                    slot_ids,
                },
            );
            Ok(())
        })
    }

    fn remove_host<'a>(
        &'a self,
        host_id: &'a str,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.check(Some(fence))?;
            s.host_slots.remove(host_id);
            Ok(s.hosts.remove(host_id).is_some())
        })
    }

    fn hosts<'a>(&'a self) -> BoxFuture<'a, Result<Vec<HostRecord>, StoreError>> {
        Box::pin(async move { Ok(self.lock().hosts.values().cloned().collect()) })
    }

    fn host_slots<'a>(
        &'a self,
        host_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<berth_wire::SlotInfo>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .host_slots
                .get(host_id)
                .cloned()
                .unwrap_or_default())
        })
    }

    fn set_draining<'a>(
        &'a self,
        host_id: &'a str,
        draining: bool,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .hosts
                .get_mut(host_id)
                .map(|h| h.draining = draining)
                .is_some())
        })
    }

    fn push_warm<'a>(&'a self, slot: WarmSlot) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.lock()
                .pools
                .entry(slot.template.clone())
                .or_default()
                .push_back(slot);
            Ok(())
        })
    }

    fn pool_sizes<'a>(&'a self) -> BoxFuture<'a, Result<BTreeMap<String, usize>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .pools
                .iter()
                .map(|(t, q)| (t.clone(), q.len()))
                .collect())
        })
    }

    fn warm_slots<'a>(&'a self) -> BoxFuture<'a, Result<Vec<WarmSlot>, StoreError>> {
        Box::pin(async move { Ok(self.lock().pools.values().flatten().cloned().collect()) })
    }

    fn take_warm_slot<'a>(
        &'a self,
        slot: &'a WarmSlot,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.check(Some(fence))?;
            let Some(q) = s.pools.get_mut(&slot.template) else {
                return Ok(false);
            };
            let before = q.len();
            q.retain(|w| w.slot_id != slot.slot_id);
            Ok(q.len() < before)
        })
    }

    fn take_warm_on_host<'a>(
        &'a self,
        host_id: &'a str,
        fence: Option<&'a Fence>,
    ) -> BoxFuture<'a, Result<Vec<WarmSlot>, StoreError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.check(fence)?;
            let mut taken = Vec::new();
            for q in s.pools.values_mut() {
                let (gone, keep): (Vec<_>, Vec<_>) =
                    q.drain(..).partition(|w| w.host_id == host_id);
                taken.extend(gone);
                q.extend(keep);
            }
            Ok(taken)
        })
    }

    fn acquire<'a>(
        &'a self,
        candidate: &'a WorkspaceRecord,
        dead_hosts: &'a [String],
    ) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        Box::pin(async move {
            let mut s = self.lock();
            if !s.marked {
                return Ok(Acquired::Rebuilding);
            }
            let conv = &candidate.workspace.conversation_id;
            if let Some(existing) = s
                .conversations
                .get(conv)
                .and_then(|id| s.workspaces.get(id))
            {
                return Ok(Acquired::Existing(Box::new(existing.clone())));
            }
            let slot = s
                .pools
                .get_mut(&candidate.workspace.template)
                .and_then(|q| {
                    let pos = q.iter().position(|w| !dead_hosts.contains(&w.host_id))?;
                    q.remove(pos)
                });
            let id = candidate.workspace.id.clone();
            let mut bound = candidate.clone();
            if let Some(w) = &slot {
                bind_slot(&mut bound, w);
            }
            s.conversations.insert(conv.clone(), id.clone());
            s.workspaces.insert(id, bound);
            Ok(slot.map_or(Acquired::Cold, Acquired::Warm))
        })
    }

    fn put_workspace<'a>(
        &'a self,
        record: &'a WorkspaceRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.lock()
                .workspaces
                .insert(record.workspace.id.clone(), record.clone());
            Ok(())
        })
    }

    fn replace_workspace<'a>(
        &'a self,
        record: &'a WorkspaceRecord,
        expect: WorkspaceStatus,
        fence: Option<&'a Fence>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.check(fence)?;
            match s.workspaces.get_mut(&record.workspace.id) {
                Some(r) if r.status == expect => {
                    *r = record.clone();
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    fn workspace<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>> {
        Box::pin(async move { Ok(self.lock().workspaces.get(id).cloned()) })
    }

    fn workspace_for_conversation<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>> {
        Box::pin(async move {
            let s = self.lock();
            Ok(s.conversations
                .get(conversation_id)
                .and_then(|id| s.workspaces.get(id))
                .cloned())
        })
    }

    fn workspaces<'a>(&'a self) -> BoxFuture<'a, Result<Vec<WorkspaceRecord>, StoreError>> {
        Box::pin(async move { Ok(self.lock().workspaces.values().cloned().collect()) })
    }

    fn remove_workspace<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>> {
        Box::pin(async move { self.remove_if(id, Condition::default(), None) })
    }

    fn remove_workspace_if<'a>(
        &'a self,
        id: &'a str,
        cond: Condition,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>> {
        Box::pin(async move { self.remove_if(id, cond, Some(fence)) })
    }

    fn state_marked<'a>(&'a self) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.lock().marked) })
    }

    fn mark_state<'a>(&'a self, fence: &'a Fence) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.check(Some(fence))?;
            s.marked = true;
            Ok(())
        })
    }

    fn restore_workspace<'a>(
        &'a self,
        record: &'a WorkspaceRecord,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut s = self.lock();
            s.check(Some(fence))?;
            let w = &record.workspace;
            if s.workspaces.contains_key(&w.id) || s.conversations.contains_key(&w.conversation_id)
            {
                return Ok(false);
            }
            s.conversations
                .insert(w.conversation_id.clone(), w.id.clone());
            s.workspaces.insert(w.id.clone(), record.clone());
            Ok(true)
        })
    }

    fn lead<'a>(
        &'a self,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let mut s = self.lock();
            let now = std::time::Instant::now();
            let until = now + std::time::Duration::from_millis(ttl_ms);
            match &mut s.lease {
                Some((holder, epoch, lapses)) if *lapses > now => {
                    if holder != owner {
                        return Ok(None);
                    }
                    *lapses = until;
                    Ok(Some(*epoch))
                }
                _ => {
                    s.epoch += 1;
                    let epoch = s.epoch;
                    s.lease = Some((owner.to_owned(), epoch, until));
                    Ok(Some(epoch))
                }
            }
        })
    }
}

pub mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_passes_the_conformance_suite() {
        let store = Store::new(MemoryStore::unmarked());
        conformance::run_all(&store, &store.clone()).await;
    }
}

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

/// The last report of a host and when it came.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostRecord {
    pub report: HostReport,
    pub last_seen_ms: u64,
    pub draining: bool,
}

/// The outcome of [`Store::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The conversation already has this workspace.
    Existing(WorkspaceRecord),
    /// A warm slot was popped and bound to the new workspace.
    Warm(WarmSlot),
    /// No warm slot: the conversation is bound to the new workspace, which must be
    /// started cold.
    Cold,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The state store: in memory for one process, or Redis for a fleet.
pub enum Store {
    Memory(MemoryStore),
    Redis(crate::redis_store::RedisStore),
}

/// Calls the same method on whichever store this is.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Memory(m) => m.$method($($arg),*),
            Store::Redis(r) => r.$method($($arg),*).await,
        }
    };
}

impl Store {
    pub fn memory() -> Self {
        Store::Memory(MemoryStore::default())
    }

    /// Connects to Redis at `url` (`redis://host:port[/db]`).
    pub async fn redis(url: &str) -> Result<Self, StoreError> {
        Ok(Store::Redis(
            crate::redis_store::RedisStore::connect(url).await?,
        ))
    }

    pub async fn put_host(&self, report: HostReport, now_ms: u64) -> Result<(), StoreError> {
        dispatch!(self.put_host(report, now_ms))
    }

    pub async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        dispatch!(self.hosts())
    }

    /// Marks a host draining; returns false if the host is unknown.
    pub async fn set_draining(&self, host_id: &str, draining: bool) -> Result<bool, StoreError> {
        dispatch!(self.set_draining(host_id, draining))
    }

    pub async fn push_warm(&self, slot: WarmSlot) -> Result<(), StoreError> {
        dispatch!(self.push_warm(slot))
    }

    /// Ready slots per template.
    pub async fn pool_sizes(&self) -> Result<BTreeMap<String, usize>, StoreError> {
        dispatch!(self.pool_sizes())
    }

    /// Every warm slot in every pool (for reconciliation against the runtime).
    pub async fn warm_slots(&self) -> Result<Vec<WarmSlot>, StoreError> {
        dispatch!(self.warm_slots())
    }

    /// Takes one warm slot out of its pool; false if it is no longer there.
    pub async fn take_warm_slot(&self, slot: &WarmSlot) -> Result<bool, StoreError> {
        dispatch!(self.take_warm_slot(slot))
    }

    /// Takes every warm slot on `host_id` out of the pools (its host died or drains).
    pub async fn take_warm_on_host(&self, host_id: &str) -> Result<Vec<WarmSlot>, StoreError> {
        dispatch!(self.take_warm_on_host(host_id))
    }

    /// The atomic acquire step: returns the conversation's workspace if it has one;
    /// otherwise binds the conversation to `candidate` and pops a warm slot of its
    /// template if there is one (skipping slots on `dead_hosts`).
    pub async fn acquire(
        &self,
        candidate: &WorkspaceRecord,
        dead_hosts: &[String],
    ) -> Result<Acquired, StoreError> {
        dispatch!(self.acquire(candidate, dead_hosts))
    }

    pub async fn put_workspace(&self, record: &WorkspaceRecord) -> Result<(), StoreError> {
        dispatch!(self.put_workspace(record))
    }

    pub async fn workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        dispatch!(self.workspace(id))
    }

    pub async fn workspace_for_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<WorkspaceRecord>, StoreError> {
        dispatch!(self.workspace_for_conversation(conversation_id))
    }

    pub async fn workspaces(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        dispatch!(self.workspaces())
    }

    /// Removes a workspace and its conversation binding; returns what was removed.
    pub async fn remove_workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        dispatch!(self.remove_workspace(id))
    }

    /// Takes or renews the reconcilers' lease for `owner`; returns the fencing epoch
    /// while `owner` leads, `None` while another replica does.
    pub async fn lead(&self, owner: &str, ttl_ms: u64) -> Result<Option<u64>, StoreError> {
        dispatch!(self.lead(owner, ttl_ms))
    }
}

// === impl MemoryStore ===

/// State for a single scheduler process (local development, tests). That process is
/// always the leader.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    hosts: BTreeMap<String, HostRecord>,
    pools: BTreeMap<String, VecDeque<WarmSlot>>,
    workspaces: HashMap<String, WorkspaceRecord>,
    conversations: HashMap<String, String>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put_host(&self, report: HostReport, now_ms: u64) -> Result<(), StoreError> {
        let mut s = self.lock();
        let draining = s.hosts.get(&report.host_id).is_some_and(|h| h.draining);
        s.hosts.insert(
            report.host_id.clone(),
            HostRecord {
                report,
                last_seen_ms: now_ms,
                draining,
            },
        );
        Ok(())
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        Ok(self.lock().hosts.values().cloned().collect())
    }

    fn set_draining(&self, host_id: &str, draining: bool) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .hosts
            .get_mut(host_id)
            .map(|h| h.draining = draining)
            .is_some())
    }

    fn push_warm(&self, slot: WarmSlot) -> Result<(), StoreError> {
        self.lock()
            .pools
            .entry(slot.template.clone())
            .or_default()
            .push_back(slot);
        Ok(())
    }

    fn pool_sizes(&self) -> Result<BTreeMap<String, usize>, StoreError> {
        Ok(self
            .lock()
            .pools
            .iter()
            .map(|(t, q)| (t.clone(), q.len()))
            .collect())
    }

    fn warm_slots(&self) -> Result<Vec<WarmSlot>, StoreError> {
        Ok(self.lock().pools.values().flatten().cloned().collect())
    }

    fn take_warm_slot(&self, slot: &WarmSlot) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let Some(q) = s.pools.get_mut(&slot.template) else {
            return Ok(false);
        };
        let before = q.len();
        q.retain(|w| w.slot_id != slot.slot_id);
        Ok(q.len() < before)
    }

    fn take_warm_on_host(&self, host_id: &str) -> Result<Vec<WarmSlot>, StoreError> {
        let mut s = self.lock();
        let mut taken = Vec::new();
        for q in s.pools.values_mut() {
            let (gone, keep): (Vec<_>, Vec<_>) = q.drain(..).partition(|w| w.host_id == host_id);
            taken.extend(gone);
            q.extend(keep);
        }
        Ok(taken)
    }

    fn acquire(
        &self,
        candidate: &WorkspaceRecord,
        dead_hosts: &[String],
    ) -> Result<Acquired, StoreError> {
        let mut s = self.lock();
        let conv = &candidate.workspace.conversation_id;
        if let Some(existing) = s
            .conversations
            .get(conv)
            .and_then(|id| s.workspaces.get(id))
        {
            return Ok(Acquired::Existing(existing.clone()));
        }
        let slot = s
            .pools
            .get_mut(&candidate.workspace.template)
            .and_then(|q| {
                let pos = q.iter().position(|w| !dead_hosts.contains(&w.host_id))?;
                q.remove(pos)
            });
        let id = candidate.workspace.id.clone();
        s.conversations.insert(conv.clone(), id.clone());
        s.workspaces.insert(id, candidate.clone());
        Ok(slot.map_or(Acquired::Cold, Acquired::Warm))
    }

    fn put_workspace(&self, record: &WorkspaceRecord) -> Result<(), StoreError> {
        self.lock()
            .workspaces
            .insert(record.workspace.id.clone(), record.clone());
        Ok(())
    }

    fn workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        Ok(self.lock().workspaces.get(id).cloned())
    }

    fn workspace_for_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<Option<WorkspaceRecord>, StoreError> {
        let s = self.lock();
        Ok(s.conversations
            .get(conversation_id)
            .and_then(|id| s.workspaces.get(id))
            .cloned())
    }

    fn workspaces(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        Ok(self.lock().workspaces.values().cloned().collect())
    }

    fn remove_workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        let mut s = self.lock();
        let removed = s.workspaces.remove(id);
        if let Some(r) = &removed
            && s.conversations.get(&r.workspace.conversation_id) == Some(&r.workspace.id)
        {
            s.conversations.remove(&r.workspace.conversation_id);
        }
        Ok(removed)
    }

    fn lead(&self, _owner: &str, _ttl_ms: u64) -> Result<Option<u64>, StoreError> {
        Ok(Some(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_wire::Source;

    pub(crate) fn record(id: &str, conv: &str) -> WorkspaceRecord {
        WorkspaceRecord {
            workspace: Workspace {
                id: id.into(),
                conversation_id: conv.into(),
                agent_url: String::new(),
                token: "t".repeat(32),
                host_id: String::new(),
                template: "default".into(),
                source: Source::Warm,
                created_at: 0,
                expires_at: 0,
                labels: Default::default(),
                replaced: None,
            },
            slot_id: String::new(),
            status: WorkspaceStatus::Claiming,
            claim_secret: String::new(),
        }
    }

    fn slot(id: &str, host: &str) -> WarmSlot {
        WarmSlot {
            slot_id: id.into(),
            host_id: host.into(),
            template: "default".into(),
            agent_url: format!("http://{id}:9000"),
            claim_secret: String::new(),
        }
    }

    #[tokio::test]
    async fn acquire_pops_a_slot_once_and_binds_the_conversation() {
        let store = Store::memory();
        store.push_warm(slot("s1", "h1")).await.unwrap();
        let got = store.acquire(&record("w1", "c1"), &[]).await.unwrap();
        assert_eq!(got, Acquired::Warm(slot("s1", "h1")));
        // Same conversation again: the same workspace, no second slot.
        store.push_warm(slot("s2", "h1")).await.unwrap();
        match store.acquire(&record("w2", "c1"), &[]).await.unwrap() {
            Acquired::Existing(r) => {
                assert_eq!(r.workspace.id, "w1");
            }
            other => panic!("expected Existing, got {other:?}"),
        }
        assert_eq!(store.pool_sizes().await.unwrap()["default"], 1);
    }

    #[tokio::test]
    async fn acquire_skips_slots_on_dead_hosts_and_falls_back_to_cold() {
        let store = Store::memory();
        store.push_warm(slot("s1", "dead")).await.unwrap();
        let got = store
            .acquire(&record("w1", "c1"), &["dead".to_owned()])
            .await
            .unwrap();
        assert_eq!(got, Acquired::Cold);
        assert!(
            store
                .workspace_for_conversation("c1")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(store.take_warm_on_host("dead").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_acquires_never_share_a_slot() {
        let store = std::sync::Arc::new(Store::memory());
        for i in 0..50 {
            store.push_warm(slot(&format!("s{i}"), "h")).await.unwrap();
        }
        let mut tasks = Vec::new();
        for i in 0..100 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .acquire(&record(&format!("w{i}"), &format!("c{i}")), &[])
                    .await
                    .unwrap()
            }));
        }
        let mut seen = std::collections::HashSet::new();
        let mut cold = 0;
        for t in tasks {
            match t.await.unwrap() {
                Acquired::Warm(s) => assert!(seen.insert(s.slot_id), "slot handed out twice"),
                Acquired::Cold => cold += 1,
                Acquired::Existing(_) => panic!("distinct conversations"),
            }
        }
        assert_eq!((seen.len(), cold), (50, 50));
    }

    #[tokio::test]
    async fn remove_unbinds_the_conversation() {
        let store = Store::memory();
        store.acquire(&record("w1", "c1"), &[]).await.unwrap();
        assert!(store.remove_workspace("w1").await.unwrap().is_some());
        assert!(
            store
                .workspace_for_conversation("c1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.remove_workspace("w1").await.unwrap().is_none());
    }
}

//! Rebuilding the state after the store lost it.
//!
//! Background: Redis can lose everything (a `FLUSHALL`, a failover to a replica that
//! had not synced). The workspaces keep running on their hosts, and the backend
//! keeps using them; what is gone is the scheduler's memory of them. Handing out
//! slots from that empty memory would give a claimed slot to a second conversation.
//! So the store carries a marker ([`crate::store::StateStore::state_marked`]); while
//! it is missing, acquires bind nothing and creates answer the retryable
//! `503 state_rebuilding`. The leader notices the missing marker on its next pass,
//! waits one heartbeat TTL (every live host reports again meanwhile), then asks each
//! live host's hostd for the claims it holds (`GET /v1/inventory`) and puts back
//! every binding: same workspace id, token and conversation, so a repeated create
//! answers the workspace the backend already uses. Warm slots nobody claimed are
//! stopped, since their claim secret lived only in the lost state (hostd does not
//! keep it), and the pools refill. Then the leader sets the marker.
//!
//! A fresh store (the first start of a fleet) goes the same way, with nothing to
//! find. Keepalives sent to hostd are not: a restored workspace expires at the later
//! of its claim-time expiry and one default TTL from the rebuild.

use super::*;

/// What one rebuild found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rebuilt {
    pub restored: usize,
    pub stopped: usize,
}

impl Scheduler {
    /// Whether the state is whole (marked). If not, rebuilds it once the hosts had a
    /// heartbeat TTL to report, and marks it; `false` while that is still to come.
    pub(crate) async fn ensure_state(&self, fence: &Fence) -> Result<bool, StoreError> {
        if self.inner.store.state_marked().await? {
            *self.lost_since() = None;
            return Ok(true);
        }
        let since = {
            let mut lost = self.lost_since();
            if lost.is_none() {
                tracing::warn!(
                    wait_s = self.inner.config.host_ttl.as_secs_f32(),
                    "the state store has no state marker (fresh, or it lost its data): creates \
                     answer 503 state_rebuilding until the state is rebuilt from the hosts"
                );
            }
            *lost.get_or_insert_with(std::time::Instant::now)
        };
        if since.elapsed() < self.inner.config.host_ttl {
            return Ok(false);
        }
        match self.rebuild(fence).await {
            Ok(found) => {
                self.inner.store.mark_state(fence).await?;
                *self.lost_since() = None;
                self.inner
                    .counters
                    .state_rebuilds
                    .fetch_add(1, Ordering::Relaxed);
                self.event(
                    "state_rebuilt",
                    &self.inner.replica_id,
                    format!(
                        "{} bindings restored from the hosts, {} unclaimable slots stopped",
                        found.restored, found.stopped
                    ),
                );
                tracing::warn!(
                    restored = found.restored,
                    stopped = found.stopped,
                    took_ms = since.elapsed().as_millis() as u64,
                    "state rebuilt from the hosts' inventories; creates served again"
                );
                Ok(true)
            }
            Err(RebuildError::Store(e)) => Err(e),
            Err(RebuildError::Host { host_id, reason }) => {
                tracing::warn!(%host_id, %reason, "rebuild waits: a live host's inventory is unreadable");
                Ok(false)
            }
        }
    }

    fn lost_since(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.inner
            .lost_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Puts back every binding the live hosts hold and stops every unclaimed slot
    /// no pool knows. Every live host must answer (a host that cannot is retried on
    /// the next pass; nothing is marked meanwhile).
    async fn rebuild(&self, fence: &Fence) -> Result<Rebuilt, RebuildError> {
        let now = now_ms();
        let hosts: Vec<HostRecord> = self
            .inner
            .store
            .hosts()
            .await?
            .into_iter()
            .filter(|h| self.alive(h, now))
            .collect();
        let mut inventories = Vec::new();
        for h in &hosts {
            let claims = self
                .inner
                .clients
                .held_claims(&h.report.hostd_url, &h.report.host_id)
                .await
                .map_err(|e| RebuildError::Host {
                    host_id: h.report.host_id.clone(),
                    reason: e.to_string(),
                })?;
            inventories.push((h, claims));
        }
        let pooled = self.pooled_slot_ids().await?;
        let mut found = Rebuilt::default();
        for (host, claims) in inventories {
            let report = &host.report;
            for slot in &self.inner.store.host_slots(&report.host_id).await? {
                let claim = claims.iter().find(|c| c.slot_id == slot.slot_id);
                match claim.and_then(|c| restored_record(c, slot, &self.inner.config)) {
                    Some(record) => {
                        if self.inner.store.restore_workspace(&record, fence).await? {
                            found.restored += 1;
                            tracing::info!(workspace_id = %record.workspace.id,
                                conversation_id = %record.workspace.conversation_id,
                                slot_id = %slot.slot_id, host_id = %report.host_id, "binding restored");
                        }
                    }
                    None if pooled.contains(&slot.slot_id) => {}
                    None => {
                        // Unclaimed (or claimed without a binding to restore): no
                        // state can hand it out again.
                        self.discard_slot(
                            &report.host_id,
                            &slot.slot_id,
                            "its state was lost; not claimable",
                        )
                        .await;
                        found.stopped += 1;
                    }
                }
            }
        }
        Ok(found)
    }
}

enum RebuildError {
    Store(StoreError),
    Host { host_id: String, reason: String },
}

impl From<StoreError> for RebuildError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// The record of a workspace found claimed on a host, if its claim says enough.
pub(crate) fn restored_record(
    claim: &berth_wire::HeldClaim,
    slot: &SlotInfo,
    config: &Config,
) -> Option<WorkspaceRecord> {
    let b = claim.binding.as_ref()?;
    let floor = now_ms() / 1000 + config.default_ttl_seconds;
    Some(WorkspaceRecord {
        workspace: Workspace {
            id: claim.workspace_id.clone(),
            conversation_id: b.conversation_id.clone(),
            agent_url: slot.agent_url.clone(),
            token: claim.token.clone(),
            host_id: slot.host_id.clone(),
            template: b.template.clone(),
            source: b.source,
            created_at: b.created_at,
            expires_at: b.expires_at.max(floor),
            labels: b.labels.clone(),
            replaced: None,
            restored_from: None,
            restore_error: None,
            state: berth_wire::WorkspaceState::Ready,
        },
        slot_id: slot.slot_id.clone(),
        status: WorkspaceStatus::Ready,
        claim_secret: claim.claim_secret.clone().unwrap_or_default(),
    })
}

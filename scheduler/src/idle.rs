//! The idle reaper: releases workspaces nobody uses, and never one that works.
//!
//! Background: a timer that only API calls touch kills a twenty-minute build, so
//! idleness is read from the workspace itself. A workspace is idle when its agent
//! has no attached stream, no running command and no process besides itself, and
//! its proxy has no open tunnel, and neither the agent's last authenticated request
//! nor the proxy's last egress is newer than the idle timeout. The agent's open
//! `/health` and hostd's egress view (from the proxy's admin channel) tell; if
//! either cannot be read, the workspace is not idle (a failed look kills nothing).
//! The removal is conditional on the record the pass read, so a `keepalive` landing
//! meanwhile keeps the workspace.

use super::*;

/// Workspaces looked at concurrently in one pass.
const LOOKS_AT_ONCE: usize = 16;

/// What one look at a workspace found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idleness {
    /// Something runs or is attached now.
    Busy,
    /// Nothing runs; the latest activity was at this unix ms.
    QuietSince(u64),
}

/// Reads the agent's and the proxy's activity into [`Idleness`].
pub(crate) fn idleness(
    created_ms: u64,
    agent: &berth_wire::Activity,
    egress: &berth_wire::EgressView,
) -> Idleness {
    if agent.attached_streams > 0
        || agent.running_commands > 0
        || agent.processes > 0
        || egress.open_tunnels > 0
    {
        return Idleness::Busy;
    }
    Idleness::QuietSince(
        created_ms
            .max(agent.last_request_ms.unwrap_or(0))
            .max(egress.last_egress_ms.unwrap_or(0)),
    )
}

impl Scheduler {
    /// A template's idle timeout (zero: never reaped for idleness).
    pub(crate) fn idle_timeout(&self, template: &str) -> Duration {
        self.inner
            .config
            .templates
            .policy(template)
            .idle_timeout_seconds
            .map_or(self.inner.config.idle_timeout, Duration::from_secs)
    }

    /// One pass: every ready workspace quiet for its template's idle timeout (as far
    /// as this leader knows) is looked at, and released if the look confirms it.
    pub(crate) async fn reap_idle(
        &self,
        fence: &Fence,
        records: &[WorkspaceRecord],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let candidates: Vec<WorkspaceRecord> = {
            let mut seen = self
                .inner
                .active_at
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let ids: std::collections::HashSet<&str> =
                records.iter().map(|r| r.workspace.id.as_str()).collect();
            seen.retain(|id, _| ids.contains(id.as_str()));
            records
                .iter()
                .filter(|r| r.status == WorkspaceStatus::Ready)
                .filter(|r| {
                    let timeout = ms(self.idle_timeout(&r.workspace.template));
                    let known = seen
                        .get(&r.workspace.id)
                        .copied()
                        .unwrap_or(0)
                        .max(r.workspace.created_at * 1000);
                    timeout > 0 && now.saturating_sub(known) >= timeout
                })
                .cloned()
                .collect()
        };
        // Looked at LOOKS_AT_ONCE at a time: an agent that does not answer costs its
        // timeout, not the whole pass's.
        use futures_util::StreamExt;
        let looked: Vec<(WorkspaceRecord, Option<Idleness>)> =
            futures_util::stream::iter(candidates)
                .map(|r| {
                    let me = self.clone();
                    async move {
                        let seen = me.look(&r).await;
                        (r, seen)
                    }
                })
                .buffer_unordered(LOOKS_AT_ONCE)
                .collect()
                .await;
        for (r, seen) in &looked {
            let timeout = ms(self.idle_timeout(&r.workspace.template));
            let last = match seen {
                Some(Idleness::Busy) | None => now,
                Some(Idleness::QuietSince(t)) => *t,
            };
            self.inner
                .active_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(r.workspace.id.clone(), last);
            if now.saturating_sub(last) < timeout {
                continue;
            }
            let note = format!("idle for {} s", now.saturating_sub(last) / 1000);
            self.reap(r, fence, crate::reconcile::Reap::Idle, note)
                .await?;
        }
        Ok(())
    }

    /// Looks at one workspace: its agent's activity (the agent must say it serves
    /// this workspace) and its proxy's egress. `None` when either cannot be read.
    async fn look(&self, r: &WorkspaceRecord) -> Option<Idleness> {
        let w = &r.workspace;
        let health = match self.inner.clients.agent_health(&w.agent_url).await {
            Ok(h) if h.workspace_id.as_deref() == Some(w.id.as_str()) => h,
            Ok(h) => {
                tracing::warn!(workspace_id = %w.id, serving = ?h.workspace_id,
                    "idle check: the agent serves another workspace; not reaping");
                return None;
            }
            Err(e) => {
                tracing::debug!(workspace_id = %w.id, error = %e, "idle check: agent unreadable");
                return None;
            }
        };
        let hostd = self
            .hosts_now()
            .await
            .ok()?
            .iter()
            .find(|h| h.report.host_id == w.host_id)
            .map(|h| h.report.hostd_url.clone())?;
        let egress = match self
            .inner
            .clients
            .slot_egress(&hostd, &w.host_id, &r.slot_id, &r.claim_secret, None)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(workspace_id = %w.id, error = %e, "idle check: proxy activity unreadable");
                return None;
            }
        };
        Some(idleness(w.created_at * 1000, &health.activity, &egress))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_wire::{Activity, EgressView};

    #[test]
    fn anything_running_or_attached_is_busy_and_the_latest_sign_of_life_counts() {
        let quiet = Activity::default();
        let none = EgressView::default();
        assert_eq!(idleness(1_000, &quiet, &none), Idleness::QuietSince(1_000));
        for busy in [
            Activity {
                attached_streams: 1,
                ..quiet
            },
            Activity {
                running_commands: 1,
                ..quiet
            },
            Activity {
                processes: 1,
                ..quiet
            },
        ] {
            assert_eq!(idleness(1_000, &busy, &none), Idleness::Busy);
        }
        let tunnel = EgressView {
            open_tunnels: 1,
            ..EgressView::default()
        };
        assert_eq!(idleness(1_000, &quiet, &tunnel), Idleness::Busy);
        let requested = Activity {
            last_request_ms: Some(5_000),
            ..quiet
        };
        let egressed = EgressView {
            last_egress_ms: Some(9_000),
            ..EgressView::default()
        };
        assert_eq!(
            idleness(1_000, &requested, &egressed),
            Idleness::QuietSince(9_000)
        );
        assert_eq!(
            idleness(1_000, &requested, &none),
            Idleness::QuietSince(5_000)
        );
    }
}

//! Leadership: one replica at a time runs the reconcilers, holding a lease in the
//! state store with a fencing epoch; a leader that stops renewing it is replaced
//! within [`LEADER_LEASE`].

use super::*;

impl Scheduler {
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
                let epoch = me.reconcile().await;
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
            }
        });
    }
}

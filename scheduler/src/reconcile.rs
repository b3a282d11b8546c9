//! The reconcilers the leader runs every pass: host death, expiry, pool refill and
//! shrink (scaling out through the runtime when the fleet is full), and orphans.

use super::*;

/// Why a reaper releases a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reap {
    /// No stream, process or egress for the idle timeout.
    Idle,
    /// Past its `expires_at`.
    Expired,
}

impl Reap {
    fn why(self) -> &'static str {
        match self {
            Reap::Idle => "idle",
            Reap::Expired => "expired",
        }
    }

    /// The checkpoint the template takes before this release, if any.
    fn checkpoint(
        self,
        policy: &templates::CheckpointPolicy,
    ) -> Option<berth_wire::checkpoint::CheckpointReason> {
        use berth_wire::checkpoint::CheckpointReason as R;
        match self {
            Reap::Idle => policy.before_idle_reap.then_some(R::Idle),
            Reap::Expired => policy.on_expiry.then_some(R::Expiry),
        }
    }
}

impl Scheduler {
    /// Takes or renews the leader lease and, while this replica holds it, runs one
    /// pass of every reconciler, each write fenced by the lease's epoch. Returns the
    /// epoch, or `None` while another replica leads. The leader loop calls this on
    /// a timer.
    pub async fn reconcile(&self) -> Option<u64> {
        let epoch = match self
            .inner
            .store
            .lead(&self.inner.replica_id, ms(LEADER_LEASE))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader lease");
                None
            }
        };
        self.inner
            .leading
            .store(epoch.unwrap_or(0), Ordering::Relaxed);
        let epoch = epoch?;
        let fence = Fence {
            owner: self.inner.replica_id.clone(),
            epoch,
        };
        self.reconcile_as(&fence).await;
        Some(epoch)
    }

    /// One pass of every reconciler under `fence`. While the state is being rebuilt
    /// nothing else runs (a refill now could race the rebuild's view of the slots).
    pub(crate) async fn reconcile_as(&self, fence: &Fence) {
        match self.ensure_state(fence).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                self.note("rebuild", Err(e));
                return;
            }
        }
        if self.sweep_due() {
            // The passes over every workspace share one read of them, every
            // SWEEP_EVERY (reading a large table each 500 ms would stall Redis and
            // every acquire behind it).
            match self.inner.store.workspaces().await {
                Ok(records) => {
                    self.note("host-death", self.reap_dead_hosts(fence, &records).await);
                    self.note("expiry", self.reap_expired(fence, &records).await);
                    self.note("idle", self.reap_idle(fence, &records).await);
                    self.note(
                        "claim recovery",
                        self.recover_claiming(fence, &records).await,
                    );
                }
                Err(e) => self.note("sweep", Err(e)),
            }
        }
        self.note("refill", self.refill(fence).await);
        if let Err(e) = self.reap_orphans().await {
            tracing::warn!(error = %e, "orphan pass failed");
        }
    }

    /// Whether the passes over every workspace are due (every [`SWEEP_EVERY`]).
    fn sweep_due(&self) -> bool {
        let mut last = self
            .inner
            .last_sweep
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }

    /// Makes the next pass sweep every workspace, due or not (tests).
    #[cfg(test)]
    pub(crate) fn sweep_soon(&self) {
        *self
            .inner
            .last_sweep
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Logs a failed pass; a write the store fenced off is counted (this replica
    /// lost the lease mid-pass and the next pass will follow).
    fn note(&self, pass: &str, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {}
            Err(e @ StoreError::Fenced { .. }) => {
                self.inner
                    .counters
                    .fenced_writes
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, pass, "leader write refused: the lease moved on");
            }
            Err(e) => tracing::warn!(error = %e, pass, "reconciler pass failed"),
        }
    }

    /// Bindings left `Claiming` past [`Config::claim_recovery`] (their replica died
    /// mid-claim): each is removed — only if still `Claiming`, so a slow claim that
    /// just finished is kept — and its slot, which the binding names, is stopped. The
    /// conversation's next create is served afresh.
    pub(crate) async fn recover_claiming(
        &self,
        fence: &Fence,
        records: &[WorkspaceRecord],
    ) -> Result<(), StoreError> {
        let now = now_ms() / 1000;
        let bound = self.inner.config.claim_recovery.as_secs();
        for r in records {
            if r.status != WorkspaceStatus::Claiming
                || now.saturating_sub(r.workspace.created_at) < bound
            {
                continue;
            }
            let Some(gone) = self
                .inner
                .store
                .remove_workspace_if(
                    &r.workspace.id,
                    Condition::status(WorkspaceStatus::Claiming),
                    fence,
                )
                .await?
            else {
                continue;
            };
            self.inner
                .counters
                .claims_recovered
                .fetch_add(1, Ordering::Relaxed);
            self.event(
                "claim_recovered",
                &gone.workspace.id,
                format!(
                    "binding left Claiming (its replica died mid-claim); slot {} stopped",
                    gone.slot_id
                ),
            );
            tracing::warn!(workspace_id = %gone.workspace.id, conversation_id = %gone.workspace.conversation_id,
                slot_id = %gone.slot_id, age_s = now.saturating_sub(gone.workspace.created_at),
                "binding stuck in Claiming (its replica died mid-claim); removed");
            if !gone.slot_id.is_empty() {
                self.discard_slot(
                    &gone.workspace.host_id,
                    &gone.slot_id,
                    "claim never finished",
                )
                .await;
            }
        }
        Ok(())
    }

    /// Stops slots the runtime runs on live hosts that no state knows (neither a
    /// warm pool nor a workspace), once they have been unknown for the orphan grace
    /// period: a replica that died between RunTask and recording the slot, a
    /// release whose stop failed. Listing is paced to once per grace/4.
    pub(crate) async fn reap_orphans(&self) -> Result<(), ApiError> {
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
        let mut known = self.pooled_slot_ids().await?;
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
            self.event(
                "orphan_stopped",
                &r.slot_id,
                format!("running on {}, known to no state", r.host_id),
            );
            self.discard_slot(&r.host_id, &r.slot_id, "orphan: known to no state")
                .await;
            self.inner
                .counters
                .orphans_stopped
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A host whose heartbeats stopped: its warm slots leave the pools and its
    /// workspaces are marked `lost` (shown so by `GET /v1/workspaces/{id}`; the
    /// conversation's next create replaces them). A host silent past
    /// [`Config::host_retention`] is forgotten.
    pub(crate) async fn reap_dead_hosts(
        &self,
        fence: &Fence,
        records: &[WorkspaceRecord],
    ) -> Result<(), StoreError> {
        let hosts = self.inner.store.hosts().await?;
        let dead = self.dead_among(&hosts);
        if dead.is_empty() {
            return Ok(());
        }
        for host in &dead {
            let gone = self
                .inner
                .store
                .take_warm_on_host(host, Some(fence))
                .await?;
            if !gone.is_empty() {
                tracing::warn!(host_id = %host, slots = gone.len(), "host heartbeat expired; its warm slots left the pools");
            }
        }
        for r in records {
            if r.status != WorkspaceStatus::Ready || !dead.contains(&r.workspace.host_id) {
                continue;
            }
            let mut r = r.clone();
            r.status = WorkspaceStatus::Lost;
            r.workspace.state = berth_wire::WorkspaceState::Lost;
            if self
                .inner
                .store
                .replace_workspace(&r, WorkspaceStatus::Ready, Some(fence))
                .await?
            {
                self.inner
                    .counters
                    .workspaces_lost
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(workspace_id = %r.workspace.id, host_id = %r.workspace.host_id,
                    conversation_id = %r.workspace.conversation_id, "workspace lost with its host");
                self.event(
                    "workspace_lost",
                    &r.workspace.id,
                    format!("host {} stopped reporting", r.workspace.host_id),
                );
            }
        }
        let now = now_ms();
        let retention = ms(self.inner.config.host_retention);
        for h in &hosts {
            if dead.contains(&h.report.host_id)
                && now.saturating_sub(h.last_seen_ms) > retention
                && self
                    .inner
                    .store
                    .remove_host(&h.report.host_id, fence)
                    .await?
            {
                self.inner
                    .counters
                    .hosts_forgotten
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(host_id = %h.report.host_id, "host silent past its retention; forgotten");
                self.event(
                    "host_forgotten",
                    &h.report.host_id,
                    "silent past its retention".to_owned(),
                );
            }
        }
        Ok(())
    }

    /// Releases workspaces past their `expires_at`. The removal is conditional on
    /// the expiry the pass read: a `keepalive` that lands meanwhile wins.
    pub(crate) async fn reap_expired(
        &self,
        fence: &Fence,
        records: &[WorkspaceRecord],
    ) -> Result<(), StoreError> {
        let now = now_ms() / 1000;
        for r in records {
            if r.status != WorkspaceStatus::Ready || r.workspace.expires_at > now {
                continue;
            }
            self.reap(r, fence, Reap::Expired, "past its expires_at".to_owned())
                .await?;
        }
        Ok(())
    }

    /// A reaper's release of `r` (`note` says why, on the fleet page). When the
    /// template checkpoints first, the checkpoint and then the release run in a task
    /// of their own, one per workspace at a time: a large workspace takes seconds,
    /// which the leader's other passes (host death, refill) must not wait for. An
    /// idle workspace whose checkpoint fails stays (the next pass tries again); one
    /// past its lifetime goes anyway.
    pub(crate) async fn reap(
        &self,
        r: &WorkspaceRecord,
        fence: &Fence,
        kind: Reap,
        note: String,
    ) -> Result<(), StoreError> {
        let reason = self
            .checkpoint_policy(&r.workspace.template)
            .and_then(|p| kind.checkpoint(&p));
        let Some(reason) = reason else {
            return self.release_reaped(r, fence, kind, note).await;
        };
        let first = self
            .inner
            .reaping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.workspace.id.clone());
        if !first {
            return Ok(());
        }
        let (me, r, fence) = (self.clone(), r.clone(), fence.clone());
        tokio::spawn(async move {
            let checkpointed = me.checkpoint_record(&r, reason).await;
            if let Err(e) = &checkpointed {
                tracing::warn!(workspace_id = %r.workspace.id, error = %e, why = kind.why(),
                    "checkpoint before reaping failed");
            }
            if (checkpointed.is_ok() || kind == Reap::Expired)
                && let Err(e) = me.release_reaped(&r, &fence, kind, note).await
            {
                tracing::warn!(workspace_id = %r.workspace.id, error = %e, "reaping failed");
            }
            me.inner
                .reaping
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&r.workspace.id);
        });
        Ok(())
    }

    /// Removes `r` only if it is still `Ready` and was not kept alive since it was
    /// read (a `keepalive` that landed meanwhile wins), counts it, stops its slot.
    async fn release_reaped(
        &self,
        r: &WorkspaceRecord,
        fence: &Fence,
        kind: Reap,
        note: String,
    ) -> Result<(), StoreError> {
        let Some(gone) = self
            .inner
            .store
            .remove_workspace_if(&r.workspace.id, Condition::unchanged_ready(r), fence)
            .await?
        else {
            return Ok(());
        };
        let counter = match kind {
            Reap::Idle => &self.inner.counters.idle_reaped,
            Reap::Expired => &self.inner.counters.reaped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !gone.slot_id.is_empty() {
            self.discard_slot(&gone.workspace.host_id, &gone.slot_id, kind.why())
                .await;
        }
        tracing::info!(workspace_id = %gone.workspace.id, conversation_id = %gone.workspace.conversation_id,
            why = kind.why(), %note, "workspace reaped");
        let event = match kind {
            Reap::Idle => "idle_reaped",
            Reap::Expired => "expired",
        };
        self.event(event, &gone.workspace.id, note);
        Ok(())
    }

    /// The ids of every slot in a warm pool.
    pub(crate) async fn pooled_slot_ids(
        &self,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        Ok(self
            .inner
            .store
            .warm_slots()
            .await?
            .into_iter()
            .map(|w| w.slot_id)
            .collect())
    }

    /// Starts slots for every pool below its target, in batches of up to
    /// [`REFILL_BATCH`] (one RunTask call on ECS), at most `refill_parallelism` slots
    /// in flight per pool.
    pub(crate) async fn refill(&self, fence: &Fence) -> Result<(), StoreError> {
        let sizes = self.inner.store.pool_sizes().await?;
        for (template, target) in self.pool_targets() {
            let template = &template;
            let ready = sizes.get(template).copied().unwrap_or(0);
            let in_flight = self.refilling(template);
            if ready > target {
                self.shrink(template, ready - target, fence).await?;
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
                            Err(e) => {
                                me.event("slot_start_failed", &template, format!("refill: {e}"));
                                tracing::warn!(%template, error = %e, "refill failed")
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
            }
        }
        Ok(())
    }

    /// Puts a started slot into its pool; one that cannot be recorded is discarded
    /// (no state would know it).
    pub(crate) async fn record_warm(&self, slot: WarmSlot) {
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
    pub(crate) async fn shrink(
        &self,
        template: &str,
        excess: usize,
        fence: &Fence,
    ) -> Result<(), StoreError> {
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
            if self.inner.store.take_warm_slot(&w, fence).await? {
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
    pub(crate) async fn fleet_room(&self) -> usize {
        let per_slot = self.inner.config.slot_memory_mib.max(1);
        match self.read_hosts().await.map(|h| self.views_of(&h)) {
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
    pub(crate) fn scale_out(&self, template: &str, n: usize) -> bool {
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

    pub(crate) fn refilling(&self, template: &str) -> usize {
        self.inner
            .refilling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(template)
            .copied()
            .unwrap_or(0)
    }
}

//! The service the backend calls: acquire (warm, else cold; idempotent per
//! conversation), release, keepalive, and a running workspace's egress. Each call
//! is checked first ([`crate::validate`]); claims go through the slot's hostd.

use berth_wire::OnRestoreError;

use super::*;

impl Scheduler {
    /// Hands out the conversation's workspace: the one it has while that lives, else
    /// a warm slot, else a cold one. See `POST /v1/workspaces`.
    pub async fn acquire(&self, req: CreateWorkspace) -> Result<Workspace, ApiError> {
        let started = std::time::Instant::now();
        let result = self.acquire_timed(req).await;
        let outcome = match &result {
            Ok((_, o)) => *o,
            Err(_) => metrics::Outcome::Error,
        };
        self.inner
            .acquire_histogram
            .record(outcome, started.elapsed());
        result.map(|(w, _)| w)
    }

    async fn acquire_timed(
        &self,
        req: CreateWorkspace,
    ) -> Result<(Workspace, metrics::Outcome), ApiError> {
        let template = req.template.clone().unwrap_or_else(|| "default".into());
        validate::create(&req, &template, &self.inner.config)?;
        let ttl = req
            .ttl_seconds
            .unwrap_or(self.inner.config.default_ttl_seconds);
        let mut replaced = None;
        let deadline = tokio::time::Instant::now() + self.inner.config.acquire_deadline;
        let mut warm_failures = 0;
        // `None`: not looked up yet; `Some(None)`: nothing to restore.
        let mut restore_lookup: Option<Option<berth_wire::checkpoint::RestoreSpec>> = None;
        let mut restore_error: Option<berth_wire::ErrorDetail> = None;
        let on_restore_error = req.on_restore_error.unwrap_or_default();
        loop {
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::NoCapacity);
            }
            // One read of the fleet per attempt: whether the conversation's host lives,
            // and which hosts' warm slots must not be handed out.
            let hosts = self.hosts_now().await?;
            let dead = self.dead_among(&hosts);
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
                    state: Default::default(),
                    restored_from: None,
                    restore_error: None,
                },
                slot_id: String::new(),
                status: WorkspaceStatus::Claiming,
                claim_secret: String::new(),
            };
            let (slot, source) = match self.inner.store.acquire(&candidate, &dead).await? {
                // The conversation has a workspace (the acquire step checks first,
                // atomically: one round trip for the common repeat).
                Acquired::Existing(existing) => {
                    let host = &existing.workspace.host_id;
                    let host_lives = hosts
                        .iter()
                        .any(|h| &h.report.host_id == host && !dead.contains(host));
                    if existing.status == WorkspaceStatus::Lost || (!host.is_empty() && !host_lives)
                    {
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
                        self.event(
                            "replaced",
                            &existing.workspace.id,
                            format!(
                                "lost with host {}; conversation {} gets a new workspace",
                                existing.workspace.host_id, req.conversation_id
                            ),
                        );
                        replaced = Some(existing.workspace.id);
                        continue;
                    }
                    if existing.status == WorkspaceStatus::Claiming {
                        // Another request for this conversation is binding it right now.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    return Ok((existing.workspace, metrics::Outcome::Existing));
                }
                Acquired::Rebuilding => return Err(ApiError::Rebuilding),
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
                Acquired::Cold => match self.start_cold(&template, deadline).await {
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
            if source == Source::Cold
                && !self
                    .inner
                    .store
                    .replace_workspace(&record, WorkspaceStatus::Claiming, None)
                    .await?
            {
                // The binding was recovered while the slot started: not ours now.
                self.discard_slot(&slot.host_id, &slot.slot_id, "binding recovered meanwhile")
                    .await;
                continue;
            }
            // The conversation's latest checkpoint goes into its new workspace
            // (looked up once per create, and only for a new workspace).
            if restore_lookup.is_none() {
                restore_lookup = Some(match self.restore_for(&req, &template).await {
                    Ok(spec) => spec,
                    Err(e) if on_restore_error == OnRestoreError::Empty => {
                        restore_error = Some(e.body().error);
                        None
                    }
                    Err(e) => {
                        self.unbind(&record, "checkpoint lookup failed").await?;
                        return Err(e);
                    }
                });
            }
            let restore = restore_lookup.clone().flatten();
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
                restore: restore.clone(),
                binding: Some(berth_wire::ClaimBinding {
                    conversation_id: record.workspace.conversation_id.clone(),
                    template: record.workspace.template.clone(),
                    source,
                    created_at: record.workspace.created_at,
                    expires_at: record.workspace.expires_at,
                    labels: record.workspace.labels.clone(),
                }),
            };
            let mut hostd_url = hosts
                .iter()
                .find(|h| h.report.host_id == slot.host_id)
                .map(|h| h.report.hostd_url.clone());
            if hostd_url.is_none() {
                // A host newer than the shared read (it joined within the last
                // moments): read again rather than lose its slot.
                hostd_url = self.hostd_url(&slot.host_id).await?;
            }
            let hostd_url = hostd_url.unwrap_or_default();
            // A restore gets a second deadline's worth of time (the claim recovery
            // bound is checked against both at start).
            let claim_deadline = match restore {
                Some(_) => deadline + self.inner.config.acquire_deadline,
                None => deadline,
            };
            let claimed = match tokio::time::timeout_at(
                claim_deadline,
                self.inner
                    .clients
                    .claim_slot(&hostd_url, &slot.host_id, &slot.slot_id, &claim),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(clients::CallError::Refused {
                    what: "hostd",
                    url: hostd_url.clone(),
                    status: 504,
                    code: "timeout".into(),
                    message: "the claim did not finish within the acquire deadline".into(),
                }),
            };
            let claimed = match (claimed, &restore) {
                // The restore failed, not the slot: the create fails with the
                // restore's code, or goes on with an empty workspace if it may.
                (Err(e), Some(spec)) if e.code().is_some_and(checkpoints::is_restore_failure) => {
                    let e = checkpoints::checkpoint_error(e);
                    tracing::warn!(workspace_id = %record.workspace.id, checkpoint = %spec.manifest.id,
                        error = %e, "restore failed; the slot is discarded");
                    self.inner
                        .counters
                        .restores_failed
                        .fetch_add(1, Ordering::Relaxed);
                    self.event(
                        "restore_failed",
                        &record.workspace.id,
                        format!("{} of {}: {e}", spec.manifest.id, req.conversation_id),
                    );
                    self.unbind(&record, "restore failed").await?;
                    if on_restore_error == OnRestoreError::Empty {
                        restore_error = Some(e.body().error);
                        restore_lookup = Some(None);
                        continue;
                    }
                    return Err(e);
                }
                (other, _) => other.map_err(|e| e.to_string()),
            };
            if let Err(e) = claimed {
                tracing::warn!(slot_id = %slot.slot_id, error = %e, "claim failed; discarding slot");
                self.event(
                    "acquire_failed",
                    &slot.slot_id,
                    format!("claim on {} failed: {e}", slot.host_id),
                );
                self.unbind(&record, "claim failed").await?;
                warm_failures += 1;
                if tokio::time::Instant::now() >= deadline {
                    self.inner
                        .counters
                        .acquire_failed
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::NoCapacity);
                }
                if warm_failures >= 3 {
                    self.inner
                        .counters
                        .acquire_failed
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::Runtime(e));
                }
                continue;
            }
            record.status = WorkspaceStatus::Ready;
            record.workspace.restored_from = restore.as_ref().map(|r| r.manifest.id.clone());
            record.workspace.restore_error = restore_error.clone();
            // Only a binding still Claiming becomes Ready: if the recovery pass took
            // it (this replica looked dead), the slot is discarded and we start over.
            if !self
                .inner
                .store
                .replace_workspace(&record, WorkspaceStatus::Claiming, None)
                .await?
            {
                tracing::warn!(workspace_id = %record.workspace.id, "binding recovered while claiming; starting over");
                self.discard_slot(&slot.host_id, &slot.slot_id, "binding recovered meanwhile")
                    .await;
                continue;
            }
            let counter = match source {
                Source::Warm => &self.inner.counters.acquired_warm,
                Source::Cold => &self.inner.counters.acquired_cold,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.event(
                "placed",
                &record.workspace.id,
                format!(
                    "{} slot on {} for conversation {}{}",
                    match source {
                        Source::Warm => "warm",
                        Source::Cold => "cold",
                    },
                    slot.host_id,
                    req.conversation_id,
                    match &record.workspace.restored_from {
                        Some(id) => format!(", restored from {id}"),
                        None => String::new(),
                    }
                ),
            );
            if record.workspace.restored_from.is_some() {
                self.inner.counters.restores.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(workspace_id = %record.workspace.id, conversation_id = %req.conversation_id,
                host_id = %slot.host_id, source = ?source, restored_from = ?record.workspace.restored_from,
                "workspace handed out");
            return Ok((record.workspace, source.into()));
        }
    }

    /// Gives up a create's binding: the record goes and its slot is stopped (a slot
    /// a claim or restore touched is never handed out again).
    async fn unbind(&self, record: &WorkspaceRecord, why: &str) -> Result<(), ApiError> {
        self.inner
            .store
            .remove_workspace(&record.workspace.id)
            .await?;
        self.discard_slot(&record.workspace.host_id, &record.slot_id, why)
            .await;
        Ok(())
    }

    /// A cold start for one create: at most [`Config::max_cold_starts`] at once on
    /// this replica, and none past the create's deadline (a start cut short there is
    /// left to its host; the orphan pass stops it if it comes up unknown).
    async fn start_cold(
        &self,
        template: &str,
        deadline: tokio::time::Instant,
    ) -> Result<WarmSlot, ApiError> {
        let _permit = tokio::time::timeout_at(deadline, self.inner.cold_starts.acquire())
            .await
            .map_err(|_| ApiError::NoCapacity)?
            .map_err(|_| ApiError::NoCapacity)?;
        tokio::time::timeout_at(deadline, self.start_slot(template))
            .await
            .map_err(|_| ApiError::NoCapacity)?
    }

    /// Ends a workspace and removes its slot; with `checkpoint` (and the template's
    /// `checkpoint.on_release`), its files are checkpointed first, and a checkpoint
    /// that fails keeps the workspace (the answer says why; pass
    /// `?checkpoint=false` to release it anyway).
    pub async fn release(&self, id: &str, checkpoint: bool) -> Result<Workspace, ApiError> {
        // Only with a checkpoint store does a release read the record first.
        if checkpoint
            && self.inner.config.checkpoints.is_some()
            && let Ok(record) = self.workspace(id).await
            && record.status == WorkspaceStatus::Ready
            && self
                .checkpoint_policy(&record.workspace.template)
                .is_some_and(|p| p.on_release)
        {
            self.checkpoint_record(&record, berth_wire::checkpoint::CheckpointReason::Release)
                .await?;
        }
        let Some(record) = self.inner.store.remove_workspace(id).await? else {
            return Err(self.missing(id).await);
        };
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
        let record = self.workspace(id).await?;
        if record.status == WorkspaceStatus::Lost {
            return Err(ApiError::Lost(id.into()));
        }
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

    /// A workspace the backend may use or look at: not one still being claimed
    /// (`workspace_not_found` until its create answers).
    pub async fn workspace(&self, id: &str) -> Result<WorkspaceRecord, ApiError> {
        match self.inner.store.workspace(id).await? {
            Some(r) if r.status != WorkspaceStatus::Claiming => Ok(r),
            _ => Err(self.missing(id).await),
        }
    }

    /// The error for a workspace the state does not know: `workspace_not_found`, or
    /// the retryable `state_rebuilding` while the state is being rebuilt (it may
    /// come back).
    pub(crate) async fn missing(&self, id: &str) -> ApiError {
        match self.inner.store.state_marked().await {
            Ok(false) => ApiError::Rebuilding,
            _ => ApiError::NotFound {
                what: "workspace",
                id: id.into(),
            },
        }
    }

    /// Pushes a workspace's expiry `ttl` seconds into the future.
    pub async fn keepalive(
        &self,
        id: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<Workspace, ApiError> {
        let mut record = self.workspace(id).await?;
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
        if record.status == WorkspaceStatus::Lost {
            return Err(ApiError::Lost(id.into()));
        }
        record.workspace.expires_at = now_ms() / 1000 + ttl;
        // Conditional: a keepalive racing a release must not bring the record back.
        if !self
            .inner
            .store
            .replace_workspace(&record, WorkspaceStatus::Ready, None)
            .await?
        {
            return Err(self.missing(id).await);
        }
        Ok(record.workspace)
    }
}

/// Why the host's latest report says `slot` must not be handed out, if it does.
pub(crate) fn not_ready_reason(hosts: &[HostRecord], slot: &WarmSlot) -> Option<String> {
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

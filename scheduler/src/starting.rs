//! Starting slots: placement picks each slot's host, the runtime starts them (one
//! call per host, batched), and what comes back is checked before it may serve —
//! its agent's address inside the allowed networks. Hosts that refuse are kept out
//! of placement for a while; a slot that cannot be used is stopped, saying why.

use super::*;

impl Scheduler {
    /// Starts one slot of `template` on the best host (the cold path).
    pub(crate) async fn start_slot(&self, template: &str) -> Result<WarmSlot, ApiError> {
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
    pub(crate) async fn start_batch(
        &self,
        template: &str,
        count: usize,
    ) -> Vec<Result<WarmSlot, ApiError>> {
        let mut results = Vec::with_capacity(count);
        let mut left = count;
        let mut refused_by: Vec<String> = Vec::new();
        let per_slot = self.inner.config.slot_memory_mib;
        while left > 0 {
            // A fresh read: starts are not the hot path, and a host that joined
            // since the shared read must be placeable at once.
            let hosts = match self.read_hosts().await {
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
    pub(crate) async fn accept_started(
        &self,
        template: &str,
        info: SlotInfo,
    ) -> Result<WarmSlot, ApiError> {
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
    pub(crate) fn mark_stale(&self, host_id: &str, reason: &str) {
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

    pub(crate) fn is_stale(&self, host_id: &str) -> bool {
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

    pub(crate) fn bump_starting(&self, host: &str, delta: i32) {
        let mut s = self
            .inner
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = s.entry(host.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
    }

    /// Best-effort removal of a slot, saying why.
    pub(crate) async fn discard_slot(&self, host_id: &str, slot_id: &str, reason: &str) {
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
}

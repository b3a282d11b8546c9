//! ECS mode: adopting the workspace tasks ECS placed on this host as slots, and
//! letting go of those ECS stopped. See [`crate::ecs`] for how tasks are found.

use std::collections::BTreeMap;

use berth_wire::{SlotInfo, SlotState, ecs as names, ports};

use crate::{Hostd, SlotContainers, audit, docker, ecs, privileged::ContainerFacts};

/// What the audit demands of an ECS task's containers: the daemon's default
/// seccomp profile (the host image makes it Berth's, checked on its own), and both
/// containers in the task's shared namespace (owned by ECS's pause container).
/// Containers of no workspace task (the pause container, other tasks) are not
/// judged.
pub fn ecs_expectations(labels: &BTreeMap<String, String>) -> Option<audit::Expectations> {
    match labels.get(names::LABEL_CONTAINER_NAME).map(String::as_str) {
        Some(names::WORKSPACE_CONTAINER) | Some(names::PROXY_CONTAINER) => {
            Some(audit::Expectations {
                seccomp_profile: None,
                joins_netns: true,
                read_only_bind: None,
            })
        }
        _ => None,
    }
}

impl Hostd {
    /// One discovery pass: reads the ECS agent's tasks, adopts new workspace tasks,
    /// and drops slots whose task ECS stopped or no longer lists.
    pub(crate) async fn discover(&self) {
        let Some(agent) = &self.ecs_agent else {
            return;
        };
        let tasks = match agent.tasks().await {
            Ok(t) => t,
            Err(e) => {
                let check = self.enforcer.check("ecs_agent", false, e.to_string());
                self.record_checks([check]);
                return;
            }
        };
        self.branches_used.store(
            ecs::branches_in_use(&tasks),
            std::sync::atomic::Ordering::Relaxed,
        );
        let found = ecs::workspace_tasks(&tasks);
        let running: BTreeMap<String, ecs::FoundTask> = found
            .into_iter()
            .filter(|t| t.running)
            .map(|t| (t.slot_id.clone(), t))
            .collect();
        let detail = format!(
            "{} tasks on this host, {} workspace tasks running",
            tasks.tasks.len(),
            running.len()
        );
        let check = self.enforcer.check("ecs_agent", true, detail);
        self.record_checks([check]);
        let gone: Vec<String> = self
            .slots()
            .keys()
            .filter(|id| !running.contains_key(*id))
            .cloned()
            .collect();
        for slot_id in gone {
            self.slots().remove(&slot_id);
            self.containers().remove(&slot_id);
            self.journal().event(
                "slot_gone",
                Some(&slot_id),
                "its task stopped or left the ECS agent's list",
            );
        }
        let new: Vec<ecs::FoundTask> = running
            .into_values()
            .filter(|t| !self.slots().contains_key(&t.slot_id))
            .collect();
        for t in new {
            self.adopt(t).await;
        }
    }

    /// Adopts one task: checks its containers are what the ECS agent says they
    /// are, sets their pids limits, audits them, locks the namespace, probes the
    /// agent; the slot is `Ready` only when all of that passed.
    async fn adopt(&self, t: ecs::FoundTask) {
        let p = &self.enforcer.privileged;
        let (ws, proxy) = match (
            p.inspect_container(&t.workspace).await,
            p.inspect_container(&t.proxy).await,
        ) {
            (Ok(w), Ok(x)) => (w, x),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(task = %t.task_arn, error = %e, "task's containers not inspectable yet");
                return;
            }
        };
        if !ws.running || !proxy.running {
            return;
        }
        if !ecs::labels_match(&ws.labels, &t.task_arn, names::WORKSPACE_CONTAINER)
            || !ecs::labels_match(&proxy.labels, &t.task_arn, names::PROXY_CONTAINER)
        {
            self.journal().event(
                "adoption_refused",
                Some(&t.slot_id),
                "its containers' labels do not name this task; not adopted",
            );
            return;
        }
        let Some(address) = t.address.clone() else {
            tracing::debug!(task = %t.task_arn, "task has no ENI address yet");
            return;
        };
        let template_name = ws.env_template.clone().unwrap_or_else(|| "default".into());
        let template = self
            .config
            .templates
            .iter()
            .find(|x| x.name == template_name)
            .or_else(|| self.config.templates.first())
            .cloned();
        let netns_owner = ws
            .network_mode
            .strip_prefix("container:")
            .map(str::to_owned)
            .unwrap_or_else(|| ws.id.clone());
        let containers = SlotContainers {
            netns_owner,
            workspace: ws.id.clone(),
            proxy: proxy.id.clone(),
        };
        // ECS cannot set a pids limit: hostd does, before the audit asks for one.
        let pids_limit = template.as_ref().map_or(256, |t| t.pids_limit);
        let mut facts: Vec<ContainerFacts> = Vec::new();
        for c in [ws, proxy] {
            if c.pids_limit.is_none_or(|l| l <= 0 || l > pids_limit) {
                if let Err(e) = p.set_pids_limit(&c.id, pids_limit).await {
                    tracing::warn!(container = %c.name, error = %e, "cannot set the pids limit");
                }
                match p.inspect_container(&c.id).await {
                    Ok(again) => facts.push(again),
                    Err(_) => facts.push(c),
                }
            } else {
                facts.push(c);
            }
        }
        let mut info = SlotInfo {
            slot_id: t.slot_id.clone(),
            template: template_name,
            host_id: self.config.host_id.clone(),
            agent_url: format!("http://{address}:{}", ports::AGENT),
            state: SlotState::Starting,
            memory_mib: template.as_ref().map_or(0, |t| t.memory_reservation_mib),
            memory_limit_mib: template.as_ref().map_or(0, docker::slot_memory_limit_mib),
            memory_idle_mib: None,
            reason: Some("adopted from ECS; rules not yet verified".into()),
            rules_verified_at_ms: None,
            created_at_ms: crate::now_ms(),
            claim_secret: None,
        };
        let mut findings = Vec::new();
        for f in &facts {
            if let Some(want) = ecs_expectations(&f.labels) {
                let found = audit::audit(f, &want);
                if !found.is_empty() {
                    findings.push(format!("{}: {}", f.name, audit::summary(&found)));
                }
            }
        }
        if !findings.is_empty() {
            let reason = findings.join("; ");
            for f in &facts {
                let _ = p.stop_container(&f.id).await;
            }
            info.state = SlotState::Withdrawn;
            info.reason = Some(format!("refused at adoption: {reason}"));
            self.journal().event(
                "slot_withdrawn",
                Some(&t.slot_id),
                format!("task's containers failed the audit and were stopped: {reason}"),
            );
            self.slots().insert(t.slot_id.clone(), info);
            return;
        }
        self.containers().insert(t.slot_id.clone(), containers);
        self.slots().insert(t.slot_id.clone(), info);
        match self.lock_existing(&t.slot_id, &BTreeMap::new()).await {
            Ok(_) => {
                if let Some(s) = self.slots().get_mut(&t.slot_id) {
                    s.rules_verified_at_ms = Some(crate::now_ms());
                }
            }
            Err(reason) => {
                self.withdraw(
                    &t.slot_id,
                    format!("egress lock cannot be proven: {reason}"),
                );
                return;
            }
        }
        self.journal().event(
            "slot_adopted",
            Some(&t.slot_id),
            format!("ECS task {} adopted; egress locked", t.task_arn),
        );
        self.check_health().await;
    }
}

impl SlotContainers {
    /// The docker runtime's names for a slot's containers.
    pub fn docker_mode(slot_id: &str) -> Self {
        Self {
            netns_owner: docker::netns_owner(slot_id),
            workspace: docker::workspace_container(slot_id),
            proxy: docker::netns_owner(slot_id),
        }
    }
}

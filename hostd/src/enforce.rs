//! Enforcement: applying and proving the lock-down, and keeping a record on-call can
//! read. [`Enforcer`] turns the pure rules of [`crate::netfilter`] and checks of
//! [`crate::audit`] into actions through [`Privileged`], and writes what it did into a
//! [`Journal`] (the last 50 events and a counter per kind) that `/`, `/status` and
//! `/metrics` show.
//!
//! # Background
//! A rule applied once proves nothing a minute later: a `dockerd` or firewalld
//! restart, an operator's `iptables -F`, or a bug can remove it. So every rule is
//! read back after it is applied and again every check period, and compared line by
//! line with what it should be ([`netfilter::drift`]); anything else is reapplied and
//! recorded. A slot whose rules cannot be read back as written is not trusted with a
//! conversation: hostd withdraws it and says why.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

use berth_wire::{HostEvent, PolicyCheck, labels};

use crate::{
    audit::{self, Expectations},
    netfilter::{self, ChainSpec, Drift, EgressPolicy, HostPolicy},
    now_ms,
    privileged::{Family, Netns, Privileged},
};

/// Events kept for the status page.
pub const EVENTS_KEPT: usize = 50;

/// What hostd did and found, for on-call.
#[derive(Clone, Default)]
pub struct Journal {
    inner: Arc<Mutex<JournalInner>>,
}

#[derive(Default)]
struct JournalInner {
    events: VecDeque<HostEvent>,
    /// Counters by name, e.g. `rules_reapplied`, `check_failures:host_rules_v4`.
    counters: BTreeMap<String, u64>,
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, JournalInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event (and logs it) and counts it under its kind.
    pub fn event(&self, kind: &str, subject: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(kind, subject = subject.unwrap_or("-"), %message, "host event");
        let mut j = self.lock();
        if j.events.len() == EVENTS_KEPT {
            j.events.pop_front();
        }
        j.events.push_back(HostEvent {
            at_ms: now_ms(),
            kind: kind.to_owned(),
            subject: subject.map(str::to_owned),
            message,
        });
        *j.counters.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn count(&self, name: &str) {
        *self.lock().counters.entry(name.to_owned()).or_default() += 1;
    }

    /// Newest first.
    pub fn events(&self) -> Vec<HostEvent> {
        self.lock().events.iter().rev().cloned().collect()
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters.clone()
    }
}

/// The outcome of locking one namespace down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    /// What had to be (re)applied, per family; empty when the rules were intact.
    pub repaired: Vec<String>,
}

/// A container the audit stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub container: String,
    /// Its slot, if it belongs to one.
    pub slot_id: Option<String>,
    pub reason: String,
}

/// One audit pass.
#[derive(Debug, Clone)]
pub struct Audited {
    pub check: PolicyCheck,
    pub stopped: Vec<Stopped>,
    /// First pid of each running container that passed, by container name.
    pub pids: BTreeMap<String, i64>,
}

/// Applies and proves rules, audits containers.
#[derive(Clone)]
pub struct Enforcer {
    pub privileged: Arc<dyn Privileged>,
    pub egress: EgressPolicy,
    pub host: HostPolicy,
    pub journal: Journal,
}

/// Why a ruleset could not be made to hold.
#[derive(Debug)]
enum Unproven {
    /// The chain ours must hook into does not exist (no `DOCKER-USER`).
    NoHookChain(Drift),
    Failed(String),
}

impl std::fmt::Display for Unproven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unproven::NoHookChain(d) => d.fmt(f),
            Unproven::Failed(why) => f.write_str(why),
        }
    }
}

fn describe(d: &[Drift]) -> String {
    d.iter()
        .map(Drift::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Enforcer {
    /// Whether none of `containers` runs: each is gone or stopped. One that runs, or
    /// that cannot be inspected for another reason (the engine not answering), is
    /// not taken for ended — a slot's lock must then still be proven.
    pub async fn none_running(&self, containers: &[&str]) -> bool {
        for name in containers {
            match self.privileged.inspect_container(name).await {
                Ok(facts) if facts.running && facts.pid > 0 => return false,
                Ok(_) | Err(crate::privileged::PrivError::NoSuchContainer { .. }) => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Makes `specs` hold in `netns` for `family`: reads the table, reapplies if it
    /// drifted, reads it again. `Ok(None)`: intact; `Ok(Some(what))`: repaired;
    /// `Err`: cannot be proven.
    async fn hold(
        &self,
        netns: &Netns,
        family: Family,
        specs: &[ChainSpec],
    ) -> Result<Option<String>, Unproven> {
        let p = &self.privileged;
        let failed = |e: crate::privileged::PrivError| Unproven::Failed(e.to_string());
        let saved = p.read_rules(netns, family).await.map_err(failed)?;
        let drifted = netfilter::drift(&saved, specs);
        if drifted.is_empty() {
            return Ok(None);
        }
        if let Some(d) = drifted
            .iter()
            .find(|d| matches!(d, Drift::NoHookChain { .. }))
        {
            return Err(Unproven::NoHookChain(d.clone()));
        }
        p.apply_rules(netns, family, &netfilter::restore_text(&saved, specs))
            .await
            .map_err(failed)?;
        let again = p.read_rules(netns, family).await.map_err(failed)?;
        let still = netfilter::drift(&again, specs);
        if still.is_empty() {
            Ok(Some(describe(&drifted)))
        } else {
            Err(Unproven::Failed(format!(
                "rules read back differ from what was applied: {}",
                describe(&still)
            )))
        }
    }

    /// Applies (where missing or altered) and proves the egress lock in a slot's
    /// namespace, IPv4 and IPv6.
    pub async fn lock_slot(&self, netns: &Netns) -> Result<Locked, String> {
        let mut repaired = Vec::new();
        for family in Family::BOTH {
            let specs = [netfilter::egress_spec(&self.egress, family)];
            match self.hold(netns, family, &specs).await {
                Ok(None) => {}
                Ok(Some(what)) => repaired.push(format!("{}: {what}", family.name())),
                Err(e) => return Err(format!("{} egress lock: {e}", family.name())),
            }
        }
        Ok(Locked { repaired })
    }

    /// Applies and proves the host rules in `netns` (the host's, or a test's); one
    /// check per family. Applying them is recorded as an event: `rules_applied` on
    /// the `first` pass, `rules_reapplied` (a repair) after.
    pub async fn check_host_rules(&self, netns: &Netns, first: bool) -> Vec<PolicyCheck> {
        let mut checks = Vec::new();
        let v6_docker_user = match self.privileged.read_rules(netns, Family::V6).await {
            Ok(saved) => netfilter::has_chain(&saved, "DOCKER-USER"),
            Err(_) => false,
        };
        for family in Family::BOTH {
            let specs = netfilter::host_specs(&self.host, family, v6_docker_user);
            let name = format!("host_rules_{}", family.name());
            let hooks: Vec<&str> = specs.iter().map(|s| s.hook).collect();
            let (ok, detail) = match self.hold(netns, family, &specs).await {
                Ok(None) => (
                    true,
                    format!("metadata blocks in place ({})", hooks.join(", ")),
                ),
                Ok(Some(what)) => {
                    let (kind, verb) = if first {
                        ("rules_applied", "applied")
                    } else {
                        ("rules_reapplied", "restored")
                    };
                    self.journal.event(
                        kind,
                        Some(&format!("host {}", family.name())),
                        format!("host rules {verb}: {what}"),
                    );
                    (true, format!("{verb} ({what}); metadata blocks in place"))
                }
                Err(e @ Unproven::NoHookChain(_)) => (
                    false,
                    format!(
                        "{e}: Docker's nftables firewall backend or --iptables=false; bridge-mode \
                         containers' traffic to the metadata addresses is not filtered"
                    ),
                ),
                Err(e) => (false, e.to_string()),
            };
            checks.push(self.check(&name, ok, detail));
        }
        checks
    }

    /// Removes the host rules (cleanup on exit); errors are logged.
    pub async fn remove_host_rules(&self, netns: &Netns) {
        for family in Family::BOTH {
            let Ok(saved) = self.privileged.read_rules(netns, family).await else {
                continue;
            };
            let v6_docker_user = netfilter::has_chain(&saved, "DOCKER-USER");
            let specs = netfilter::host_specs(&self.host, family, v6_docker_user);
            if let Some(text) = netfilter::removal_text(&saved, &specs)
                && let Err(e) = self.privileged.apply_rules(netns, family, &text).await
            {
                tracing::warn!(error = %e, "could not remove host rules");
            }
        }
    }

    /// Audits every container of this host's workspace tasks and stops those that
    /// fail; `expect` gives the expectations for a container's labels. Also returns
    /// the first pid of every running container that passed, by name, so the slot
    /// rules pass finds each namespace without inspecting the containers again.
    pub async fn audit_containers(
        &self,
        label_filter: &str,
        expect: impl Fn(&BTreeMap<String, String>) -> Option<Expectations>,
    ) -> Audited {
        let ids = match self.privileged.containers_labelled(label_filter).await {
            Ok(ids) => ids,
            Err(e) => {
                return Audited {
                    check: self.check(
                        "container_audit",
                        false,
                        format!("cannot list containers: {e}"),
                    ),
                    stopped: Vec::new(),
                    pids: BTreeMap::new(),
                };
            }
        };
        let mut audited = 0;
        let mut pids = BTreeMap::new();
        let mut stopped = Vec::new();
        let mut unstoppable = Vec::new();
        for id in ids {
            let facts = match self.privileged.inspect_container(&id).await {
                Ok(f) => f,
                // Removed between list and inspect: nothing to audit.
                Err(crate::privileged::PrivError::NoSuchContainer { .. }) => continue,
                Err(e) => {
                    unstoppable.push(format!("{id}: cannot inspect: {e}"));
                    continue;
                }
            };
            if !facts.running {
                continue;
            }
            // Not a container of ours to judge (ECS's own pause container).
            let Some(expectations) = expect(&facts.labels) else {
                pids.insert(facts.name.clone(), facts.pid);
                pids.insert(facts.id.clone(), facts.pid);
                continue;
            };
            audited += 1;
            let findings = audit::audit(&facts, &expectations);
            if findings.is_empty() {
                pids.insert(facts.name.clone(), facts.pid);
                pids.insert(facts.id.clone(), facts.pid);
                continue;
            }
            let reason = audit::summary(&findings);
            for f in &findings {
                self.journal.count(&format!("audit_failures:{}", f.check));
            }
            match self.privileged.stop_container(&facts.id).await {
                Ok(()) => {
                    self.journal.event(
                        "container_stopped",
                        Some(&facts.name),
                        format!("failed the audit: {reason}"),
                    );
                    stopped.push(Stopped {
                        container: facts.name.clone(),
                        slot_id: facts.labels.get(labels::SLOT).cloned().or_else(|| {
                            // An ECS task's slot is named by its task id.
                            facts
                                .labels
                                .get(berth_wire::ecs::LABEL_TASK_ARN)
                                .map(|arn| berth_wire::ecs::task_id(arn).to_owned())
                        }),
                        reason,
                    });
                }
                Err(e) => {
                    unstoppable.push(format!("{}: {reason}; cannot stop it: {e}", facts.name))
                }
            }
        }
        let detail = if unstoppable.is_empty() {
            let mut d = format!("{audited} running containers audited");
            if !stopped.is_empty() {
                let names: Vec<String> = stopped
                    .iter()
                    .map(|s| format!("{} ({})", s.container, s.reason))
                    .collect();
                d.push_str(&format!(
                    "; stopped {}: {}",
                    stopped.len(),
                    names.join(", ")
                ));
            }
            d
        } else {
            unstoppable.join("; ")
        };
        Audited {
            check: self.check("container_audit", unstoppable.is_empty(), detail),
            stopped,
            pids,
        }
    }

    /// Checks that the Docker daemon configured by `daemon_json` runs Berth's
    /// workspace profile as its default (see [`audit::daemon_seccomp`]).
    pub async fn check_daemon_seccomp(&self, daemon_json: &std::path::Path) -> PolicyCheck {
        let expected: serde_json::Value =
            serde_json::from_str(berth_seccomp::WORKSPACE_PROFILE_JSON).unwrap_or_default();
        let verdict = match std::fs::read_to_string(daemon_json) {
            Err(e) => Err(format!("cannot read {}: {e}", daemon_json.display())),
            Ok(text) => match self.privileged.daemon_security_options().await {
                Err(e) => Err(e.to_string()),
                Ok(options) => audit::daemon_seccomp(
                    &text,
                    |p| std::fs::read_to_string(p),
                    &options,
                    &expected,
                ),
            },
        };
        match verdict {
            Ok(detail) => self.check("daemon_seccomp", true, detail),
            Err(detail) => self.check("daemon_seccomp", false, detail),
        }
    }

    /// A check result, counted when failing.
    pub fn check(&self, name: &str, ok: bool, detail: String) -> PolicyCheck {
        if !ok {
            self.journal.count(&format!("check_failures:{name}"));
        }
        PolicyCheck {
            name: name.to_owned(),
            ok,
            detail,
            checked_at_ms: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privileged::{Call, ContainerFacts, RecordingPrivileged};

    fn enforcer(p: &RecordingPrivileged) -> Enforcer {
        Enforcer {
            privileged: Arc::new(p.clone()),
            egress: EgressPolicy::default(),
            host: HostPolicy::default(),
            journal: Journal::default(),
        }
    }

    fn slot_ns() -> Netns {
        Netns::of_pid(4242)
    }

    #[tokio::test]
    async fn a_slot_has_ended_only_when_none_of_its_containers_runs() {
        let p = RecordingPrivileged::new();
        let e = enforcer(&p);
        let facts = |id: &str, running: bool| ContainerFacts {
            id: id.into(),
            running,
            pid: if running { 4242 } else { 0 },
            ..ContainerFacts::default()
        };
        // All gone (a released slot whose containers were removed): ended.
        assert!(e.none_running(&["proxy", "ws"]).await);
        // Stopped, or removed: ended.
        p.add_container(facts("proxy", false));
        assert!(e.none_running(&["proxy", "ws"]).await);
        // The workspace still runs, though its namespace owner stopped: not ended,
        // its lock must still be proven.
        p.add_container(facts("ws", true));
        assert!(!e.none_running(&["proxy", "ws"]).await);
    }

    #[tokio::test]
    async fn first_lock_applies_both_families_and_proves_them() {
        let p = RecordingPrivileged::new();
        let e = enforcer(&p);
        let locked = e.lock_slot(&slot_ns()).await.unwrap();
        assert_eq!(locked.repaired.len(), 2, "{locked:?}");
        let applies = p
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Apply { .. }))
            .count();
        assert_eq!(applies, 2);
        assert!(
            p.table(&slot_ns(), Family::V4)
                .contains("-A OUTPUT -j BERTH-EGRESS")
        );
        assert!(
            p.table(&slot_ns(), Family::V6)
                .contains("fd00:ec2::254/128")
        );
    }

    #[tokio::test]
    async fn intact_rules_are_only_read() {
        let p = RecordingPrivileged::new();
        let e = enforcer(&p);
        e.lock_slot(&slot_ns()).await.unwrap();
        p.clear_calls();
        let again = e.lock_slot(&slot_ns()).await.unwrap();
        assert!(again.repaired.is_empty());
        assert!(
            p.calls().iter().all(|c| matches!(c, Call::Read { .. })),
            "{:?}",
            p.calls()
        );
    }

    #[tokio::test]
    async fn a_flushed_chain_is_repaired_and_said_so() {
        let p = RecordingPrivileged::new();
        let e = enforcer(&p);
        e.lock_slot(&slot_ns()).await.unwrap();
        let flushed: String = p
            .table(&slot_ns(), Family::V4)
            .lines()
            .filter(|l| !l.starts_with("-A BERTH-EGRESS"))
            .map(|l| format!("{l}\n"))
            .collect();
        p.set_table(&slot_ns(), Family::V4, &flushed);
        let locked = e.lock_slot(&slot_ns()).await.unwrap();
        assert_eq!(locked.repaired.len(), 1);
        assert!(
            locked.repaired[0].starts_with("v4: BERTH-EGRESS: 10 missing"),
            "{locked:?}"
        );
        // The hook was intact, so no second jump was inserted.
        assert_eq!(
            p.table(&slot_ns(), Family::V4)
                .matches("-A OUTPUT -j BERTH-EGRESS")
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn a_namespace_that_cannot_be_entered_cannot_be_proven() {
        let p = RecordingPrivileged::new();
        p.fail_apply_in(&slot_ns());
        let err = enforcer(&p).lock_slot(&slot_ns()).await.unwrap_err();
        assert!(err.starts_with("v4 egress lock: cannot enter"), "{err}");
    }

    #[tokio::test]
    async fn host_rules_fail_without_docker_user_and_pass_with_it() {
        let p = RecordingPrivileged::new();
        let e = enforcer(&p);
        let checks = e.check_host_rules(&Netns::Host, false).await;
        assert!(
            !checks[0].ok && checks[0].detail.contains("DOCKER-USER does not exist"),
            "{checks:?}"
        );
        assert!(
            checks[1].ok,
            "IPv6 hooks FORWARD when Docker has no IPv6 DOCKER-USER"
        );
        p.set_table(&Netns::Host, Family::V4, "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\nCOMMIT\n");
        let checks = e.check_host_rules(&Netns::Host, false).await;
        assert!(checks[0].ok, "{checks:?}");
        let v4 = p.table(&Netns::Host, Family::V4);
        assert!(
            v4.contains("-A DOCKER-USER -j BERTH-HOST\n-A DOCKER-USER -j RETURN\n"),
            "{v4}"
        );
        assert_eq!(
            e.journal.counters().get("check_failures:host_rules_v4"),
            Some(&1)
        );
    }

    #[tokio::test]
    async fn the_audit_stops_a_weakened_container_and_leaves_good_ones() {
        let p = RecordingPrivileged::new();
        let good = ContainerFacts {
            id: "good".into(),
            name: "berth-s1-ws".into(),
            labels: [
                (labels::HOST.to_owned(), "h1".to_owned()),
                (labels::SLOT.to_owned(), "s1".to_owned()),
            ]
            .into(),
            running: true,
            pid: 10,
            user: "1000:1000".into(),
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["no-new-privileges:true".into()],
            readonly_rootfs: true,
            pids_limit: Some(64),
            memory_limit: 1 << 28,
            network_mode: "container:x".into(),
            ..ContainerFacts::default()
        };
        let mut bad = good.clone();
        bad.id = "bad".into();
        bad.name = "intruder".into();
        bad.cap_add = vec!["NET_ADMIN".into()];
        bad.labels.insert(labels::SLOT.into(), "s2".into());
        p.add_container(good);
        p.add_container(bad);
        let e = enforcer(&p);
        let Audited {
            check,
            stopped,
            pids,
        } = e
            .audit_containers("berth.host=h1", |_| {
                Some(Expectations {
                    seccomp_profile: None,
                    joins_netns: true,
                    read_only_bind: None,
                })
            })
            .await;
        assert!(check.ok, "{check:?}");
        assert_eq!(
            pids,
            BTreeMap::from([("berth-s1-ws".to_owned(), 10), ("good".to_owned(), 10)]),
            "only the compliant one, by name and by id"
        );
        assert_eq!(stopped.len(), 1);
        assert_eq!(stopped[0].slot_id.as_deref(), Some("s2"));
        assert!(stopped[0].reason.contains("no_cap_add"));
        assert!(!p.container("bad").unwrap().running && p.container("good").unwrap().running);
        let ev = e.journal.events();
        assert_eq!(ev[0].kind, "container_stopped");
        assert_eq!(ev[0].subject.as_deref(), Some("intruder"));
        // Stopped containers are not audited again.
        let again = e
            .audit_containers("berth.host=h1", |_| {
                Some(Expectations {
                    seccomp_profile: None,
                    joins_netns: true,
                    read_only_bind: None,
                })
            })
            .await;
        assert!(again.stopped.is_empty());
    }

    #[tokio::test]
    async fn the_daemon_profile_check_reads_the_config_and_the_running_daemon() {
        let dir = std::env::temp_dir().join(format!("berth-daemon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let profile = dir.join("workspace.json");
        std::fs::write(&profile, berth_seccomp::WORKSPACE_PROFILE_JSON).unwrap();
        let config = dir.join("daemon.json");
        std::fs::write(
            &config,
            serde_json::json!({"seccomp-profile": profile}).to_string(),
        )
        .unwrap();
        let p = RecordingPrivileged::new();
        let e = enforcer(&p);
        p.set_security_options(&["name=seccomp,profile=default"]);
        let c = e.check_daemon_seccomp(&config).await;
        assert!(!c.ok && c.detail.contains("restart dockerd"), "{c:?}");
        p.set_security_options(&[&format!("name=seccomp,profile={}", profile.display())]);
        let c = e.check_daemon_seccomp(&config).await;
        assert!(c.ok, "{c:?}");
        let c = e.check_daemon_seccomp(&dir.join("missing.json")).await;
        assert!(!c.ok && c.detail.starts_with("cannot read"), "{c:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_journal_keeps_the_last_fifty_newest_first() {
        let j = Journal::default();
        for i in 0..60 {
            j.event("rules_reapplied", None, format!("n{i}"));
        }
        let ev = j.events();
        assert_eq!(ev.len(), EVENTS_KEPT);
        assert_eq!(ev[0].message, "n59");
        assert_eq!(j.counters()["rules_reapplied"], 60);
    }
}

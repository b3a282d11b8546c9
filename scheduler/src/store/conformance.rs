//! The conformance suite every [`StateStore`] passes: the same checks, run against
//! the memory store by this crate's unit tests and against a real `redis-server` by
//! `tests/tests/redis_state.rs`.
//!
//! Each check works in a template and id space of its own, so the checks can share
//! one store (one Redis) in any order. `a` and `b` are two handles on the same
//! state: two connections to one Redis, as two replicas have, or the same memory
//! store twice.

use std::collections::HashSet;

use berth_wire::{HostReport, Source, Workspace};

use super::{Acquired, Store, WarmSlot, WorkspaceRecord, WorkspaceStatus};

/// A workspace record of `template` for conversation `conv`, as acquire binds it.
pub fn record(template: &str, id: &str, conv: &str) -> WorkspaceRecord {
    WorkspaceRecord {
        workspace: Workspace {
            id: id.into(),
            conversation_id: conv.into(),
            agent_url: String::new(),
            token: "t".repeat(32),
            host_id: String::new(),
            template: template.into(),
            source: Source::Warm,
            created_at: 1,
            expires_at: 2,
            labels: [("team".to_owned(), "a".to_owned())].into(),
            replaced: None,
            state: Default::default(),
        },
        slot_id: String::new(),
        status: WorkspaceStatus::Claiming,
        claim_secret: String::new(),
    }
}

/// A warm slot of `template` on `host`.
pub fn slot(template: &str, id: &str, host: &str) -> WarmSlot {
    WarmSlot {
        slot_id: id.into(),
        host_id: host.into(),
        template: template.into(),
        agent_url: format!("http://{id}:9000"),
        claim_secret: format!("secret-of-{id}"),
    }
}

fn report(host_id: &str) -> HostReport {
    HostReport {
        host_id: host_id.into(),
        runtime: "docker".into(),
        hostd_url: format!("http://{host_id}:7701"),
        instance_type: "local".into(),
        branch_limit: 4,
        branch_limit_source: "configured".into(),
        branches_used: 0,
        memory_total_mib: 1024,
        memory_system_mib: 256,
        memory_reserved_mib: 0,
        memory_limit_total_mib: 0,
        draining: false,
        compliant: true,
        slots: Vec::new(),
        reported_at_ms: 0,
        checks: Vec::new(),
    }
}

/// Every check, in turn.
pub async fn run_all(a: &Store, b: &Store) {
    acquire_pops_a_slot_once_and_binds_the_conversation(a).await;
    concurrent_acquires_on_two_handles_never_share_a_slot(a, b).await;
    slots_on_dead_hosts_are_skipped_and_taken_out(a).await;
    removal_unbinds_the_conversation_and_only_its_own(a).await;
    single_warm_slots_are_listed_and_taken_once(a, b).await;
    hosts_keep_their_draining_mark_across_reports(a, b).await;
    records_round_trip_whole(a, b).await;
    takers_and_acquirers_race_and_each_slot_goes_once(a, b).await;
    the_binding_names_its_slot_and_finishes_only_while_claiming(a, b).await;
}

/// One acquire pops one slot and binds; the same conversation again gets the same
/// workspace and pops nothing.
pub async fn acquire_pops_a_slot_once_and_binds_the_conversation(a: &Store) {
    let t = "conf-acquire";
    a.push_warm(slot(t, "acq-s1", "h1")).await.unwrap();
    let got = a
        .acquire(&record(t, "acq-w1", "acq-c1"), &[])
        .await
        .unwrap();
    assert_eq!(got, Acquired::Warm(slot(t, "acq-s1", "h1")));
    a.push_warm(slot(t, "acq-s2", "h1")).await.unwrap();
    match a
        .acquire(&record(t, "acq-w2", "acq-c1"), &[])
        .await
        .unwrap()
    {
        Acquired::Existing(r) => assert_eq!(r.workspace.id, "acq-w1"),
        other => panic!("expected the existing workspace, got {other:?}"),
    }
    assert_eq!(a.pool_sizes().await.unwrap().get(t), Some(&1));
    // An empty pool binds the conversation for a cold start.
    a.take_warm_on_host("h1").await.unwrap();
    assert_eq!(
        a.acquire(&record(t, "acq-w3", "acq-c3"), &[])
            .await
            .unwrap(),
        Acquired::Cold
    );
    assert!(
        a.workspace_for_conversation("acq-c3")
            .await
            .unwrap()
            .is_some()
    );
}

/// 100 acquires for distinct conversations over two handles, 50 slots: each slot
/// goes exactly once, the rest are cold.
pub async fn concurrent_acquires_on_two_handles_never_share_a_slot(a: &Store, b: &Store) {
    let t = "conf-race";
    for i in 0..50 {
        a.push_warm(slot(t, &format!("race-s{i}"), "h"))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .acquire(
                    &record(t, &format!("race-w{i}"), &format!("race-c{i}")),
                    &[],
                )
                .await
                .unwrap()
        }));
    }
    let mut seen = HashSet::new();
    let mut cold = 0;
    for task in tasks {
        match task.await.unwrap() {
            Acquired::Warm(s) => assert!(seen.insert(s.slot_id), "a slot was handed out twice"),
            Acquired::Cold => cold += 1,
            Acquired::Existing(_) => panic!("distinct conversations got one workspace"),
        }
    }
    assert_eq!((seen.len(), cold), (50, 50));
    assert_eq!(
        a.pool_sizes().await.unwrap().get(t).copied().unwrap_or(0),
        0
    );
}

/// Slots on dead hosts are passed over (the conversation goes cold) and can be
/// taken out of the pools by host.
pub async fn slots_on_dead_hosts_are_skipped_and_taken_out(a: &Store) {
    let t = "conf-dead";
    a.push_warm(slot(t, "dead-s1", "dead-host")).await.unwrap();
    a.push_warm(slot(t, "dead-s2", "live-host")).await.unwrap();
    let dead = ["dead-host".to_owned()];
    assert_eq!(
        a.acquire(&record(t, "dead-w1", "dead-c1"), &dead)
            .await
            .unwrap(),
        Acquired::Warm(slot(t, "dead-s2", "live-host"))
    );
    assert_eq!(
        a.acquire(&record(t, "dead-w2", "dead-c2"), &dead)
            .await
            .unwrap(),
        Acquired::Cold
    );
    let taken = a.take_warm_on_host("dead-host").await.unwrap();
    assert_eq!(taken, vec![slot(t, "dead-s1", "dead-host")]);
    assert_eq!(
        a.pool_sizes().await.unwrap().get(t).copied().unwrap_or(0),
        0
    );
}

/// Removing a workspace unbinds its conversation; removing it again finds nothing;
/// a newer workspace of the conversation is not unbound by removing an older one.
pub async fn removal_unbinds_the_conversation_and_only_its_own(a: &Store) {
    let t = "conf-remove";
    a.acquire(&record(t, "rm-w1", "rm-c1"), &[]).await.unwrap();
    assert!(a.remove_workspace("rm-w1").await.unwrap().is_some());
    assert!(
        a.workspace_for_conversation("rm-c1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(a.remove_workspace("rm-w1").await.unwrap().is_none());
    // An old record left over (put back by a slow writer) does not unbind the new one.
    a.acquire(&record(t, "rm-w2", "rm-c2"), &[]).await.unwrap();
    a.put_workspace(&record(t, "rm-old", "rm-c2"))
        .await
        .unwrap();
    a.remove_workspace("rm-old").await.unwrap();
    assert_eq!(
        a.workspace_for_conversation("rm-c2")
            .await
            .unwrap()
            .map(|r| r.workspace.id),
        Some("rm-w2".to_owned())
    );
}

/// Warm slots are listed; taking one succeeds once across handles.
pub async fn single_warm_slots_are_listed_and_taken_once(a: &Store, b: &Store) {
    let t = "conf-take";
    for i in 0..3 {
        a.push_warm(slot(t, &format!("take-s{i}"), "take-h"))
            .await
            .unwrap();
    }
    let mine: Vec<WarmSlot> = a
        .warm_slots()
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.template == t)
        .collect();
    assert_eq!(mine.len(), 3);
    let target = mine[1].clone();
    assert!(a.take_warm_slot(&target).await.unwrap());
    assert!(!b.take_warm_slot(&target).await.unwrap(), "taken twice");
    assert_eq!(a.pool_sizes().await.unwrap().get(t), Some(&2));
}

/// Reports replace each other; the draining mark survives new reports; unknown
/// hosts cannot be drained.
pub async fn hosts_keep_their_draining_mark_across_reports(a: &Store, b: &Store) {
    a.put_host(report("conf-h1"), 10).await.unwrap();
    assert!(b.set_draining("conf-h1", true).await.unwrap());
    assert!(!b.set_draining("conf-nobody", true).await.unwrap());
    a.put_host(report("conf-h1"), 20).await.unwrap();
    let h = b
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.report.host_id == "conf-h1")
        .expect("host recorded");
    assert!(h.draining, "the mark outlives a new report");
    assert_eq!(h.last_seen_ms, 20);
    assert!(a.set_draining("conf-h1", false).await.unwrap());
    // Forgotten hosts are gone from the list; forgetting twice finds nothing.
    assert!(b.remove_host("conf-h1").await.unwrap());
    assert!(!a.remove_host("conf-h1").await.unwrap());
    assert!(
        a.hosts()
            .await
            .unwrap()
            .iter()
            .all(|h| h.report.host_id != "conf-h1")
    );
}

/// What one handle writes, the other reads back whole.
pub async fn records_round_trip_whole(a: &Store, b: &Store) {
    let t = "conf-roundtrip";
    let mut r = record(t, "rt-w1", "rt-c1");
    a.acquire(&r, &[]).await.unwrap();
    r.status = WorkspaceStatus::Ready;
    r.slot_id = "rt-s1".into();
    r.claim_secret = "rt-secret".into();
    a.put_workspace(&r).await.unwrap();
    assert_eq!(b.workspace("rt-w1").await.unwrap(), Some(r.clone()));
    assert!(b.workspaces().await.unwrap().contains(&r));
    assert_eq!(b.workspace("rt-nothing").await.unwrap(), None);
}

/// Pool shrinking (take) and acquires race for the same slots: each goes once.
pub async fn takers_and_acquirers_race_and_each_slot_goes_once(a: &Store, b: &Store) {
    let t = "conf-take-race";
    for i in 0..20 {
        a.push_warm(slot(t, &format!("tr-s{i}"), "tr-h"))
            .await
            .unwrap();
    }
    assert!(!a.take_warm_slot(&slot(t, "tr-nope", "tr-h")).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                usize::from(
                    s.take_warm_slot(&slot(t, &format!("tr-s{i}"), "tr-h"))
                        .await
                        .unwrap(),
                )
            } else {
                usize::from(matches!(
                    s.acquire(&record(t, &format!("tr-w{i}"), &format!("tr-c{i}")), &[])
                        .await
                        .unwrap(),
                    Acquired::Warm(_)
                ))
            }
        }));
    }
    let mut got = 0;
    for task in tasks {
        got += task.await.unwrap();
    }
    let left = a.pool_sizes().await.unwrap().get(t).copied().unwrap_or(0);
    assert_eq!(got + left, 20, "{got} taken or handed out, {left} left");
}

/// The acquire step writes the popped slot into the binding; completing a claim
/// (`replace_workspace` expecting `Claiming`) works once and not after a recovery
/// removed the binding; removal by status keeps records in another status.
pub async fn the_binding_names_its_slot_and_finishes_only_while_claiming(a: &Store, b: &Store) {
    let t = "conf-bind";
    a.push_warm(slot(t, "bind-s1", "bind-h")).await.unwrap();
    a.acquire(&record(t, "bind-w1", "bind-c1"), &[])
        .await
        .unwrap();
    let bound = b.workspace("bind-w1").await.unwrap().expect("bound");
    assert_eq!(
        (
            bound.slot_id.as_str(),
            bound.workspace.host_id.as_str(),
            bound.workspace.agent_url.as_str(),
            bound.claim_secret.as_str()
        ),
        (
            "bind-s1",
            "bind-h",
            "http://bind-s1:9000",
            "secret-of-bind-s1"
        ),
        "the binding records the slot it popped"
    );
    assert_eq!(bound.status, WorkspaceStatus::Claiming);
    // Recovery removes only a Claiming record; a Ready one stays.
    let mut ready = bound.clone();
    ready.status = WorkspaceStatus::Ready;
    assert!(
        a.replace_workspace(&ready, WorkspaceStatus::Claiming)
            .await
            .unwrap()
    );
    assert!(
        !b.replace_workspace(&ready, WorkspaceStatus::Claiming)
            .await
            .unwrap(),
        "a claim finishes once"
    );
    assert!(
        b.remove_workspace_in("bind-w1", WorkspaceStatus::Claiming)
            .await
            .unwrap()
            .is_none()
    );
    assert!(a.workspace("bind-w1").await.unwrap().is_some());
    // A keepalive (expecting Ready) after a release brings nothing back.
    assert!(a.remove_workspace("bind-w1").await.unwrap().is_some());
    assert!(
        !b.replace_workspace(&ready, WorkspaceStatus::Ready)
            .await
            .unwrap()
    );
    assert!(a.workspace("bind-w1").await.unwrap().is_none());
    // A stuck claim is removed by status, with its conversation.
    a.acquire(&record(t, "bind-w2", "bind-c2"), &[])
        .await
        .unwrap();
    let gone = b
        .remove_workspace_in("bind-w2", WorkspaceStatus::Claiming)
        .await
        .unwrap()
        .expect("removed while Claiming");
    assert_eq!(gone.workspace.id, "bind-w2");
    assert!(
        a.workspace_for_conversation("bind-c2")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !a.replace_workspace(&ready, WorkspaceStatus::Claiming)
            .await
            .unwrap()
    );
}

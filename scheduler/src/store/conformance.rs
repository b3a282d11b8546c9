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

use super::{
    Acquired, Condition, Fence, Store, StoreError, WarmSlot, WorkspaceRecord, WorkspaceStatus,
};

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
            restored_from: None,
            restore_error: None,
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

/// Every check, in turn. The lease checks come first (they need a store nobody
/// leads yet); the rest write as the leader they leave in place.
pub async fn run_all(a: &Store, b: &Store) {
    let fence = the_lease_has_one_holder_and_a_rising_epoch(a, b).await;
    an_unmarked_store_binds_nothing_until_the_leader_marks_it(a, b, &fence).await;
    a_deposed_leaders_writes_are_refused(a, b, &fence).await;
    restoring_puts_back_only_what_is_unknown(a, b, &fence).await;
    acquire_pops_a_slot_once_and_binds_the_conversation(a, &fence).await;
    concurrent_acquires_on_two_handles_never_share_a_slot(a, b).await;
    slots_on_dead_hosts_are_skipped_and_taken_out(a, &fence).await;
    removal_unbinds_the_conversation_and_only_its_own(a).await;
    single_warm_slots_are_listed_and_taken_once(a, b, &fence).await;
    hosts_keep_their_draining_mark_across_reports(a, b, &fence).await;
    host_records_are_brief_and_the_full_slot_list_is_kept(a, b, &fence).await;
    records_round_trip_whole(a, b).await;
    takers_and_acquirers_race_and_each_slot_goes_once(a, b, &fence).await;
    the_binding_names_its_slot_and_finishes_only_while_claiming(a, b, &fence).await;
    removal_by_condition_loses_to_a_keepalive(a, b, &fence).await;
}

/// One holder at a time; renewal keeps the epoch; a lapsed lease goes to the next
/// replica with a higher epoch. Returns the fence of the replica left leading
/// (`conf-leader`, for a minute).
pub async fn the_lease_has_one_holder_and_a_rising_epoch(a: &Store, b: &Store) -> Fence {
    let first = a
        .lead("conf-r1", 200)
        .await
        .unwrap()
        .expect("nobody leads yet");
    assert_eq!(b.lead("conf-r2", 200).await.unwrap(), None, "one holder");
    assert_eq!(
        a.lead("conf-r1", 200).await.unwrap(),
        Some(first),
        "renewal"
    );
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    let second = b
        .lead("conf-leader", 60_000)
        .await
        .unwrap()
        .expect("lapsed");
    assert!(second > first, "{second} after {first}");
    assert_eq!(a.lead("conf-r1", 200).await.unwrap(), None, "deposed");
    Fence {
        owner: "conf-leader".into(),
        epoch: second,
    }
}

/// A store without the state marker (fresh, or flushed) answers every acquire with
/// `Rebuilding`, binding nothing and popping nothing; only the live leader can set
/// the marker, and then acquires work.
pub async fn an_unmarked_store_binds_nothing_until_the_leader_marks_it(
    a: &Store,
    b: &Store,
    live: &Fence,
) {
    let t = "conf-marker";
    assert!(
        !a.state_marked().await.unwrap(),
        "a fresh store is unmarked"
    );
    a.push_warm(slot(t, "mark-s1", "mark-h")).await.unwrap();
    assert_eq!(
        b.acquire(&record(t, "mark-w1", "mark-c1"), &[])
            .await
            .unwrap(),
        Acquired::Rebuilding
    );
    assert!(
        a.workspace_for_conversation("mark-c1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(a.pool_sizes().await.unwrap().get(t), Some(&1));
    let stale = Fence {
        owner: "conf-r1".into(),
        epoch: live.epoch - 1,
    };
    assert!(matches!(
        b.mark_state(&stale).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(!a.state_marked().await.unwrap());
    b.mark_state(live).await.unwrap();
    assert!(a.state_marked().await.unwrap());
    assert_eq!(
        a.acquire(&record(t, "mark-w1", "mark-c1"), &[])
            .await
            .unwrap(),
        Acquired::Warm(slot(t, "mark-s1", "mark-h"))
    );
}

/// Restoring a workspace found on a host binds its conversation, once; a workspace
/// or a conversation the state already knows is left as it is.
pub async fn restoring_puts_back_only_what_is_unknown(a: &Store, b: &Store, fence: &Fence) {
    let t = "conf-restore";
    let mut found = record(t, "rs-w1", "rs-c1");
    found.status = WorkspaceStatus::Ready;
    found.slot_id = "rs-s1".into();
    assert!(a.restore_workspace(&found, fence).await.unwrap());
    assert_eq!(
        b.workspace_for_conversation("rs-c1").await.unwrap(),
        Some(found.clone())
    );
    assert!(!b.restore_workspace(&found, fence).await.unwrap(), "once");
    // The conversation has moved on to another workspace: the old one stays out.
    let mut other = record(t, "rs-w2", "rs-c1");
    other.slot_id = "rs-s2".into();
    assert!(!a.restore_workspace(&other, fence).await.unwrap());
    assert!(a.workspace("rs-w2").await.unwrap().is_none());
    let stale = Fence {
        owner: "conf-r1".into(),
        epoch: fence.epoch - 1,
    };
    let mut third = record(t, "rs-w3", "rs-c3");
    third.status = WorkspaceStatus::Ready;
    assert!(matches!(
        a.restore_workspace(&third, &stale).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(a.workspace("rs-w3").await.unwrap().is_none());
}

/// Every fenced write from the deposed `conf-r1` (or from `conf-leader` with a
/// stale epoch) fails with [`StoreError::Fenced`] and changes nothing; the same
/// writes under the live fence go through.
pub async fn a_deposed_leaders_writes_are_refused(a: &Store, b: &Store, live: &Fence) {
    let t = "conf-fence";
    a.put_host(report("fence-h"), 1).await.unwrap();
    a.push_warm(slot(t, "fence-s1", "fence-h")).await.unwrap();
    a.push_warm(slot(t, "fence-s2", "fence-h")).await.unwrap();
    a.acquire(&record(t, "fence-w1", "fence-c1"), &[])
        .await
        .unwrap();
    let mut ready = a.workspace("fence-w1").await.unwrap().expect("bound");
    ready.status = WorkspaceStatus::Ready;
    a.put_workspace(&ready).await.unwrap();
    let mut lost = ready.clone();
    lost.status = WorkspaceStatus::Lost;
    for stale in [
        Fence {
            owner: "conf-r1".into(),
            epoch: live.epoch - 1,
        },
        Fence {
            owner: live.owner.clone(),
            epoch: live.epoch - 1,
        },
    ] {
        let fenced = |r: Result<(), StoreError>, what: &str| match r {
            Err(StoreError::Fenced { epoch, .. }) => assert_eq!(epoch, stale.epoch),
            other => panic!("{what} under {stale:?}: expected Fenced, got {other:?}"),
        };
        fenced(
            b.remove_host("fence-h", &stale).await.map(drop),
            "remove_host",
        );
        fenced(
            b.take_warm_slot(&slot(t, "fence-s2", "fence-h"), &stale)
                .await
                .map(drop),
            "take_warm_slot",
        );
        fenced(
            b.take_warm_on_host("fence-h", Some(&stale)).await.map(drop),
            "take_warm_on_host",
        );
        fenced(
            b.replace_workspace(&lost, WorkspaceStatus::Ready, Some(&stale))
                .await
                .map(drop),
            "replace_workspace",
        );
        fenced(
            b.remove_workspace_if("fence-w1", Condition::default(), &stale)
                .await
                .map(drop),
            "remove_workspace_if",
        );
    }
    // Nothing changed.
    assert!(
        a.hosts()
            .await
            .unwrap()
            .iter()
            .any(|h| h.report.host_id == "fence-h")
    );
    assert_eq!(a.pool_sizes().await.unwrap().get(t), Some(&1));
    assert_eq!(a.workspace("fence-w1").await.unwrap(), Some(ready.clone()));
    // The live leader's writes go through.
    assert!(
        b.replace_workspace(&lost, WorkspaceStatus::Ready, Some(live))
            .await
            .unwrap()
    );
    assert!(
        b.take_warm_slot(&slot(t, "fence-s2", "fence-h"), live)
            .await
            .unwrap()
    );
    assert!(
        b.remove_workspace_if("fence-w1", Condition::status(WorkspaceStatus::Lost), live)
            .await
            .unwrap()
            .is_some()
    );
    assert!(b.remove_host("fence-h", live).await.unwrap());
}

/// A conditional removal that saw an expiry loses to a keepalive that moved it
/// meanwhile; with the expiry unchanged it removes the record and its binding.
pub async fn removal_by_condition_loses_to_a_keepalive(a: &Store, b: &Store, fence: &Fence) {
    let t = "conf-cond";
    a.acquire(&record(t, "cond-w1", "cond-c1"), &[])
        .await
        .unwrap();
    let mut seen = a.workspace("cond-w1").await.unwrap().expect("bound");
    seen.status = WorkspaceStatus::Ready;
    a.put_workspace(&seen).await.unwrap();
    // A keepalive lands after the reaper read the record.
    let mut kept = seen.clone();
    kept.workspace.expires_at += 600;
    assert!(
        b.replace_workspace(&kept, WorkspaceStatus::Ready, None)
            .await
            .unwrap()
    );
    assert!(
        a.remove_workspace_if("cond-w1", Condition::unchanged_ready(&seen), fence)
            .await
            .unwrap()
            .is_none(),
        "the keepalive wins"
    );
    assert_eq!(a.workspace("cond-w1").await.unwrap(), Some(kept.clone()));
    let gone = a
        .remove_workspace_if("cond-w1", Condition::unchanged_ready(&kept), fence)
        .await
        .unwrap()
        .expect("unchanged: removed");
    assert_eq!(gone, kept);
    assert!(
        b.workspace_for_conversation("cond-c1")
            .await
            .unwrap()
            .is_none()
    );
}

/// One acquire pops one slot and binds; the same conversation again gets the same
/// workspace and pops nothing.
pub async fn acquire_pops_a_slot_once_and_binds_the_conversation(a: &Store, fence: &Fence) {
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
    a.take_warm_on_host("h1", Some(fence)).await.unwrap();
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
            Acquired::Rebuilding => panic!("the store is marked"),
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
pub async fn slots_on_dead_hosts_are_skipped_and_taken_out(a: &Store, fence: &Fence) {
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
    let taken = a.take_warm_on_host("dead-host", Some(fence)).await.unwrap();
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
pub async fn single_warm_slots_are_listed_and_taken_once(a: &Store, b: &Store, fence: &Fence) {
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
    assert!(a.take_warm_slot(&target, fence).await.unwrap());
    assert!(
        !b.take_warm_slot(&target, fence).await.unwrap(),
        "taken twice"
    );
    assert_eq!(a.pool_sizes().await.unwrap().get(t), Some(&2));
}

/// Reports replace each other; the draining mark survives new reports; unknown
/// hosts cannot be drained.
pub async fn hosts_keep_their_draining_mark_across_reports(a: &Store, b: &Store, fence: &Fence) {
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
    assert!(b.remove_host("conf-h1", fence).await.unwrap());
    assert!(!a.remove_host("conf-h1", fence).await.unwrap());
    assert!(
        a.hosts()
            .await
            .unwrap()
            .iter()
            .all(|h| h.report.host_id != "conf-h1")
    );
}

/// A host's record keeps only its not-ready slots (what creates must refuse) and
/// every slot's id; the full list is read per host.
pub async fn host_records_are_brief_and_the_full_slot_list_is_kept(
    a: &Store,
    b: &Store,
    fence: &Fence,
) {
    let slot_info = |id: &str, state: berth_wire::SlotState| berth_wire::SlotInfo {
        slot_id: id.into(),
        template: "default".into(),
        host_id: "brief-h".into(),
        agent_url: format!("http://{id}:9000"),
        state,
        memory_mib: 32,
        memory_limit_mib: 256,
        memory_idle_mib: None,
        reason: None,
        rules_verified_at_ms: None,
        created_at_ms: 1,
        claim_secret: None,
    };
    let mut r = report("brief-h");
    r.slots = vec![
        slot_info("brief-s1", berth_wire::SlotState::Ready),
        slot_info("brief-s2", berth_wire::SlotState::Withdrawn),
        slot_info("brief-s3", berth_wire::SlotState::Starting),
    ];
    a.put_host(r.clone(), 5).await.unwrap();
    let h = b
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.report.host_id == "brief-h")
        .expect("recorded");
    assert_eq!(
        h.report.slots,
        vec![r.slots[1].clone()],
        "not-ready slots only"
    );
    assert_eq!(h.slot_ids, vec!["brief-s1", "brief-s2", "brief-s3"]);
    assert_eq!(b.host_slots("brief-h").await.unwrap(), r.slots);
    assert!(b.host_slots("brief-nobody").await.unwrap().is_empty());
    assert!(a.remove_host("brief-h", fence).await.unwrap());
    assert!(b.host_slots("brief-h").await.unwrap().is_empty());
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
pub async fn takers_and_acquirers_race_and_each_slot_goes_once(
    a: &Store,
    b: &Store,
    fence: &Fence,
) {
    let t = "conf-take-race";
    for i in 0..20 {
        a.push_warm(slot(t, &format!("tr-s{i}"), "tr-h"))
            .await
            .unwrap();
    }
    assert!(
        !a.take_warm_slot(&slot(t, "tr-nope", "tr-h"), fence)
            .await
            .unwrap()
    );
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let fence = fence.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                usize::from(
                    s.take_warm_slot(&slot(t, &format!("tr-s{i}"), "tr-h"), &fence)
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
pub async fn the_binding_names_its_slot_and_finishes_only_while_claiming(
    a: &Store,
    b: &Store,
    fence: &Fence,
) {
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
        a.replace_workspace(&ready, WorkspaceStatus::Claiming, None)
            .await
            .unwrap()
    );
    assert!(
        !b.replace_workspace(&ready, WorkspaceStatus::Claiming, None)
            .await
            .unwrap(),
        "a claim finishes once"
    );
    assert!(
        b.remove_workspace_if(
            "bind-w1",
            Condition::status(WorkspaceStatus::Claiming),
            fence
        )
        .await
        .unwrap()
        .is_none()
    );
    assert!(a.workspace("bind-w1").await.unwrap().is_some());
    // A keepalive (expecting Ready) after a release brings nothing back.
    assert!(a.remove_workspace("bind-w1").await.unwrap().is_some());
    assert!(
        !b.replace_workspace(&ready, WorkspaceStatus::Ready, None)
            .await
            .unwrap()
    );
    assert!(a.workspace("bind-w1").await.unwrap().is_none());
    // A stuck claim is removed by status, with its conversation.
    a.acquire(&record(t, "bind-w2", "bind-c2"), &[])
        .await
        .unwrap();
    let gone = b
        .remove_workspace_if(
            "bind-w2",
            Condition::status(WorkspaceStatus::Claiming),
            fence,
        )
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
        !a.replace_workspace(&ready, WorkspaceStatus::Claiming, None)
            .await
            .unwrap()
    );
}

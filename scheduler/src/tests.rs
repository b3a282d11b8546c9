//! The scheduler's unit tests: its logic on the recording runtime and the memory
//! store (whole-system tests are in `tests/tests/`).

use super::*;
use crate::runtime::Runtime;
use crate::service::not_ready_reason;
use berth_wire::{HostReport, SlotInfo, SlotState};

fn host_with(slot: &str, state: SlotState) -> HostRecord {
    HostRecord {
        report: HostReport {
            host_id: "h1".into(),
            runtime: "docker".into(),
            hostd_url: "http://127.0.0.1:1".into(),
            instance_type: "local".into(),
            branch_limit: 4,
            branch_limit_source: "configured".into(),
            branches_used: 1,
            memory_total_mib: 1024,
            memory_system_mib: 512,
            memory_reserved_mib: 32,
            memory_limit_total_mib: 320,
            draining: false,
            compliant: true,
            slots: vec![SlotInfo {
                slot_id: slot.into(),
                template: "default".into(),
                host_id: "h1".into(),
                agent_url: "http://172.18.0.2:9000".into(),
                state,
                memory_mib: 32,
                memory_limit_mib: 320,
                memory_idle_mib: None,
                reason: Some("egress lock cannot be proven".into()),
                rules_verified_at_ms: None,
                created_at_ms: 0,
                claim_secret: None,
            }],
            reported_at_ms: 0,
            checks: Vec::new(),
        },
        last_seen_ms: 0,
        draining: false,
        slot_ids: vec![slot.into()],
    }
}

fn warm(slot: &str) -> WarmSlot {
    WarmSlot {
        slot_id: slot.into(),
        host_id: "h1".into(),
        template: "default".into(),
        agent_url: "http://172.18.0.2:9000".into(),
        claim_secret: String::new(),
    }
}

#[test]
fn a_slot_its_host_withdrew_is_not_handed_out() {
    let hosts = [host_with("s1", SlotState::Withdrawn)];
    let why = not_ready_reason(&hosts, &warm("s1")).expect("withdrawn is not ready");
    assert!(
        why.contains("Withdrawn") && why.contains("egress lock cannot be proven"),
        "{why}"
    );
    assert!(not_ready_reason(&[host_with("s1", SlotState::Unhealthy)], &warm("s1")).is_some());
    // A report older than the slot's readiness still says Starting: not a reason.
    assert_eq!(
        not_ready_reason(&[host_with("s1", SlotState::Starting)], &warm("s1")),
        None
    );
}

#[test]
fn placement_offers_only_memory_beyond_the_system_reserve() {
    let s = Scheduler::new(Config::default(), Store::memory());
    let views = s.views_of(&[host_with("s1", SlotState::Ready)]);
    // 1024 total - 512 for the system - 32 reserved by the one slot.
    assert_eq!(views[0].memory_free_mib, 480);
}

/// A scheduler on the recording runtime, with host `h1` alive in its store.
async fn on_fake_runtime(pool: usize) -> (Scheduler, runtime::RecordingRuntime) {
    on_fake_runtime_with(Config {
        pools: [("default".to_owned(), pool)].into(),
        ..Config::default()
    })
    .await
}

/// The same with `config`.
async fn on_fake_runtime_with(config: Config) -> (Scheduler, runtime::RecordingRuntime) {
    let fake = runtime::RecordingRuntime::new();
    let s = Scheduler::with_runtime(config, Store::memory(), Arc::new(fake.clone()));
    let mut report = host_with("none", SlotState::Ready).report;
    report.slots.clear();
    report.branch_limit = 10;
    report.memory_total_mib = 4096;
    s.store().put_host(report, now_ms()).await.unwrap();
    (s, fake)
}

#[tokio::test]
async fn refill_starts_slots_through_the_runtime_on_the_placed_host() {
    let (s, fake) = on_fake_runtime(2).await;
    s.reconcile().await;
    for _ in 0..100 {
        if s.store().pool_sizes().await.unwrap().get("default") == Some(&2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.store().pool_sizes().await.unwrap().get("default"),
        Some(&2)
    );
    let started: usize = fake
        .calls()
        .into_iter()
        .map(|c| match c {
            runtime::RuntimeCall::Start {
                host_id,
                template,
                count,
            } if host_id == "h1" && template == "default" => count,
            _ => 0,
        })
        .sum();
    assert_eq!(started, 2, "{:?}", fake.calls());
}

#[tokio::test]
async fn a_host_that_refuses_is_marked_stale_and_the_next_host_takes_the_slots() {
    let (s, fake) = on_fake_runtime(0).await;
    let mut h2 = host_with("none", SlotState::Ready).report;
    h2.host_id = "h2".into();
    h2.slots.clear();
    h2.branch_limit = 10;
    h2.memory_total_mib = 2048;
    s.store().put_host(h2, now_ms()).await.unwrap();
    // h1 has more room, so placement tries it first; it refuses (no ENI left).
    fake.refuse_on("h1", Some("RESOURCE:ENI"));
    let got = s.start_batch("default", 3).await;
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(
            r.as_ref().map(|w| w.host_id.as_str()).ok(),
            Some("h2"),
            "{r:?}"
        );
    }
    // Spread placed some on each; what h1 refused was placed again on h2.
    let on = |h: &str| -> usize {
        fake.calls()
            .iter()
            .map(|c| match c {
                runtime::RuntimeCall::Start { host_id, count, .. } if host_id == h => *count,
                _ => 0,
            })
            .sum()
    };
    let refused = on("h1");
    assert!(refused >= 1, "{:?}", fake.calls());
    assert_eq!(on("h2"), 3, "{:?}", fake.calls());
    assert!(s.is_stale("h1") && !s.is_stale("h2"));
    assert_eq!(
        s.counters().host_refusals.load(Ordering::Relaxed),
        refused as u64
    );
    // While h1 is stale, a new start goes straight to h2.
    fake.refuse_on("h1", None);
    let one = s.start_slot("default").await.unwrap();
    assert_eq!(one.host_id, "h2");
}

#[tokio::test]
async fn a_slot_whose_agent_is_outside_the_allowed_networks_is_discarded() {
    let fake = runtime::RecordingRuntime::new();
    let config = Config {
        pools: [("default".to_owned(), 0)].into(),
        // The fake's agents are on 127.0.0.1: allow only a Docker network.
        agent_networks: addrs::Cidr::parse_list("172.18.0.0/16").unwrap(),
        ..Config::default()
    };
    let s = Scheduler::with_runtime(config, Store::memory(), Arc::new(fake.clone()));
    let mut report = host_with("none", SlotState::Ready).report;
    report.slots.clear();
    s.store().put_host(report, now_ms()).await.unwrap();
    let err = s.start_slot("default").await.unwrap_err();
    assert!(
        err.to_string().contains("outside the allowed networks"),
        "{err}"
    );
    assert_eq!(
        s.counters().agent_address_refused.load(Ordering::Relaxed),
        1
    );
    assert!(
        fake.calls()
            .iter()
            .any(|c| matches!(c, runtime::RuntimeCall::Stop { reason, .. }
        if reason.contains("outside the allowed networks")))
    );
}

/// A stand-in for one host's hostd claim endpoint: refuses the first claim it gets
/// (as when that slot's proxy is gone), takes the others; records what it was sent.
async fn claim_endpoint() -> (String, Arc<Mutex<Vec<(String, SlotClaim)>>>) {
    use axum::{Json, extract::Path, http::StatusCode, routing::post};
    let seen: Arc<Mutex<Vec<(String, SlotClaim)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/slots/{id}/claim",
        post(move |Path(id): Path<String>, Json(c): Json<SlotClaim>| {
            let record = record.clone();
            async move {
                let first = {
                    let mut r = record.lock().unwrap();
                    r.push((id, c));
                    r.len() == 1
                };
                if first {
                    (
                        StatusCode::BAD_GATEWAY,
                        Json(berth_wire::ErrorBody::new(
                            "push_failed",
                            "proxy unreachable",
                        )),
                    )
                } else {
                    (
                        StatusCode::OK,
                        Json(berth_wire::ErrorBody::new("ok", "claimed")),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

#[tokio::test]
async fn a_slot_whose_push_fails_is_discarded_and_the_next_warm_one_serves() {
    let (s, fake) = on_fake_runtime(0).await;
    let (url, seen) = claim_endpoint().await;
    let mut report = host_with("none", SlotState::Ready).report;
    report.slots.clear();
    report.hostd_url = url;
    s.store().put_host(report, now_ms()).await.unwrap();
    for id in ["s1", "s2"] {
        s.store().push_warm(warm(id)).await.unwrap();
    }
    let ws = s
        .acquire(CreateWorkspace {
            conversation_id: "c1".into(),
            env: [("GREETING".to_owned(), "hi".to_owned())].into(),
            egress: Some(vec![berth_wire::EgressRule {
                host: "pypi.org".into(),
                ports: vec![],
            }]),
            ..Default::default()
        })
        .await
        .expect("the second warm slot serves");
    assert_eq!(ws.source, Source::Warm, "still a warm hand-out");
    let record = s.store().workspace(&ws.id).await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    let tried: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(tried.len(), 2, "{tried:?}");
    assert_eq!(record.slot_id, tried[1]);
    let (_, claim) = &seen[1];
    assert_eq!(claim.env.get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(claim.policy.egress[0].host, "pypi.org");
    assert_eq!(claim.policy.workspace_id, ws.id);
    let stops: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(
            |c| matches!(c, runtime::RuntimeCall::Stop { reason, .. } if reason == "claim failed"),
        )
        .collect();
    assert_eq!(
        stops.len(),
        1,
        "the refused slot is stopped: {:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn a_failed_claim_stops_the_slot_through_the_runtime_and_says_why() {
    let (s, fake) = on_fake_runtime(0).await;
    // No warm slot: the cold path starts one; its (fake) agent cannot be claimed.
    let err = s
        .acquire(CreateWorkspace {
            conversation_id: "c1".into(),
            template: None,
            ttl_seconds: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Runtime(_)), "{err:?}");
    let stops: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(
            |c| matches!(c, runtime::RuntimeCall::Stop { reason, .. } if reason == "claim failed"),
        )
        .collect();
    assert_eq!(
        stops.len(),
        3,
        "each of three failed claims stops its slot: {:?}",
        fake.calls()
    );
    assert!(
        fake.list_slots(&[runtime::HostTarget {
            host_id: "h1".into(),
            hostd_url: String::new()
        }])
        .await
        .unwrap()
        .is_empty()
    );
}

#[tokio::test]
async fn a_runtime_that_cannot_start_counts_the_failure() {
    let (s, fake) = on_fake_runtime(0).await;
    fake.fail_starts(Some("RESOURCE:ENI"));
    let err = s.start_slot("default").await.unwrap_err();
    assert!(err.to_string().contains("RESOURCE:ENI"), "{err}");
    assert_eq!(s.counters().slot_start_failed.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_running_slot_no_state_knows_is_stopped_after_the_grace_period() {
    let (s, fake) = on_fake_runtime_with(Config {
        pools: [("default".to_owned(), 1)].into(),
        orphan_grace: Duration::from_millis(80),
        ..Config::default()
    })
    .await;
    // A warm slot the pool knows, and one started behind the state's back.
    let known = s.start_slot("default").await.unwrap();
    s.store().push_warm(known.clone()).await.unwrap();
    let target = runtime::HostTarget {
        host_id: "h1".into(),
        hostd_url: String::new(),
    };
    let orphan = fake
        .start_slots(&target, "default", 1)
        .await
        .pop()
        .unwrap()
        .unwrap();
    s.reap_orphans().await.unwrap();
    let stopped = |f: &runtime::RecordingRuntime| -> Vec<String> {
        f.calls()
            .into_iter()
            .filter_map(|c| match c {
                runtime::RuntimeCall::Stop {
                    slot_id, reason, ..
                } if reason.starts_with("orphan") => Some(slot_id),
                _ => None,
            })
            .collect()
    };
    assert!(stopped(&fake).is_empty(), "stopped before its grace period");
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.reap_orphans().await.unwrap();
    assert_eq!(stopped(&fake), vec![orphan.slot_id.clone()]);
    assert_eq!(s.counters().orphans_stopped.load(Ordering::Relaxed), 1);
    // The known slot still runs.
    let running = fake.list_slots(&[target]).await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].slot_id, known.slot_id);
}

#[test]
fn a_ready_or_not_yet_reported_slot_is_handed_out() {
    assert_eq!(
        not_ready_reason(&[host_with("s1", SlotState::Ready)], &warm("s1")),
        None
    );
    // Created after the host's last report: nothing says otherwise.
    assert_eq!(
        not_ready_reason(&[host_with("s1", SlotState::Withdrawn)], &warm("s2")),
        None
    );
}

#[tokio::test]
async fn a_binding_left_claiming_by_a_dead_replica_is_recovered_and_its_slot_stopped() {
    let (s, fake) = on_fake_runtime_with(Config {
        pools: [("default".to_owned(), 0)].into(),
        claim_recovery: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    // A replica popped s1 for c1 and died before finishing the claim (two minutes
    // ago); another is claiming s2 for c2 right now.
    for id in ["s1", "s2"] {
        s.store().push_warm(warm(id)).await.unwrap();
    }
    let now = now_ms() / 1000;
    let mut stuck = store::conformance::record("default", "w-stuck", "c1");
    stuck.workspace.created_at = now - 120;
    let mut fresh = store::conformance::record("default", "w-fresh", "c2");
    fresh.workspace.created_at = now;
    for r in [&stuck, &fresh] {
        assert!(matches!(
            s.store().acquire(r, &[]).await.unwrap(),
            store::Acquired::Warm(_)
        ));
    }
    let stuck_slot = s
        .store()
        .workspace("w-stuck")
        .await
        .unwrap()
        .unwrap()
        .slot_id;
    assert!(!stuck_slot.is_empty(), "the binding names its slot");
    s.reconcile().await;
    assert!(
        s.store().workspace("w-stuck").await.unwrap().is_none(),
        "stuck binding removed"
    );
    assert!(
        s.store()
            .workspace_for_conversation("c1")
            .await
            .unwrap()
            .is_none(),
        "the conversation is free to be served again"
    );
    assert!(
        s.store().workspace("w-fresh").await.unwrap().is_some(),
        "a claim in progress is left alone"
    );
    let stops: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| {
            matches!(c, runtime::RuntimeCall::Stop { slot_id, reason, .. }
            if *slot_id == stuck_slot && reason == "claim never finished")
        })
        .collect();
    assert_eq!(stops.len(), 1, "{:?}", fake.calls());
    assert_eq!(s.counters().claims_recovered.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_keepalive_after_a_release_does_not_bring_the_workspace_back() {
    let (s, _fake) = on_fake_runtime(0).await;
    let mut r = store::conformance::record("default", "w-k", "c-k");
    r.status = WorkspaceStatus::Ready;
    s.store().put_workspace(&r).await.unwrap();
    assert!(s.keepalive("w-k", Some(60)).await.is_ok());
    s.store().remove_workspace("w-k").await.unwrap();
    assert!(matches!(
        s.keepalive("w-k", Some(60)).await,
        Err(ApiError::NotFound { .. })
    ));
    assert!(s.store().workspace("w-k").await.unwrap().is_none());
}

#[tokio::test]
async fn a_dead_hosts_workspaces_are_marked_lost_and_the_host_forgotten_after_retention() {
    let (s, _fake) = on_fake_runtime_with(Config {
        pools: [("default".to_owned(), 0)].into(),
        host_retention: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    let mut r = store::conformance::record("default", "w-on-h1", "c-on-h1");
    r.status = WorkspaceStatus::Ready;
    r.workspace.host_id = "h1".into();
    s.store().put_workspace(&r).await.unwrap();
    // h1's last heartbeat: 30 s ago (dead, still within retention).
    let report = s.store().hosts().await.unwrap().remove(0).report;
    s.store()
        .put_host(report.clone(), now_ms() - 30_000)
        .await
        .unwrap();
    s.reconcile().await;
    let lost = s.store().workspace("w-on-h1").await.unwrap().unwrap();
    assert_eq!(lost.status, WorkspaceStatus::Lost);
    assert_eq!(lost.workspace.state, berth_wire::WorkspaceState::Lost);
    assert!(matches!(
        s.keepalive("w-on-h1", None).await,
        Err(ApiError::Lost(_))
    ));
    assert_eq!(
        s.store().hosts().await.unwrap().len(),
        1,
        "kept within retention"
    );
    // Past the retention the host is forgotten; the lost workspace stays visible.
    s.store()
        .put_host(report, now_ms() - 120_000)
        .await
        .unwrap();
    s.sweep_soon();
    s.reconcile().await;
    assert!(s.store().hosts().await.unwrap().is_empty());
    assert_eq!(s.counters().hosts_forgotten.load(Ordering::Relaxed), 1);
    assert!(s.store().workspace("w-on-h1").await.unwrap().is_some());
    assert_eq!(s.counters().workspaces_lost.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_acquire_deadline_covers_a_claim_that_hangs_and_nothing_stays_bound() {
    let (s, fake) = on_fake_runtime_with(Config {
        pools: [("default".to_owned(), 0)].into(),
        acquire_deadline: Duration::from_millis(800),
        ..Config::default()
    })
    .await;
    // A hostd whose claim endpoint never answers in time.
    let app = axum::Router::new().route(
        "/v1/slots/{id}/claim",
        axum::routing::post(|| async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut report = host_with("none", SlotState::Ready).report;
    report.slots.clear();
    report.hostd_url = url;
    s.store().put_host(report, now_ms()).await.unwrap();
    s.store().push_warm(warm("s1")).await.unwrap();
    let started = std::time::Instant::now();
    let err = s
        .acquire(CreateWorkspace {
            conversation_id: "c-slow".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, ApiError::NoCapacity), "{err:?}");
    assert!(took < Duration::from_secs(3), "the deadline held: {took:?}");
    assert!(
        s.store()
            .workspace_for_conversation("c-slow")
            .await
            .unwrap()
            .is_none(),
        "nothing left bound"
    );
    assert!(
        fake.calls()
            .iter()
            .any(|c| matches!(c, runtime::RuntimeCall::Stop { slot_id, .. } if slot_id == "s1")),
        "the slot whose claim hung is stopped: {:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn the_fleet_view_names_an_empty_pool_but_not_a_dip_below_target() {
    let (s, _fake) = on_fake_runtime(2).await;
    let v = s.fleet_view().await.unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.starts_with("pool default empty")),
        "{:?}",
        v.problems
    );
    assert!(!v.healthy);
    s.store().push_warm(warm("s1")).await.unwrap();
    let v = s.fleet_view().await.unwrap();
    assert!(
        v.problems.iter().all(|p| !p.starts_with("pool default")),
        "one of two ready is a dip, not yet a problem: {:?}",
        v.problems
    );
    assert_eq!(v.pools[0].ready, 1);
    assert_eq!(v.hosts.len(), 1);
    assert!(v.healthy, "{:?}", v.problems);
}

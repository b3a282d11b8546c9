//! The scheduler's Redis store against a real redis-server: the atomic acquire step
//! across replicas, bindings, dead hosts, the leader lease — and two scheduler
//! replicas sharing one Redis in front of a real hostd.

use std::{sync::Arc, time::Duration};

use berth_scheduler::store::{Acquired, Store, WarmSlot, WorkspaceRecord, WorkspaceStatus};
use berth_tests::{
    redis_server::RedisServer,
    system::{LocalBerth, Options},
};
use berth_wire::{Source, Workspace};
use serde_json::json;

fn record(id: &str, conv: &str) -> WorkspaceRecord {
    WorkspaceRecord {
        workspace: Workspace {
            id: id.into(),
            conversation_id: conv.into(),
            agent_url: String::new(),
            token: "t".repeat(32),
            host_id: String::new(),
            template: "default".into(),
            source: Source::Warm,
            created_at: 1,
            expires_at: 2,
            labels: [("team".to_owned(), "a".to_owned())].into(),
            replaced: None,
        },
        slot_id: String::new(),
        status: WorkspaceStatus::Claiming,
        claim_secret: String::new(),
    }
}

fn slot(id: &str, host: &str) -> WarmSlot {
    WarmSlot {
        slot_id: id.into(),
        host_id: host.into(),
        template: "default".into(),
        agent_url: format!("http://{id}:9000"),
        claim_secret: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_hand_out_one_slot_twice() {
    let redis = RedisServer::start().unwrap();
    let a = Arc::new(Store::redis(&redis.url()).await.unwrap());
    let b = Arc::new(Store::redis(&redis.url()).await.unwrap());
    for i in 0..50 {
        a.push_warm(slot(&format!("s{i}"), "h")).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .acquire(&record(&format!("w{i}"), &format!("c{i}")), &[])
                .await
                .unwrap()
        }));
    }
    let mut seen = std::collections::HashSet::new();
    let mut cold = 0;
    for t in tasks {
        match t.await.unwrap() {
            Acquired::Warm(s) => assert!(seen.insert(s.slot_id), "slot handed out twice"),
            Acquired::Cold => cold += 1,
            Acquired::Existing(r) => panic!("distinct conversations got {r:?}"),
        }
    }
    assert_eq!((seen.len(), cold), (50, 50));
    assert_eq!(a.pool_sizes().await.unwrap()["default"], 0);
}

#[tokio::test]
async fn one_conversation_is_bound_once_and_unbound_on_removal() {
    let redis = RedisServer::start().unwrap();
    let store = Store::redis(&redis.url()).await.unwrap();
    store.push_warm(slot("s1", "h1")).await.unwrap();
    store.push_warm(slot("s2", "h1")).await.unwrap();
    assert_eq!(
        store.acquire(&record("w1", "c1"), &[]).await.unwrap(),
        Acquired::Warm(slot("s1", "h1"))
    );
    match store.acquire(&record("w2", "c1"), &[]).await.unwrap() {
        Acquired::Existing(r) => assert_eq!(r, record("w1", "c1")),
        other => panic!("expected the existing workspace, got {other:?}"),
    }
    assert_eq!(store.pool_sizes().await.unwrap()["default"], 1);
    let got = store
        .workspace_for_conversation("c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.workspace.labels["team"], "a");
    let removed = store.remove_workspace("w1").await.unwrap().unwrap();
    assert_eq!(removed.workspace.id, "w1");
    assert!(
        store
            .workspace_for_conversation("c1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.remove_workspace("w1").await.unwrap().is_none());
}

#[tokio::test]
async fn slots_on_dead_hosts_are_skipped_and_taken_out() {
    let redis = RedisServer::start().unwrap();
    let store = Store::redis(&redis.url()).await.unwrap();
    store.push_warm(slot("s1", "dead")).await.unwrap();
    store.push_warm(slot("s2", "alive")).await.unwrap();
    store.push_warm(slot("s3", "dead")).await.unwrap();
    let got = store
        .acquire(&record("w1", "c1"), &["dead".to_owned()])
        .await
        .unwrap();
    assert_eq!(got, Acquired::Warm(slot("s2", "alive")));
    let taken = store.take_warm_on_host("dead").await.unwrap();
    let ids: Vec<_> = taken.iter().map(|s| s.slot_id.as_str()).collect();
    assert_eq!(ids, ["s1", "s3"]);
    assert_eq!(store.pool_sizes().await.unwrap()["default"], 0);
    assert_eq!(
        store.acquire(&record("w2", "c2"), &[]).await.unwrap(),
        Acquired::Cold
    );
}

#[tokio::test]
async fn the_leader_lease_has_one_holder_and_a_rising_fencing_epoch() {
    let redis = RedisServer::start().unwrap();
    let store = Store::redis(&redis.url()).await.unwrap();
    assert!(store.pool_sizes().await.unwrap().is_empty(), "no pools yet");
    let first = store.lead("r1", 300).await.unwrap();
    assert!(first.is_some());
    assert_eq!(store.lead("r2", 300).await.unwrap(), None);
    // Renewal keeps the epoch.
    assert_eq!(store.lead("r1", 300).await.unwrap(), first);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let second = store.lead("r2", 300).await.unwrap();
    assert!(second > first, "{second:?} after {first:?}");
    assert_eq!(store.lead("r1", 300).await.unwrap(), None);
}

#[tokio::test]
async fn corrupt_records_are_reported_not_crashed_on() {
    let redis = RedisServer::start().unwrap();
    let store = Store::redis(&redis.url()).await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg("berth:ws")
        .arg("bad")
        .arg("{not json")
        .query_async(&mut con)
        .await
        .unwrap();
    let err = store.workspace("bad").await.unwrap_err().to_string();
    assert!(err.contains("berth:ws"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_replicas_share_pools_and_bindings() {
    let redis = RedisServer::start().unwrap();
    let mut berth = LocalBerth::start_with(Options {
        pool: 2,
        state_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let second = berth.add_replica().await;
    assert!(berth.wait_pool(2, Duration::from_secs(60)).await);

    // The same conversation through both replicas at once: one workspace.
    let post = |api: String| {
        let http = berth.http.clone();
        async move {
            http.post(format!("{api}/v1/workspaces"))
                .json(&json!({"conversation_id": "shared"}))
                .send()
                .await
                .unwrap()
                .json::<Workspace>()
                .await
                .unwrap()
        }
    };
    let (a, b) = tokio::join!(post(berth.api.clone()), post(second.clone()));
    assert_eq!(a.id, b.id);
    assert_eq!(a.token, b.token);

    // A workspace made through one replica is visible and deletable through the other.
    let got = berth
        .http
        .get(format!("{second}/v1/workspaces/{}", a.id))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let del = berth
        .http
        .delete(format!("{second}/v1/workspaces/{}", a.id))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let gone = berth
        .http
        .get(format!("{}/v1/workspaces/{}", berth.api, a.id))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);

    // Only one replica leads the refill: the pool holds its target, not twice it.
    assert!(berth.wait_pool(2, Duration::from_secs(60)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sizes = berth.scheduler.store().pool_sizes().await.unwrap();
    assert_eq!(sizes["default"], 2, "{sizes:?}");
    berth.stop().await;
}

/// Listing and taking single warm slots (reconciliation, pool shrink) behave the
/// same in both stores, and a slot is either handed out or taken, never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_warm_slots_are_listed_and_taken_once_in_both_stores() {
    let redis = RedisServer::start().unwrap();
    for store in [Store::memory(), Store::redis(&redis.url()).await.unwrap()] {
        let store = Arc::new(store);
        for i in 0..20 {
            store.push_warm(slot(&format!("s{i}"), "h")).await.unwrap();
        }
        let listed = store.warm_slots().await.unwrap();
        assert_eq!(listed.len(), 20);
        assert!(store.take_warm_slot(&slot("s3", "h")).await.unwrap());
        assert!(
            !store.take_warm_slot(&slot("s3", "h")).await.unwrap(),
            "taken twice"
        );
        assert!(!store.take_warm_slot(&slot("nope", "h")).await.unwrap());
        // Takers and acquirers race for the remaining 19: each slot goes once.
        let mut tasks = Vec::new();
        for i in 0..19 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    s.take_warm_slot(&slot(&format!("s{}", if i >= 3 { i + 1 } else { i }), "h"))
                        .await
                        .unwrap() as usize
                } else {
                    matches!(
                        s.acquire(&record(&format!("w{i}"), &format!("c{i}")), &[])
                            .await
                            .unwrap(),
                        Acquired::Warm(_)
                    ) as usize
                }
            }));
        }
        let mut got = 0;
        for t in tasks {
            got += t.await.unwrap();
        }
        let left = store.pool_sizes().await.unwrap()["default"];
        assert_eq!(got + left, 19, "{got} taken or handed out, {left} left");
    }
}

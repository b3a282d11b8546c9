//! The scheduler's Redis store against a real redis-server: the store conformance
//! suite over two connections (the atomic acquire across replicas, bindings, dead
//! hosts, takes), the leader lease, corrupt records — and two scheduler replicas
//! sharing one Redis in front of a real hostd.

use std::time::Duration;

use berth_scheduler::store::{Store, conformance};
use berth_tests::{
    redis_server::RedisServer,
    system::{LocalBerth, Options},
};
use berth_wire::Workspace;
use serde_json::json;

/// The conformance suite every state store passes (the memory store runs it in the
/// scheduler's unit tests), here against a real redis-server over two connections,
/// as two replicas share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_store_conformance_suite() {
    let redis = RedisServer::start().unwrap();
    let a = Store::redis(&redis.url()).await.unwrap();
    let b = Store::redis(&redis.url()).await.unwrap();
    conformance::run_all(&a, &b).await;
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

/// A replica that popped a real warm slot and died before finishing the claim: the
/// leader recovers the binding (it names the slot), stops that slot on its host, and
/// the conversation's next create through the API is served with a new workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_unfinished_by_a_dead_replica_is_recovered() {
    let redis = RedisServer::start().unwrap();
    let berth = LocalBerth::start_with(Options {
        pool: 2,
        state_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    assert!(berth.wait_pool(2, Duration::from_secs(60)).await);
    // The "dead replica": the atomic acquire step, then nothing (it was killed).
    let dead = Store::redis(&redis.url()).await.unwrap();
    let mut stuck = conformance::record("default", "ws-dead-replica", "conv-dead-replica");
    stuck.workspace.created_at = berth_wire::now_ms() / 1000 - 200;
    let popped = match dead.acquire(&stuck, &[]).await.unwrap() {
        berth_scheduler::store::Acquired::Warm(s) => s,
        other => panic!("expected a warm slot, got {other:?}"),
    };
    let slot_containers =
        || berth_tests::docker::containers_labelled(berth_wire::labels::SLOT, &popped.slot_id);
    assert_eq!(slot_containers().len(), 2, "the popped slot runs");
    let resp = berth
        .http
        .post(format!("{}/v1/workspaces", berth.api))
        .json(&json!({"conversation_id": "conv-dead-replica"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the conversation is served after recovery"
    );
    let ws: Workspace = resp.json().await.unwrap();
    assert_ne!(ws.id, "ws-dead-replica");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !slot_containers().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        slot_containers(),
        Vec::<String>::new(),
        "the stuck slot was stopped, not leaked"
    );
    assert!(
        berth
            .scheduler
            .counters()
            .claims_recovered
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    berth.stop().await;
}

/// Redis loses everything (`FLUSHALL`) under two live workspaces: creates answer
/// the retryable `503 state_rebuilding` (nothing is handed out from the empty
/// state), the leader rebuilds the bindings from hostd's inventory, and then each
/// conversation gets back the very workspace it had (same id and token, agent still
/// serving), a new conversation gets a slot nobody holds, and every slot on the host
/// is claimed at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_data_the_state_is_rebuilt_and_nothing_is_handed_out_twice() {
    let redis = RedisServer::start().unwrap();
    let berth = LocalBerth::start_with(Options {
        pool: 3,
        state_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    assert!(berth.wait_pool(3, Duration::from_secs(60)).await);
    let create = |conv: &'static str| {
        let http = berth.http.clone();
        let api = berth.api.clone();
        async move {
            http.post(format!("{api}/v1/workspaces"))
                .json(&json!({"conversation_id": conv}))
                .send()
                .await
                .unwrap()
        }
    };
    let first: Workspace = create("flush-c1").await.json().await.unwrap();
    let second: Workspace = create("flush-c2").await.json().await.unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();

    let resp = create("flush-c3").await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "state_rebuilding", "{body}");
    let got = berth
        .http
        .get(format!("{}/v1/workspaces/{}", berth.api, first.id))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 503, "not 404: the workspace may come back");

    // As a backend would: retry until served (bindings come back one by one, and
    // the marker is set after the last).
    let served = |conv: &'static str| {
        let create = &create;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let resp = create(conv).await;
                if resp.status() == 200 {
                    break resp.json::<Workspace>().await.unwrap();
                }
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                assert_eq!(status, 503, "only the retryable refusal meanwhile: {body}");
                assert!(body.contains("state_rebuilding"), "{body}");
                assert!(std::time::Instant::now() < deadline, "never rebuilt");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let again = served("flush-c1").await;
    let again2 = served("flush-c2").await;
    assert_eq!((again2.id, again2.token), (second.id.clone(), second.token));
    let agent = berth_tests::agent::AgentClient::for_workspace(again);
    assert_eq!(agent.sh("echo still").await.stdout_text(), "still\n");

    let third = served("flush-c3").await;
    assert!(third.agent_url != first.agent_url && third.agent_url != second.agent_url);

    // hostd's inventory: three claims, three slots, one workspace each.
    let held: Vec<berth_wire::HeldClaim> = berth_tests::get_json(
        &berth.http,
        &format!("{}/v1/inventory", berth.hostd_url),
        Some(&berth_wire::host_token(&berth.host_secret, &berth.host_id)),
    )
    .await;
    // What hostd holds for the rebuild (tokens, claim secrets) is only in the
    // token-checked inventory: never in its open report or page.
    for open in ["/status", "/"] {
        let text =
            berth_tests::get_text(&berth.http, &format!("{}{open}", berth.hostd_url), None).await;
        for c in &held {
            assert!(!text.contains(&c.token), "{open} shows a workspace token");
            if let Some(secret) = &c.claim_secret {
                assert!(!text.contains(secret), "{open} shows a claim secret");
            }
        }
    }
    let refused = berth
        .http
        .get(format!("{}/v1/inventory", berth.hostd_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        401,
        "the inventory needs the host's token"
    );
    let slots: std::collections::HashSet<_> = held.iter().map(|c| &c.slot_id).collect();
    let workspaces: std::collections::HashSet<_> = held.iter().map(|c| &c.workspace_id).collect();
    assert_eq!(
        (held.len(), slots.len(), workspaces.len()),
        (3, 3, 3),
        "{held:?}"
    );
    for w in [&first.id, &second.id, &third.id] {
        assert!(workspaces.contains(w), "{w} not held: {held:?}");
    }
    assert!(
        berth
            .scheduler
            .counters()
            .state_rebuilds
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "the first start and the flush"
    );
    berth.stop().await;
}

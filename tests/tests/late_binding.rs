//! Late binding, first part: the environment a conversation brings is pushed to a
//! warm slot's agent at claim, so any warm slot serves it, and every command sees
//! it; bad or reserved names are refused with the field named, and nothing is bound.

use std::time::Duration;

use berth_tests::{agent::AgentClient, system::LocalBerth};
use berth_wire::{Source, Workspace};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_slot_takes_the_conversations_environment_at_claim() {
    let berth = LocalBerth::start(2).await;
    assert!(
        berth.wait_pool(2, Duration::from_secs(60)).await,
        "pool never filled"
    );
    let create = |body: Value| {
        berth
            .http
            .post(format!("{}/v1/workspaces", berth.api))
            .json(&body)
            .send()
    };
    // Refused before anything is bound: each error names the field and the variable.
    for (env, says) in [
        (json!({"1BAD": "x"}), "1BAD"),
        (
            json!({"BERTH_CLAIM_SECRET_SHA256": "x"}),
            "set by the platform",
        ),
        (
            json!({"https_proxy": "http://elsewhere"}),
            "set by the platform",
        ),
        (json!({"BIG": "x".repeat(5000)}), "at most 4096"),
    ] {
        let resp = create(json!({"conversation_id": "env-bad", "env": env}))
            .await
            .unwrap();
        assert_eq!(resp.status(), 422);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_field");
        assert_eq!(body["error"]["field"], "env");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{msg}");
    }
    let listed: Value = berth
        .http
        .get(format!(
            "{}/v1/workspaces?conversation_id=env-bad",
            berth.api
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["workspaces"],
        json!([]),
        "a refused request bound nothing"
    );

    let resp = create(json!({
        "conversation_id": "env-good",
        "env": {"GREETING": "hello there", "API_BASE": "https://api.example.test/v1"}
    }))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let ws: Workspace = resp.json().await.unwrap();
    assert_eq!(
        ws.source,
        Source::Warm,
        "a warm slot served per-conversation settings"
    );
    let agent = AgentClient::for_workspace(ws.clone());
    let out = agent.sh("echo \"$GREETING|$API_BASE|$HTTPS_PROXY\"").await;
    assert_eq!(
        out.stdout_text(),
        "hello there|https://api.example.test/v1|http://127.0.0.1:8080\n"
    );
    // A command's own env still wins over the conversation's.
    let out = agent
        .exec(json!({"shell": "echo $GREETING", "env": {"GREETING": "per command"}}))
        .await;
    assert_eq!(out.stdout_text(), "per command\n");
    // The values are not in the state store's record.
    let record = berth
        .scheduler
        .store()
        .workspace(&ws.id)
        .await
        .unwrap()
        .unwrap();
    let stored = serde_json::to_string(&record.workspace).unwrap();
    assert!(!stored.contains("hello there"), "{stored}");
    berth.stop().await;
}

//! When a host dies, its conversations get new workspaces elsewhere: the scheduler
//! notices the missing heartbeats, takes the host's warm slots out of the pools,
//! refills them on the hosts that remain, and answers the next request for an
//! affected conversation with a new workspace that says which one it replaced.

use std::time::{Duration, Instant};

use berth_tests::system::LocalBerth;
use berth_wire::{ExecEvent, Workspace};
use serde_json::{Value, json};

async fn acquire(berth: &LocalBerth, conv: &str) -> Workspace {
    let resp = berth
        .http
        .post(format!("{}/v1/workspaces", berth.api))
        .json(&json!({"conversation_id": conv}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{conv}");
    resp.json().await.unwrap()
}

async fn echo(berth: &LocalBerth, ws: &Workspace) -> bool {
    let Ok(resp) = berth
        .http
        .post(format!("{}/v1/exec", ws.agent_url))
        .bearer_auth(&ws.token)
        .json(&json!({"cmd": ["echo", "alive"]}))
        .send()
        .await
    else {
        return false;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<ExecEvent>(l).ok())
        .any(|e| matches!(e, ExecEvent::Exit { code: Some(0), .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_of_a_dead_host_get_new_workspaces_elsewhere() {
    let mut berth = LocalBerth::start(2).await;
    let second = berth.add_host().await;
    let first = berth.host_id.clone();
    assert!(berth.wait_pool(2, Duration::from_secs(60)).await);

    // Workspaces on both hosts (placement spreads; cold starts fill in if needed).
    let mut by_host: std::collections::HashMap<String, Workspace> = Default::default();
    for i in 0..8 {
        let ws = acquire(&berth, &format!("conv-{i}")).await;
        by_host.entry(ws.host_id.clone()).or_insert(ws);
        if by_host.len() == 2 {
            break;
        }
    }
    assert_eq!(by_host.len(), 2, "workspaces never landed on both hosts");
    let victim = by_host[&first].clone();
    let survivor = by_host[&second].clone();
    assert!(echo(&berth, &victim).await && echo(&berth, &survivor).await);

    // The first host dies: no goodbye, its containers gone with it.
    let died = Instant::now();
    berth.kill_host(&first);
    assert!(
        !echo(&berth, &victim).await,
        "the dead host's workspace still runs"
    );

    // The scheduler notices from the heartbeats alone.
    let mut detected = None;
    let mut last = Value::Null;
    while died.elapsed() < Duration::from_secs(30) {
        let hosts: Value =
            berth_tests::get_json(&berth.http, &format!("{}/v1/hosts", berth.api), None).await;
        let dead = hosts["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host_id"] == first.as_str() && h["healthy"] == false);
        last = hosts;
        if dead {
            detected = Some(died.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detected =
        detected.unwrap_or_else(|| panic!("the dead host was never marked unhealthy: {last}"));
    eprintln!("host death detected after {detected:?}");

    // Until its conversation asks again, the dead host's workspace shows as lost.
    let mut state = Value::Null;
    for _ in 0..50 {
        let got: Value = berth
            .http
            .get(format!("{}/v1/workspaces/{}", berth.api, victim.id))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        state = got["state"].clone();
        if state == "lost" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "lost", "GET shows the dead host's workspace as lost");

    // On-call's fleet page says where the problem is, and its JSON says the same.
    let fleet: Value =
        berth_tests::get_json(&berth.http, &format!("{}/v1/fleet", berth.api), None).await;
    assert_eq!(fleet["healthy"], false, "{fleet}");
    assert!(
        fleet["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap()
            .starts_with(&format!("host {first} dead"))),
        "{fleet}"
    );
    assert!(
        fleet["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "workspace_lost" && e["subject"] == victim.id.as_str()),
        "{fleet}"
    );
    let html = berth_tests::get_text(&berth.http, &format!("{}/", berth.api), None).await;
    assert!(html.contains(&format!("host {first} dead")), "{html}");
    assert!(html.contains("<span class=dead>DEAD</span>"), "{html}");
    let second_url = fleet["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host_id"] == second.as_str())
        .map(|h| h["status_url"].as_str().unwrap().to_owned())
        .expect("the survivor is listed");
    assert!(
        html.contains(&format!("<a href=\"{second_url}\">{second}</a>")),
        "each host links to its own status page: {html}"
    );
    let page = berth.http.get(&second_url).send().await.unwrap();
    assert_eq!(page.status(), 200, "the link leads to hostd's page");
    let keepalive = berth
        .http
        .post(format!(
            "{}/v1/workspaces/{}/keepalive",
            berth.api, victim.id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        keepalive.status(),
        409,
        "a lost workspace is not kept alive"
    );

    // The affected conversation gets a new workspace on the surviving host, saying so.
    let asked = Instant::now();
    let replacement = acquire(&berth, &victim.conversation_id).await;
    eprintln!("replacement handed out {:?} after asking", asked.elapsed());
    assert_ne!(replacement.id, victim.id);
    assert_eq!(replacement.replaced.as_deref(), Some(victim.id.as_str()));
    assert_eq!(replacement.host_id, second);
    assert!(echo(&berth, &replacement).await);
    // Asking again returns the replacement, now without the `replaced` note; the
    // lost one is gone.
    let again = acquire(&berth, &victim.conversation_id).await;
    assert_eq!(again.id, replacement.id);
    let old = berth
        .http
        .get(format!("{}/v1/workspaces/{}", berth.api, victim.id))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404);

    // The other host's conversation keeps its workspace.
    let kept = acquire(&berth, &survivor.conversation_id).await;
    assert_eq!(kept.id, survivor.id);
    assert_eq!(kept.replaced, None);
    assert!(echo(&berth, &kept).await);

    // The pool is whole again, all of it on the surviving host.
    assert!(berth.wait_pool(2, Duration::from_secs(60)).await);
    let fresh = acquire(&berth, "after-death").await;
    assert_eq!(fresh.host_id, second);
    assert!(echo(&berth, &fresh).await);
    let fleet: Value =
        berth_tests::get_json(&berth.http, &format!("{}/v1/fleet", berth.api), None).await;
    let kinds: Vec<&str> = fleet["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"placed") && kinds.contains(&"replaced"),
        "{kinds:?}"
    );
    berth.stop().await;
}

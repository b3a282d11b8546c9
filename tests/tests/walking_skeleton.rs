//! The thin path through all four components, for real: the scheduler's HTTP API
//! hands out a warm workspace, the agent inside a hardened container runs a command
//! and streams its events, the same conversation gets the same workspace, and DELETE
//! removes the containers.

use std::time::Duration;

use berth_tests::{docker, system::LocalBerth};
use berth_wire::{ExecEvent, Workspace, labels};
use serde_json::{Value, json};

/// Runs one command through the agent and returns its events.
async fn exec(http: &reqwest::Client, ws: &Workspace, body: Value) -> Vec<ExecEvent> {
    let resp = http
        .post(format!("{}/v1/exec", ws.agent_url))
        .bearer_auth(&ws.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = resp.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

fn stdout_of(events: &[ExecEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Stdout {
                data,
                base64: false,
            } => Some(data.as_str()),
            _ => None,
        })
        .collect()
}

async fn create(berth: &LocalBerth, body: Value) -> reqwest::Response {
    berth
        .http
        .post(format!("{}/v1/workspaces", berth.api))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_exec_reacquire_release() {
    let berth = LocalBerth::start(2).await;
    assert!(
        berth.wait_pool(2, Duration::from_secs(60)).await,
        "pool never filled"
    );

    let resp = create(&berth, json!({"conversation_id": "c1"})).await;
    assert_eq!(resp.status(), 200);
    let ws: Workspace = resp.json().await.unwrap();
    assert_eq!(ws.conversation_id, "c1");
    assert_eq!(ws.host_id, berth.host_id);
    assert_eq!(ws.source, berth_wire::Source::Warm);
    assert!(ws.agent_url.starts_with("http://"), "{}", ws.agent_url);
    assert!(ws.token.len() >= 32);

    // echo hello runs inside the workspace container and streams to an exit event.
    let events = exec(&berth.http, &ws, json!({"cmd": ["echo", "hello"]})).await;
    assert!(
        matches!(events.first(), Some(ExecEvent::Started { .. })),
        "{events:?}"
    );
    assert_eq!(stdout_of(&events), "hello\n");
    match events.last() {
        Some(ExecEvent::Exit {
            code, timed_out, ..
        }) => {
            assert_eq!(*code, Some(0));
            assert!(!timed_out);
        }
        other => panic!("last event is not exit: {other:?}"),
    }

    // A wrong token is refused by the agent.
    let wrong = berth
        .http
        .post(format!("{}/v1/exec", ws.agent_url))
        .bearer_auth("0123456789abcdef0123456789abcdef")
        .json(&json!({"cmd": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    // The same conversation gets the same workspace.
    let again: Workspace = create(&berth, json!({"conversation_id": "c1"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again.id, ws.id);
    assert_eq!(again.token, ws.token);
    let listed: Value = berth
        .http
        .get(format!("{}/v1/workspaces?conversation_id=c1", berth.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["workspaces"][0]["id"], ws.id.as_str());

    // The pool refills behind the acquire.
    assert!(
        berth.wait_pool(2, Duration::from_secs(60)).await,
        "pool did not refill"
    );

    // DELETE removes the workspace's containers.
    let slot_containers = || {
        let ip = ws.agent_url.clone();
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={}={}", labels::HOST, berth.host_id))
            .output()
            .unwrap();
        (ip, String::from_utf8_lossy(&out.stdout).lines().count())
    };
    let (_, before) = slot_containers();
    let del = berth
        .http
        .delete(format!("{}/v1/workspaces/{}", berth.api, ws.id))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let (_, after) = slot_containers();
    assert_eq!(after, before - 2, "workspace and proxy containers removed");
    let gone = berth
        .http
        .get(format!("{}/v1/workspaces/{}", berth.api, ws.id))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let body: Value = gone.json().await.unwrap();
    assert_eq!(body["error"]["code"], "workspace_not_found");
    // The workspace is gone with its containers.
    berth_tests::assert_workspace_gone(&berth.http, &ws).await;

    let host = berth.host_id.clone();
    berth.stop().await;
    assert!(
        docker::containers_labelled(labels::HOST, &host).is_empty(),
        "stop removes every container of the host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_container_is_hardened() {
    let berth = LocalBerth::start(1).await;
    assert!(berth.wait_pool(1, Duration::from_secs(60)).await);
    let ws: Workspace = create(&berth, json!({"conversation_id": "hardening"}))
        .await
        .json()
        .await
        .unwrap();

    // What Docker says about the container…
    let client = docker::connect().await;
    let find = |role: &'static str| {
        let out = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("label={}={}", labels::HOST, berth.host_id))
            .args(["--filter", &format!("label={}={role}", labels::ROLE)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let ws_id = find("workspace");
    let proxy_id = find("proxy");
    let c = client.inspect_container(&ws_id, None).await.unwrap();
    let hc = c.host_config.unwrap();
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(hc.cap_add.unwrap_or_default().is_empty());
    let security_opt = hc.security_opt.unwrap_or_default();
    assert!(security_opt.iter().any(|o| o == "no-new-privileges:true"));
    // Berth's own profile, not the daemon's default, is applied.
    let profile = security_opt
        .iter()
        .find_map(|o| o.strip_prefix("seccomp="))
        .expect("a seccomp profile is set");
    let ours: serde_json::Value =
        serde_json::from_str(berth_seccomp::WORKSPACE_PROFILE_JSON).unwrap();
    let applied: serde_json::Value = serde_json::from_str(profile).unwrap();
    assert_eq!(applied, ours);
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.pids_limit, Some(128));
    assert_eq!(hc.memory, Some(256 * 1024 * 1024));
    assert_ne!(hc.privileged, Some(true));
    let proxy_full = client
        .inspect_container(&proxy_id, None)
        .await
        .unwrap()
        .id
        .unwrap();
    assert_eq!(hc.network_mode, Some(format!("container:{proxy_full}")));
    let tmpfs = hc.tmpfs.unwrap_or_default();
    assert!(
        tmpfs.contains_key("/workspace") && tmpfs.contains_key("/tmp"),
        "{tmpfs:?}"
    );
    assert_eq!(c.config.unwrap().user.as_deref(), Some("1000:1000"));

    // …and what the workspace itself sees.
    let events = exec(
        &berth.http,
        &ws,
        json!({"shell": "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
                        touch /rootfs-write 2>&1; echo data > /workspace/f && cat /workspace/f; \
                        ls /var/run/docker.sock 2>&1; true"}),
    )
    .await;
    let out = stdout_of(&events);
    let err: String = events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Stderr { data, .. } => Some(data.as_str()),
            _ => None,
        })
        .collect();
    let all = format!("{out}{err}");
    assert!(out.starts_with("1000\n"), "{all}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{all}");
    assert!(out.contains("NoNewPrivs:\t1"), "{all}");
    assert!(out.contains("Seccomp:\t2"), "{all}");
    assert!(all.contains("Read-only file system"), "{all}");
    assert!(out.contains("data\n"), "/workspace is writable: {all}");
    assert!(
        all.contains("No such file or directory"),
        "no docker.sock: {all}"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_when_the_pool_is_empty_and_bad_input_is_named() {
    let berth = LocalBerth::start(0).await;
    // Wait for hostd's first heartbeat so placement knows the host.
    let mut known = false;
    for _ in 0..100 {
        if !berth.scheduler.store().hosts().await.unwrap().is_empty() {
            known = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(known, "hostd never reported");

    let resp = create(&berth, json!({"conversation_id": "cold-1"})).await;
    assert_eq!(resp.status(), 200);
    let ws: Workspace = resp.json().await.unwrap();
    assert_eq!(ws.source, berth_wire::Source::Cold);
    let events = exec(&berth.http, &ws, json!({"cmd": ["sh", "-c", "exit 3"]})).await;
    assert!(
        matches!(events.last(), Some(ExecEvent::Exit { code: Some(3), .. })),
        "{events:?}"
    );

    // Bad input: every answer is JSON with a stable code, naming the field.
    for (body, status, code, field) in [
        (json!({}), 400, "invalid_json", None),
        (
            json!({"conversation_id": ""}),
            422,
            "invalid_field",
            Some("conversation_id"),
        ),
        (
            json!({"conversation_id": "x", "template": "gpu"}),
            422,
            "invalid_field",
            Some("template"),
        ),
        (
            json!({"conversation_id": "x", "ttl_seconds": 0}),
            422,
            "invalid_field",
            Some("ttl_seconds"),
        ),
        (
            json!({"conversation_id": "x", "colour": "red"}),
            400,
            "invalid_json",
            None,
        ),
    ] {
        let resp = create(&berth, body.clone()).await;
        assert_eq!(resp.status(), status, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], code, "{body}: {err}");
        if let Some(f) = field {
            assert_eq!(err["error"]["field"], f, "{body}: {err}");
        }
    }
    let raw = berth
        .http
        .post(format!("{}/v1/workspaces", berth.api))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let err: Value = raw.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_json");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key must be a string"),
        "{err}"
    );

    // Unknown ids: 404 with a JSON body, for every route that takes one.
    for (method, path) in [
        ("GET", "/v1/workspaces/ws-nope"),
        ("DELETE", "/v1/workspaces/ws-nope"),
        ("POST", "/v1/workspaces/ws-nope/keepalive"),
    ] {
        let resp = berth
            .http
            .request(method.parse().unwrap(), format!("{}{path}", berth.api))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{method} {path}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(
            err["error"]["code"], "workspace_not_found",
            "{method} {path}"
        );
    }
    berth.stop().await;
}

/// Releases while hostd's enforcement pass runs (every second here) never make the
/// host look non-compliant: a slot destroyed while its egress lock is read back has
/// ended, it has not failed its lock. Seen on `scheduler dev`: the probe of a
/// just-released slot failed ("cannot enter network namespace") and the whole host
/// was marked non-compliant — nothing placed there — until the next pass. The race
/// is narrow (this churn did not hit it on the old code in two runs): the decision
/// itself is tested deterministically in hostd's `enforce.rs`
/// (`a_slot_has_ended_only_when_none_of_its_containers_runs`); this holds the
/// property under real churn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_during_enforcement_keep_the_host_compliant() {
    let berth = LocalBerth::start(6).await;
    assert!(berth.wait_pool(6, Duration::from_secs(60)).await);
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (http, url, watching) = (
            berth.http.clone(),
            berth.hostd_url.clone(),
            watching.clone(),
        );
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let status: Value =
                    berth_tests::get_json(&http, &format!("{url}/status"), None).await;
                if status["compliant"] != true {
                    seen.push(status["checks"].clone());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    for i in 0..12 {
        let ws: Workspace = create(&berth, json!({"conversation_id": format!("churn-{i}")}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            berth.delete(&format!("/v1/workspaces/{}", ws.id)).await.0,
            200
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    assert!(
        seen.is_empty(),
        "the host looked non-compliant {} times: {:?}",
        seen.len(),
        seen.first()
    );
    berth.stop().await;
}

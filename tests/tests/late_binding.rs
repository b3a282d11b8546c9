//! Late binding: what a conversation brings (env, files, egress allowlist, credential
//! routes) is pushed into a warm slot at claim, through hostd, so any warm slot serves
//! any conversation. Bad or disallowed settings are refused with the field named and
//! nothing is bound. The second test runs two conversations from one pool against
//! real parts: moto's Secrets Manager and an HTTPS upstream, both listening on the
//! host network's gateway (this machine's own address as the slots see it).

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

// === the whole claim: env, files, egress and credential routes ===

use berth_proxy_testbed::{EchoUpstream, TempDir, TestCa};
use berth_scheduler::templates::{TemplatePolicy, Templates};
use berth_tests::moto::MotoServer;

const TOKEN_A: &str = "token-for-conversation-a-7f3c9e";
const TOKEN_B: &str = "token-for-conversation-b-91d2aa";

/// The template the test runs under: egress to `*.test` names only, which the
/// proxy's file configuration pins to this machine's gateway (a private address,
/// hence `allow_private`); requests may add routes to `mcp.test` with secrets under
/// `berth/mcp-`.
fn templates() -> Templates {
    let policy = TemplatePolicy {
        egress_allowed: vec!["*.test".into()],
        allow_private: vec![
            "172.16.0.0/12".into(),
            "192.168.0.0/16".into(),
            "10.0.0.0/8".into(),
        ],
        upstreams: vec!["mcp.test".into()],
        secrets: vec!["berth/mcp-*".into()],
        ..TemplatePolicy::default()
    };
    Templates {
        policies: [("default".to_owned(), policy)].into(),
    }
}

/// `CONNECT host:port` from inside the workspace through its proxy; the status line.
async fn connect_from_inside(agent: &AgentClient, target: &str) -> String {
    let out = agent
        .sh(&format!(
            "(printf 'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n'; sleep 1) | timeout 2 nc 127.0.0.1 8080 | head -n 1"
        ))
        .await;
    out.stdout_text().trim().to_owned()
}

async fn egress(berth: &LocalBerth, ws: &Workspace, rules: Option<Value>) -> (u16, Value) {
    let url = format!("{}/v1/workspaces/{}/egress", berth.api, ws.id);
    let req = match rules {
        Some(r) => berth.http.put(url).json(&json!({ "egress": r })),
        None => berth.http.get(url),
    };
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_conversations_from_one_warm_pool_each_get_only_their_own_settings() {
    let config_dir = TempDir::new("late-binding-proxy").unwrap();
    let mut berth = Some(
        LocalBerth::start_with(berth_tests::system::Options {
            pool: 0,
            proxy_config_dir: Some(config_dir.path().to_path_buf()),
            proxy_env: berth_tests::moto::proxy_env(),
            templates: Some(templates()),
            ..Default::default()
        })
        .await,
    );
    let b = berth.as_ref().unwrap();
    // Listeners on the machine's own address as slots see it: Secrets Manager
    // (moto) and an HTTPS upstream with a CA of the test's.
    let gw = b.gateway();
    let moto = MotoServer::start_on(&gw.to_string()).expect("moto on the gateway");
    let sm = moto.secretsmanager();
    for (name, value) in [("berth/mcp-a", TOKEN_A), ("berth/mcp-b", TOKEN_B)] {
        sm.create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .expect("create secret");
    }
    let ca = TestCa::new().unwrap();
    let up = EchoUpstream::start_on(
        &ca,
        &["mcp.test", "pkgs.test"],
        std::net::SocketAddr::new(gw, 0),
    )
    .await
    .unwrap();
    let port = up.port();
    std::fs::copy(&ca.pem_path, config_dir.path().join("ca.pem")).unwrap();
    std::fs::write(
        config_dir.path().join("proxy.toml"),
        format!(
            "dns = \"hosts-only\"\n[hosts]\n\"mcp.test\" = [\"{gw}\"]\n\"pkgs.test\" = [\"{gw}\"]\n\
             [tls]\nroots = \"none\"\nextra_ca_files = [\"/etc/berth/proxy/ca.pem\"]\n\
             [secrets_manager]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    for p in [
        config_dir.path().to_path_buf(),
        config_dir.path().join("ca.pem"),
        config_dir.path().join("proxy.toml"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    b.set_pool(2).await;
    assert!(
        b.wait_pool(2, Duration::from_secs(90)).await,
        "pool never filled"
    );

    let create = |body: Value| {
        b.http
            .post(format!("{}/v1/workspaces", b.api))
            .json(&body)
            .send()
    };
    // Outside the template's policy: refused with the field and a code of its own,
    // and nothing is bound.
    let mcp_route = |secret: &str| json!({"prefix": "/mcp/", "upstream": format!("https://mcp.test:{port}"), "auth": "bearer", "secret": secret});
    for (body, code, field) in [
        (
            json!({"egress": [{"host": "10.1.2.3"}]}),
            "ip_literal_not_allowed",
            "egress[0].host",
        ),
        (
            json!({"egress": [{"host": "pypi.org"}]}),
            "egress_not_allowed",
            "egress[0].host",
        ),
        (
            json!({"credentials": [{"prefix": "/x/", "upstream": "https://evil.example.com", "auth": "bearer", "secret": "berth/mcp-a"}]}),
            "upstream_not_allowed",
            "credentials[0].upstream",
        ),
        (
            json!({"credentials": [mcp_route("prod/db-password")]}),
            "secret_not_allowed",
            "credentials[0].secret",
        ),
        (
            json!({"files": [{"path": "../etc/passwd", "content": "x"}]}),
            "invalid_field",
            "files[0].path",
        ),
    ] {
        let mut body = body;
        body["conversation_id"] = json!("policy-refused");
        let resp = create(body.clone()).await.unwrap();
        assert_eq!(resp.status(), 422, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], code, "{err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }

    let pkgs = format!("pkgs.test:{port}");
    let resp = create(json!({
        "conversation_id": "conv-a",
        "env": {"WHO": "conversation a"},
        "egress": [{"host": "pkgs.test", "ports": [port]}],
        "credentials": [mcp_route("berth/mcp-a")],
        "files": [{"path": "notes/hello.txt", "content": "hello from a\n", "mode": "0600"}],
    }))
    .await
    .unwrap();
    if resp.status() != 200 {
        let body = resp.text().await.unwrap_or_default();
        let logs = std::process::Command::new("sh").arg("-c").arg(format!("for c in $(docker ps -aq --filter label=berth.host={}); do docker inspect -f '{{{{.Name}}}} {{{{.State.Status}}}} exit={{{{.State.ExitCode}}}} oom={{{{.State.OOMKilled}}}}' $c; docker logs --tail 20 $c 2>&1; done", b.host_id)).output().unwrap();
        panic!(
            "create A: {body}\n{}",
            String::from_utf8_lossy(&logs.stdout)
        );
    }
    let ws_a: Workspace = resp.json().await.unwrap();
    let resp = create(json!({
        "conversation_id": "conv-b",
        "env": {"WHO": "conversation b"},
        "credentials": [mcp_route("berth/mcp-b")],
    }))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let ws_b: Workspace = resp.json().await.unwrap();
    assert_eq!(
        (ws_a.source, ws_b.source),
        (Source::Warm, Source::Warm),
        "both served warm"
    );
    let (a, bb) = (
        AgentClient::for_workspace(ws_a.clone()),
        AgentClient::for_workspace(ws_b.clone()),
    );

    // Env and files: each sees its own.
    assert_eq!(
        a.sh("echo $WHO; cat notes/hello.txt; stat -c %a notes/hello.txt")
            .await
            .stdout_text(),
        "conversation a\nhello from a\n600\n"
    );
    assert_eq!(
        bb.sh("echo $WHO; ls notes 2>&1 | head -c 3")
            .await
            .stdout_text(),
        "conversation b\nls:"
    );

    // Egress: A's allowlist opens the upstream, B's does not.
    let before = up.connections();
    let t0 = berth_wire::now_ms();
    assert_eq!(connect_from_inside(&a, &pkgs).await, "HTTP/1.1 200 OK");
    assert!(up.connections() > before, "A's tunnel reached the upstream");
    // The proxy notes the egress it let out (the idle reaper counts it).
    let (_, view) = egress(b, &ws_a, None).await;
    assert!(view["last_egress_ms"].as_u64() >= Some(t0), "{view}");
    let refused = connect_from_inside(&bb, &pkgs).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    // Credential routes: each conversation's own secret, injected by its proxy,
    // never shown to the workspace (the upstream echoes it; the proxy drops that).
    for (agent, token) in [(&a, TOKEN_A), (&bb, TOKEN_B)] {
        let seen_before = up.count();
        let out = agent
            .sh("wget -Y off -S -q -O - http://127.0.0.1:8080/mcp/echo-auth 2>&1")
            .await;
        let text = out.stdout_text();
        assert!(text.contains("200"), "{text}");
        assert!(
            !text.contains("token-for-conversation"),
            "the workspace saw a secret: {text}"
        );
        let seen = up.seen();
        let last = &seen[seen_before..];
        assert!(
            last.iter()
                .any(|s| s.header("authorization") == Some(&format!("Bearer {token}"))),
            "the upstream got this conversation's token: {last:?}"
        );
        let all = agent
            .sh("env; cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; grep -rl token-for /workspace /tmp /etc 2>/dev/null; echo end")
            .await
            .stdout_text();
        assert!(
            all.ends_with("end\n") && !all.contains("token-for-conversation"),
            "a secret is visible inside the workspace: {all}"
        );
    }

    // The admin channel is out of the workspace's reach: the connection itself is
    // refused (on loopback and on the slot's own address), and the proxy will not
    // forward to it.
    let slot_ip = ws_b
        .agent_url
        .trim_start_matches("http://")
        .rsplit_once(':')
        .unwrap()
        .0
        .to_owned();
    for target in ["127.0.0.1", slot_ip.as_str()] {
        let out = bb
            .sh(&format!(
                "printf 'PUT /v1/egress HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer '$BERTH_CLAIM_SECRET_SHA256'\\r\\nContent-Length: 32\\r\\n\\r\\n{{\"egress\":[{{\"host\":\"pkgs.test\"}}]}}' | timeout 2 nc {target} 8081; echo rc=$?"
            ))
            .await;
        let text = out.stdout_text() + &out.stderr_text();
        assert!(
            !text.contains("HTTP/1.1"),
            "the admin channel answered the workspace: {text}"
        );
        // Reset by the egress lock before any byte reached the proxy.
        assert!(text.contains("refused"), "{target}: {text}");
    }
    let via_proxy = bb
        .sh("wget -S -q -O - http://127.0.0.1:8081/v1/egress 2>&1; true")
        .await
        .stdout_text();
    assert!(
        via_proxy.contains("403"),
        "the proxy refuses to forward to its own admin port: {via_proxy}"
    );
    // And without the slot's claim secret (its hash, which the workspace can read,
    // included) even hostd's side of the channel is refused.
    let admin = format!("http://{slot_ip}:8081/v1/egress");
    let hash = bb
        .sh("printf %s $BERTH_CLAIM_SECRET_SHA256")
        .await
        .stdout_text();
    for bearer in ["wrong", hash.as_str()] {
        let r = b.http.get(&admin).bearer_auth(bearer).send().await.unwrap();
        assert_eq!(r.status(), 401, "admin with {bearer:?}");
    }
    assert!(
        connect_from_inside(&bb, &pkgs)
            .await
            .starts_with("HTTP/1.1 403"),
        "B's policy unchanged"
    );

    // What B was refused, with time and code, for on-call.
    let (status, view) = egress(b, &ws_b, None).await;
    assert_eq!(status, 200, "{view}");
    let refusals = view["refused"].as_array().unwrap();
    assert!(
        refusals.iter().any(|r| r["destination"] == pkgs
            && r["code"] == "connect_not_allowed"
            && r["at_ms"].as_u64() > Some(0)),
        "{view}"
    );

    // Changes while running: widen B, tighten A; new connections follow at once.
    let (status, view) = egress(
        b,
        &ws_b,
        Some(json!([{"host": "pkgs.test", "ports": [port]}])),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["egress"],
        json!([{"host": "pkgs.test", "ports": [port]}])
    );
    assert_eq!(connect_from_inside(&bb, &pkgs).await, "HTTP/1.1 200 OK");
    let (status, _) = egress(b, &ws_a, Some(json!([]))).await;
    assert_eq!(status, 200);
    assert!(
        connect_from_inside(&a, &pkgs)
            .await
            .starts_with("HTTP/1.1 403")
    );
    // A change outside the template's policy changes nothing.
    let (status, err) = egress(b, &ws_a, Some(json!([{"host": "pypi.org"}]))).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("egress_not_allowed")),
        "{err}"
    );
    assert_eq!(egress(b, &ws_a, None).await.1["egress"], json!([]));

    // No secret value in the scheduler's state.
    for ws in [&ws_a, &ws_b] {
        let record = b
            .scheduler
            .store()
            .workspace(&ws.id)
            .await
            .unwrap()
            .unwrap();
        let stored = serde_json::to_string(&record).unwrap();
        assert!(!stored.contains("token-for-conversation"), "{stored}");
    }
    // Released: the slot, and with it the proxy holding the secret, is gone.
    let slot_a = b
        .scheduler
        .store()
        .workspace(&ws_a.id)
        .await
        .unwrap()
        .unwrap()
        .slot_id;
    assert!(!slot_a.is_empty());
    let named =
        |slot: &str| berth_tests::docker::containers_labelled(berth_wire::labels::SLOT, slot);
    assert_eq!(named(&slot_a).len(), 2, "A's agent and proxy run");
    let resp = b
        .http
        .delete(format!("{}/v1/workspaces/{}", b.api, ws_a.id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        named(&slot_a),
        Vec::<String>::new(),
        "A's proxy is gone with its secret"
    );
    berth.take().unwrap().stop().await;
}

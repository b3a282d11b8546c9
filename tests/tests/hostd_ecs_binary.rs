//! The real `hostd` binary in ECS mode, started as the AMI's unit starts it: no
//! images, no host id, only the runtime, the host token and the scheduler's URL.
//! It learns who it is from instance metadata (IMDSv2: a session token first, then
//! each value with it) and what runs here from the ECS agent's introspection API.
//! Both are stand-ins on loopback here (the metadata address itself is never
//! contacted); its own seccomp filter is enforcing throughout.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, put},
};
use berth_scheduler::{Config, Scheduler, store::Store};
use serde_json::json;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the metadata stand-in saw.
#[derive(Default)]
struct Seen {
    token_requests: Vec<Option<String>>,
    /// (path, token presented)
    reads: Vec<(String, Option<String>)>,
}

const TOKEN: &str = "imds-session-token-for-tests";

async fn token(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap) -> (StatusCode, String) {
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ok = ttl.is_some();
    seen.lock().unwrap().token_requests.push(ttl);
    if ok {
        (StatusCode::OK, TOKEN.into())
    } else {
        (StatusCode::BAD_REQUEST, String::new())
    }
}

/// IMDSv2 only: a read without the session token is refused, as on the Berth AMI.
async fn meta(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> (StatusCode, String) {
    let presented = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ok = presented.as_deref() == Some(TOKEN);
    seen.lock()
        .unwrap()
        .reads
        .push((uri.path().to_owned(), presented));
    let value = match uri.path() {
        "/latest/meta-data/instance-id" => "i-0b3e7c0ffee000001",
        "/latest/meta-data/instance-type" => "m6i.xlarge",
        _ => return (StatusCode::NOT_FOUND, String::new()),
    };
    if ok {
        (StatusCode::OK, value.to_owned())
    } else {
        (StatusCode::UNAUTHORIZED, String::new())
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostd_in_ecs_mode_reads_its_identity_with_imdsv2_and_reports_without_images() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let imds = serve(
        Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/instance-id", get(meta))
            .route("/latest/meta-data/instance-type", get(meta))
            .with_state(seen.clone()),
    )
    .await;
    let agent = serve(
        Router::new()
            .route(
                "/v1/metadata",
                get(|| async {
                    axum::Json(json!({"Cluster": "berth-staging",
                        "ContainerInstanceArn": "arn:aws:ecs:us-east-1:123456789012:container-instance/berth-staging/1",
                        "Version": "stand-in"}))
                }),
            )
            .route("/v1/tasks", get(|| async { axum::Json(json!({"Tasks": []})) })),
    )
    .await;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let scheduler = Scheduler::new(
        Config {
            pools: [("default".to_owned(), 0)].into(),
            host_token: secret.clone(),
            ..Config::default()
        },
        Store::memory(),
    );
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(berth_scheduler::run(
        scheduler.clone(),
        listener,
        async move {
            let _ = rx.changed().await;
        },
    ));
    let port = berth_tests::free_port();
    let hostd = Command::new(berth_tests::bin_dir().join("hostd"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BERTH_HOST_RUNTIME", "ecs")
        .env("BERTH_HOST_TOKEN", &secret)
        .env("BERTH_SCHEDULER_URL", &api)
        .env("BERTH_ECS_CLUSTER", "berth-staging")
        .env("BERTH_HOSTD_LISTEN", format!("127.0.0.1:{port}"))
        .env("BERTH_IMDS_ENDPOINT", &imds)
        .env("BERTH_ECS_AGENT_URL", &agent)
        // This machine's firewall is not ours to change in a test.
        .env("BERTH_HOST_RULES", "off")
        .env("BERTH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hostd");
    let mut hostd = Killed(hostd);
    let mut report = None;
    for _ in 0..100 {
        assert!(hostd.0.try_wait().unwrap().is_none(), "hostd exited");
        if let Some(h) = scheduler.store().hosts().await.unwrap().into_iter().next() {
            report = Some(h.report);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = report.expect("hostd never reported");
    assert_eq!(report.host_id, "i-0b3e7c0ffee000001");
    assert_eq!(report.runtime, "ecs");
    assert_eq!(report.instance_type, "m6i.xlarge");
    // From the ENI-trunking table: m6i.xlarge takes 20 awsvpc tasks.
    assert_eq!(report.branch_limit, 20);
    assert_eq!(report.branch_limit_source, "eni-trunking table");
    assert_eq!(report.branches_used, 0);
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.token_requests.len(), 1, "one IMDSv2 session");
        assert!(
            s.token_requests[0].is_some(),
            "the token request carries its TTL"
        );
        assert_eq!(s.reads.len(), 2);
        for (path, token) in &s.reads {
            assert_eq!(
                token.as_deref(),
                Some(TOKEN),
                "{path} read without the session token"
            );
        }
    }
    // The ECS agent check passed; the slot API is ECS's, not hostd's.
    let status: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let check = status["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ecs_agent")
        .cloned()
        .expect("ecs_agent check");
    assert_eq!(check["ok"], true, "{check}");
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/slots"))
        .bearer_auth(berth_wire::host_token(&secret, "i-0b3e7c0ffee000001"))
        .json(&json!({"slot_id": "s1", "template": "default"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ecs_managed");
    // ECS tasks bring their own network: hostd makes no bridge of its own.
    let nets = Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            "name=berth-i-0b3e7c0ffee000001",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&nets.stdout).trim().is_empty(),
        "hostd made a Docker network in ECS mode"
    );
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", hostd.0.id())).unwrap();
    assert!(proc_status.contains("Seccomp:\t2"), "hostd is not filtered");
    drop(hostd);
    let _ = stop.send(true);
    let _ = server.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostd_in_ecs_mode_refuses_to_start_without_imdsv2() {
    // Metadata that only speaks IMDSv1: no session tokens.
    let imds = serve(Router::new().route(
        "/latest/api/token",
        put(|| async { (StatusCode::FORBIDDEN, "") }),
    ))
    .await;
    let out = Command::new(berth_tests::bin_dir().join("hostd"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BERTH_HOST_RUNTIME", "ecs")
        .env("BERTH_HOST_TOKEN", "0123456789abcdef0123")
        .env(
            "BERTH_HOSTD_LISTEN",
            format!("127.0.0.1:{}", berth_tests::free_port()),
        )
        .env("BERTH_IMDS_ENDPOINT", &imds)
        .env("BERTH_ECS_AGENT_URL", "http://127.0.0.1:1")
        .env("BERTH_HOST_RULES", "off")
        .output()
        .expect("run hostd");
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("instance metadata") && err.contains("403"),
        "the error names the metadata service and its answer: {err}"
    );
}

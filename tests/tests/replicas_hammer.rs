//! Exactly once under crashes, with real processes: two `scheduler serve` binaries
//! on one real redis-server, in front of a stand-in host (hostd's slot API without
//! containers, see `berth_tests::standin_host`, so slots come as fast as the
//! scheduler asks). 2,000 concurrent creates for 500 conversations; the replica
//! that leads is killed with SIGKILL mid-burst. Afterwards every conversation has
//! exactly one workspace, no slot is held by two, and once the survivor has
//! reconciled (claims left by the dead replica recovered, orphans stopped) every
//! slot on the host is either a conversation's or in the pool — nothing leaked.
//!
//! The heavy figure is the suite's only size: `BERTH_HAMMER_CONVERSATIONS` (default
//! 500) and `BERTH_HAMMER_CREATES` (default 2,000) change it.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_tests::{redis_server::RedisServer, standin_host::StandinHost};
use berth_wire::Workspace;
use serde_json::{Value, json};

const API: &str = "hammer-backend-token-0123";
const OPERATOR: &str = "hammer-operator-token-0123";
const HOSTS: &str = "hammer-host-secret-0123456";

/// One `scheduler serve` process; SIGKILLed on drop if still running.
struct Replica {
    child: Child,
    url: String,
}

impl Replica {
    fn start(redis: &str) -> Self {
        let port = berth_tests::free_port();
        let child = Command::new(berth_tests::bin_dir().join("scheduler"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--state", redis, "--pools", "default=40"])
            .args([
                "--acquire-deadline-secs",
                "10",
                "--claim-recovery-secs",
                "13",
            ])
            .args(["--orphan-grace-secs", "4"])
            .args(["--idle-timeout-secs", "0", "--refill-parallelism", "20"])
            .env("BERTH_API_TOKEN", API)
            .env("BERTH_OPERATOR_TOKEN", OPERATOR)
            .env("BERTH_HOST_TOKEN", HOSTS)
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the scheduler binary (cargo build --bins)");
        let up = berth_tests::wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "scheduler did not listen on {port}");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn kill(&mut self) {
        // SIGKILL: no drain, no goodbye, in-flight claims cut wherever they are.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn operator_get(http: &reqwest::Client, url: &str) -> Value {
    berth_tests::get_json(http, url, Some(OPERATOR)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_killed_mid_burst_serve_each_conversation_exactly_once() {
    let conversations = env_or("BERTH_HAMMER_CONVERSATIONS", 500);
    let creates = env_or("BERTH_HAMMER_CREATES", 2_000);
    let redis = RedisServer::start().unwrap();
    // The one to be killed starts first, so it holds the leader lease.
    let mut doomed = Replica::start(&redis.url());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let survivor = Replica::start(&redis.url());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = StandinHost::start(listener, &survivor.url, HOSTS, "hammer-h1").await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    // Up once the (fresh) state is built and the pool is full.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pools = operator_get(&http, &format!("{}/v1/pools", survivor.url)).await;
        if pools["pools"][0]["ready"].as_u64() >= Some(40) {
            break;
        }
        assert!(Instant::now() < deadline, "pool never filled: {pools}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let answers: Arc<tokio::sync::Mutex<HashMap<usize, HashSet<String>>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let retried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(creates);
    for i in 0..creates {
        let conv = i % conversations;
        let first = if i % 2 == 0 {
            doomed.url.clone()
        } else {
            survivor.url.clone()
        };
        let fallback = survivor.url.clone();
        let (http, answers, done, retried) =
            (http.clone(), answers.clone(), done.clone(), retried.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"conversation_id": format!("hammer-{conv}")});
            let mut target = first;
            let give_up = Instant::now() + Duration::from_secs(120);
            loop {
                let sent = http
                    .post(format!("{target}/v1/workspaces"))
                    .bearer_auth(API)
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        let ws: Workspace = r.json().await.unwrap();
                        answers.lock().await.entry(conv).or_default().insert(ws.id);
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    Ok(r) => {
                        // Only the retryable refusal is acceptable here.
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        assert_eq!(status, 503, "create hammer-{conv}: {text}");
                    }
                    // The killed replica: the backend retries on another.
                    Err(_) => target = fallback.clone(),
                }
                retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                assert!(Instant::now() < give_up, "hammer-{conv} never served");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Mid-burst: a quarter of the creates answered.
    while done.load(std::sync::atomic::Ordering::Relaxed) < creates / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.kill();
    let killed_after = done.load(std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "{creates} creates for {conversations} conversations in {:?}; leader killed after {killed_after} answers; {} retries",
        started.elapsed(),
        retried.load(std::sync::atomic::Ordering::Relaxed)
    );

    // Every request for one conversation got the same workspace.
    let answers = answers.lock().await;
    assert_eq!(answers.len(), conversations);
    for (conv, ids) in answers.iter() {
        assert_eq!(ids.len(), 1, "hammer-{conv} got {ids:?}");
    }
    let ids: HashSet<String> = answers.values().flatten().cloned().collect();
    assert_eq!(ids.len(), conversations, "one workspace per conversation");

    // The survivor leads now and reconciles: the dead replica's stuck claims are
    // recovered (13 s), its orphaned slots stopped (4 s grace), the pool refilled.
    let inventory_url = format!("{}/v1/inventory", host.url);
    let host_token = berth_wire::host_token(HOSTS, &host.host_id);
    let deadline = Instant::now() + Duration::from_secs(90);
    let (held, report, ready) = loop {
        let held: Vec<berth_wire::HeldClaim> =
            berth_tests::get_json(&http, &inventory_url, Some(&host_token)).await;
        let report: berth_wire::HostReport =
            berth_tests::get_json(&http, &format!("{}/status", host.url), None).await;
        let pools = operator_get(&http, &format!("{}/v1/pools", survivor.url)).await;
        let ready = pools["pools"][0]["ready"].as_u64().unwrap_or(0) as usize;
        let starting = pools["pools"][0]["starting"].as_u64().unwrap_or(0);
        let claimed: HashSet<&str> = held.iter().map(|c| c.workspace_id.as_str()).collect();
        let settled = claimed.len() == held.len()
            && claimed == ids.iter().map(String::as_str).collect::<HashSet<_>>()
            && report.slots.len() == held.len() + ready
            && starting == 0;
        if settled {
            break (held, report, ready);
        }
        assert!(
            Instant::now() < deadline,
            "never reconciled: {} claims for {} workspaces, {} slots on the host, {ready} ready, {starting} starting",
            held.len(),
            ids.len(),
            report.slots.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // No slot is held twice, and every slot is a conversation's or the pool's.
    let slots: HashSet<&str> = held.iter().map(|c| c.slot_id.as_str()).collect();
    assert_eq!(slots.len(), held.len(), "a slot holds two claims");
    assert_eq!(report.slots.len(), conversations + ready);

    // The state agrees: 500 workspaces, each on its own slot.
    let listed: Value =
        berth_tests::get_json(&http, &format!("{}/v1/workspaces", survivor.url), Some(API)).await;
    let listed = listed["workspaces"].as_array().unwrap();
    assert_eq!(listed.len(), conversations);
    let metrics =
        berth_tests::get_text(&http, &format!("{}/metrics", survivor.url), Some(OPERATOR)).await;
    eprintln!(
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("berth_claims_recovered_total")
                || l.starts_with("berth_orphans_stopped_total")
                || l.starts_with("berth_fenced_writes_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(host);
}

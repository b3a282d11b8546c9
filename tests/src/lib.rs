//! Berth's test bed: helpers that start each real part on a free loopback port and
//! clean up after themselves, even when a test fails.
//!
//! - [`redis_server::RedisServer`]: Debian's `redis-server`, one per test.
//! - [`moto::MotoServer`]: moto in server mode (ECS, Secrets Manager), one per test,
//!   with AWS clients that can never fall back to the instance metadata service.
//! - [`docker`]: everything a run creates carries `berth.test-run=<run id>`; a run id
//!   names a process (pid and start time), so leftovers of a crashed run are found
//!   and removed by the next one ([`docker::sweep_leftovers`]).
//! - [`agent::AgentClient`]: runs commands and file operations through a real
//!   workspace's agent and collects what they produced.
//! - [`ecs_bed::EcsBed`]: the ECS path — moto behind a recording, fault-injecting
//!   forwarder ([`ecs_forwarder`]), an ECS-agent stand-in ([`ecs_agent`]) and a hostd
//!   in ECS mode per "host", and the scheduler on the ECS runtime.
//! - [`deployment`]: what `terraform/` and `ami/` pass to each binary, and what each
//!   binary accepts (its real `--help`), for `tests/tests/deploy_flags.rs`.
//! - [`system::LocalBerth`]: hostd (docker runtime) and the scheduler (in memory),
//!   in this process, on free ports — the same code path as `scheduler dev`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod deployment;
pub mod docker;
pub mod ecs_agent;
pub mod ecs_bed;
pub mod ecs_forwarder;
pub mod moto;
pub mod netns;
pub mod redis_server;
pub mod standin_host;
pub mod system;

use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, read and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Polls `check` every 20 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until `scheduler`'s `template` pool holds `n` ready slots.
pub async fn wait_pool(
    scheduler: &berth_scheduler::Scheduler,
    template: &str,
    n: usize,
    limit: Duration,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let ready = scheduler
            .store()
            .pool_sizes()
            .await
            .ok()
            .and_then(|s| s.get(template).copied())
            .unwrap_or(0);
        if ready >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `GET url` (with `token` as a bearer token, if given), its body decoded as JSON;
/// panics with the body if it is not that.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> T {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let text = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

/// `GET url`, its body as text (a page, Prometheus metrics).
pub async fn get_text(http: &reqwest::Client, url: &str, token: Option<&str>) -> String {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> std::path::PathBuf {
    let here = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test binary> → target/debug
    here.parent()
        .and_then(|p| p.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// After DELETE, nothing at the workspace's old address serves it: either nothing
/// answers, or (Docker reuses addresses) a different, unclaimed slot does, and the
/// old token is refused there.
pub async fn assert_workspace_gone(http: &reqwest::Client, ws: &berth_wire::Workspace) {
    let health = http
        .get(format!("{}/health", ws.agent_url))
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await;
    let Ok(resp) = health else { return };
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_ne!(
        body["workspace_id"].as_str(),
        Some(ws.id.as_str()),
        "the deleted workspace still answers at {}",
        ws.agent_url
    );
    let exec = http
        .post(format!("{}/v1/exec", ws.agent_url))
        .bearer_auth(&ws.token)
        .json(&serde_json::json!({"cmd": ["true"]}))
        .send()
        .await
        .expect("the slot now at that address answers");
    assert!(
        exec.status().is_client_error(),
        "the deleted workspace's token still works at {}: {}",
        ws.agent_url,
        exec.status()
    );
}

//! The scheduler and its store under load (`docs/BENCHMARKS.md`, "scheduler"):
//! warm acquires through the HTTP API on Redis state at a fixed rate, the
//! sustained claim rate, and a raw Redis round trip over the same client library,
//! all in one run on one machine.
//!
//! `cargo bench -p berth-tests --bench acquire` (needs Debian's `redis-server`).
//! The slots are stand-ins (`berth_tests::standin_host`: hostd's slot API and the
//! claim without containers, on loopback), so this measures the scheduler, its
//! Redis store and one claim call per acquire, not Docker. Eight stand-in hosts.
//! The pool is filled directly before each phase (slots made on the stand-ins and
//! put into the pool); during a phase the scheduler's own refill runs at its
//! default parallelism (4). Settings: `BERTH_BENCH_RATE` (acquires/s, default 500), `BERTH_BENCH_SECS`
//! (default 10), `BERTH_BENCH_CLAIMS` (creates in the claim-rate phase, default 20000),
//! `BERTH_BENCH_CONCURRENCY` (its closed-loop clients, default 64).

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_scheduler::{Config, Scheduler, store::Store};
use berth_tests::{redis_server::RedisServer, standin_host::StandinHost};
use berth_wire::{Source, Workspace};
use serde_json::json;

const HOST_SECRET: &str = "bench-host-secret-0123456789";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(what: &str, mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&ms, 0.50), percentile(&ms, 0.99));
    println!(
        "{what}: n={} p50={p50:.3} ms p90={:.3} ms p99={p99:.3} ms max={:.3} ms",
        ms.len(),
        percentile(&ms, 0.90),
        ms[ms.len() - 1]
    );
    (p50, p99)
}

async fn pool_ready(s: &Scheduler) -> usize {
    s.store()
        .pool_sizes()
        .await
        .ok()
        .and_then(|p| p.get("default").copied())
        .unwrap_or(0)
}

/// Fills the pool to `target`: slots made on the stand-in hosts and put into the
/// pool directly, 64 at a time (the scheduler's own refill, at its default
/// parallelism of 4, would take minutes for thousands). The target is set first so
/// the leader neither shrinks the pool nor races the fill; during the measured
/// phases the refill replaces what is handed out at its default pace.
async fn fill(s: &Scheduler, hosts: &[StandinHost], target: usize) -> Duration {
    s.set_pool_target("default", target).unwrap();
    let started = Instant::now();
    let have = pool_ready(s).await;
    let http = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(have));
    let targets: Arc<Vec<(String, String)>> = Arc::new(
        hosts
            .iter()
            .map(|h| (h.url.clone(), h.host_id.clone()))
            .collect(),
    );
    let batch = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (s, http, next, targets, batch) = (
            s.clone(),
            http.clone(),
            next.clone(),
            targets.clone(),
            batch.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= target {
                    return;
                }
                let (url, host_id) = &targets[i % targets.len()];
                let info: berth_wire::SlotInfo = http
                    .post(format!("{url}/v1/slots"))
                    .bearer_auth(berth_wire::host_token(HOST_SECRET, host_id))
                    .json(&json!({"slot_id": format!("s-fill-{batch}-{i}"), "template": "default"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                s.store()
                    .push_warm(berth_scheduler::store::WarmSlot {
                        slot_id: info.slot_id,
                        host_id: info.host_id,
                        template: "default".into(),
                        agent_url: info.agent_url,
                        claim_secret: info.claim_secret.unwrap_or_default(),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    // The hosts list the new slots in their next heartbeat (1 s); let them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    started.elapsed()
}

const BACKEND_TOKEN: &str = "bench-backend-token-0123456789";

/// One `POST /v1/workspaces` for `conversation`: its latency (ms, send to the end
/// of the answer) and where the workspace came from. Anything but 200 fails the run.
async fn timed_create(http: &reqwest::Client, api: &str, conversation: &str) -> (f64, Source) {
    let t = Instant::now();
    let resp = http
        .post(format!("{api}/v1/workspaces"))
        .bearer_auth(BACKEND_TOKEN)
        .json(&json!({ "conversation_id": conversation }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    if status != 200 {
        panic!(
            "create {conversation}: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let ws: Workspace = resp.json().await.unwrap();
    (t.elapsed().as_secs_f64() * 1e3, ws.source)
}

/// The scheduler's own view of warm acquires, from its Prometheus histogram.
async fn histogram(http: &reqwest::Client, api: &str, when: &str) {
    let metrics = berth_tests::get_text(
        http,
        &format!("{api}/metrics"),
        Some("bench-operator-token-0123456789"),
    )
    .await;
    let warm: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("berth_acquire_duration_seconds_bucket{outcome=\"warm\""))
        .map(|l| {
            let le = l
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            let n = l.rsplit(' ').next().unwrap_or("?");
            format!("≤{le}s:{n}")
        })
        .collect();
    println!(
        "  scheduler's berth_acquire_duration_seconds{{outcome=\"warm\"}} {when} (cumulative): {}",
        warm.join(" ")
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("acquire: bench");
        return;
    }
    let rate = env_or("BERTH_BENCH_RATE", 500);
    let secs = env_or("BERTH_BENCH_SECS", 10);
    let claims = env_or("BERTH_BENCH_CLAIMS", 20_000);
    let concurrency = env_or("BERTH_BENCH_CONCURRENCY", 64);
    let paced = rate * secs;

    let redis = RedisServer::start().expect("redis-server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let config = Config {
        pools: [("default".to_owned(), 0)].into(),
        host_token: HOST_SECRET.into(),
        idle_timeout: Duration::ZERO,
        api_token: Some(BACKEND_TOKEN.into()),
        operator_token: Some("bench-operator-token-0123456789".into()),
        ..Config::default()
    };
    let store = Store::redis(&redis.url()).await.expect("redis store");
    let scheduler = Scheduler::new(config, store);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(berth_scheduler::run(
        scheduler.clone(),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut hosts = Vec::new();
    for i in 0..8 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        hosts.push(StandinHost::start(l, &api, HOST_SECRET, &format!("bench-h{i}")).await);
    }
    // The fresh store is rebuilt (nothing to find) once the hosts have reported.
    let started = Instant::now();
    while !scheduler.store().state_marked().await.unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "state never marked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. Redis round trip over the store's client library (HGET on a missing
    // conversation, as the acquire path's first read).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = redis::aio::ConnectionManager::new(client).await.unwrap();
    let mut rtt = Vec::with_capacity(5000);
    for i in 0..5000 {
        let t = Instant::now();
        let _: Option<String> = redis::cmd("HGET")
            .arg("berth:conv")
            .arg(format!("bench-rtt-{i}"))
            .query_async(&mut con)
            .await
            .unwrap();
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (rtt_p50, rtt_p99) = summary("redis round trip (HGET)", rtt);

    // 2. Warm acquires at a fixed rate, open loop (a request leaves every 1/rate s
    // whether or not the last one answered).
    let took = fill(&scheduler, &hosts, paced + 50).await;
    println!(
        "pool filled with {} stand-in slots in {:.1} s",
        paced + 50,
        took.as_secs_f64()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(paced);
    for i in 0..paced {
        tokio::time::sleep_until(t0 + period * i as u32).await;
        let (http, api) = (http.clone(), api.clone());
        tasks.push(tokio::spawn(async move {
            timed_create(&http, &api, &format!("bench-paced-{i}")).await
        }));
    }
    let mut lat = Vec::with_capacity(paced);
    let mut cold = 0;
    for t in tasks {
        let (ms, source) = t.await.unwrap();
        cold += usize::from(source == Source::Cold);
        lat.push(ms);
    }
    let offered = paced as f64 / t0.elapsed().as_secs_f64();
    let (p50, p99) = summary(
        &format!("warm acquire at {rate}/s (HTTP, Redis state)"),
        lat,
    );
    println!(
        "  offered {offered:.0}/s; cold hand-outs: {cold}; p50 {:.1}x and p99 {:.1}x the Redis round trip's",
        p50 / rtt_p50,
        p99 / rtt_p99
    );

    histogram(&http, &api, "after the paced phase").await;

    // 3. The sustained claim rate: closed loop, `concurrency` clients, for `claims`
    // creates, from a pool filled with as many (and refilled meanwhile).
    fill(&scheduler, &hosts, claims + pool_ready(&scheduler).await).await;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t1 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, api, next) = (http.clone(), api.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut served = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= claims {
                    return served;
                }
                served.push(timed_create(&http, &api, &format!("bench-rate-{i}")).await);
            }
        }));
    }
    let mut lat = Vec::with_capacity(claims);
    let mut cold = 0;
    for w in workers {
        for (ms, source) in w.await.unwrap() {
            cold += usize::from(source == Source::Cold);
            lat.push(ms);
        }
    }
    let elapsed = t1.elapsed().as_secs_f64();
    println!(
        "sustained claims: {claims} in {elapsed:.2} s = {:.0} claims/s with {concurrency} clients (cold: {cold})",
        claims as f64 / elapsed
    );
    summary("  their latency", lat);

    histogram(&http, &api, "after both phases").await;
    let _ = stop_tx.send(());
    drop(hosts);

    // 4. The same warm acquire with real containers (hostd, Docker, the agent's
    // claim) on Redis state, at the pace a pool of real slots allows.
    if std::env::var("BERTH_BENCH_DOCKER").as_deref() != Ok("0") {
        real_containers(&redis).await;
    }
}

/// Warm acquires of real slots: a pool of `BERTH_BENCH_REAL` (default 30) filled
/// first, then acquired at 10/s, open loop; each is released afterwards.
async fn real_containers(redis: &RedisServer) {
    use berth_tests::system::{LocalBerth, Options};
    let n = env_or("BERTH_BENCH_REAL", 30);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let berth = LocalBerth::start_with(Options {
        pool: n,
        state_url: Some(redis.url()),
        branch_limit: n as u32 + 10,
        ..Options::default()
    })
    .await;
    assert!(
        berth.wait_pool(n, Duration::from_secs(600)).await,
        "the real pool never filled"
    );
    let period = Duration::from_millis(100);
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(t0 + period * i as u32).await;
        let (http, api) = (berth.http.clone(), berth.api.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ws: Workspace = http
                .post(format!("{api}/v1/workspaces"))
                .json(&json!({"conversation_id": format!("bench-real-{i}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (t.elapsed().as_secs_f64() * 1e3, ws)
        }));
    }
    let mut lat = Vec::new();
    let mut cold = 0;
    let mut handed = Vec::new();
    for t in tasks {
        let (ms, ws) = t.await.unwrap();
        cold += usize::from(ws.source == Source::Cold);
        lat.push(ms);
        handed.push(ws);
    }
    summary(
        &format!("warm acquire, real containers (hostd + Docker), Redis state, {n} at 10/s"),
        lat,
    );
    println!("  cold hand-outs: {cold}");
    for ws in handed {
        let _ = berth
            .http
            .delete(format!("{}/v1/workspaces/{}", berth.api, ws.id))
            .send()
            .await;
    }
    berth.stop().await;
}

//! Benchmarks of the workspace-agent against `docker exec`, side by side in one run.
//!
//! Starts one workspace container hardened as hostd makes them (user 1000,
//! read-only root, tmpfs /workspace and /tmp, cap drop ALL, no-new-privileges,
//! pids 128, 256 MiB) from the image built of this build's agent binary, then:
//!
//! 1. idle RSS of the agent (PID 1 of the container), claimed and unused;
//! 2. exec round trip of `true`: through the agent (HTTP, keep-alive), and through
//!    `docker exec` — both the CLI and the Engine API (create, start attached,
//!    inspect for the exit code), same container;
//! 3. output throughput: `cat` of a 100 MiB file of random bytes (so the agent
//!    sends base64) and of text, through the agent (the client parses every event
//!    and decodes the bytes) and through `docker exec cat` (bytes into a pipe).
//!
//! Run: `cargo bench -p berth-agent --bench agent` (release build; needs Docker and
//! Debian's busybox-static). Prints a Markdown table for docs/BENCHMARKS.md. The
//! container is labelled `berth.bench=<pid>` and removed at the end, even on panic.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use base64::Engine;
use berth_wire::ExecEvent;
use futures_util::StreamExt;
use serde_json::json;

const TOKEN: &str = "bench-token-0123456789abcdef";
const ROUND_TRIPS_AGENT: usize = 500;
const ROUND_TRIPS_DOCKER: usize = 40;
const BIG: u64 = 100 * 1024 * 1024;
const THROUGHPUT_RUNS: usize = 3;

/// The benchmark's container; removed on drop.
struct Container {
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` passes nothing
    // we need, and this is not a test: run only when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("agent bench: run with `cargo bench -p berth-agent --bench agent`");
        return;
    }
    let agent_bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_workspace-agent"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let (container, base, host_pid) = start_workspace(&http, &agent_bin, "default").await;
    let name = container.name.clone();

    // 1. Idle RSS, claimed, after a moment of nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_kib = rss_kib(&host_pid);

    // 2. Exec round trip of `true`.
    let agent_rt = {
        for _ in 0..20 {
            exec_agent(&http, &base, json!({"cmd": ["true"]})).await; // warm up
        }
        let mut samples = Vec::with_capacity(ROUND_TRIPS_AGENT);
        for _ in 0..ROUND_TRIPS_AGENT {
            let t = Instant::now();
            let (code, _) = exec_agent(&http, &base, json!({"cmd": ["true"]})).await;
            samples.push(t.elapsed());
            assert_eq!(code, Some(0));
        }
        Stats::of(samples)
    };
    let docker_cli_rt = {
        let mut samples = Vec::with_capacity(ROUND_TRIPS_DOCKER);
        for _ in 0..ROUND_TRIPS_DOCKER {
            let t = Instant::now();
            let st = Command::new("docker")
                .args(["exec", &name, "true"])
                .status()
                .unwrap();
            samples.push(t.elapsed());
            assert!(st.success());
        }
        Stats::of(samples)
    };
    let engine = bollard::Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let docker_api_rt = {
        let mut samples = Vec::with_capacity(ROUND_TRIPS_DOCKER);
        for _ in 0..ROUND_TRIPS_DOCKER {
            let t = Instant::now();
            let code = exec_engine(&engine, &name, &["true"]).await;
            samples.push(t.elapsed());
            assert_eq!(code, Some(0));
        }
        Stats::of(samples)
    };

    // 3. Throughput of `cat` of a 100 MiB file: random bytes, then text.
    let (_, _) = exec_agent(
        &http,
        &base,
        json!({"shell": format!("head -c {BIG} /dev/urandom > /tmp/random && \
                                 head -c {} /dev/urandom | base64 > /tmp/text && \
                                 truncate -s {BIG} /tmp/text", BIG * 3 / 4 + 4096)}),
    )
    .await;
    let mut rows = Vec::new();
    for file in ["/tmp/random", "/tmp/text"] {
        let mut agent_best = Duration::MAX;
        let mut docker_best = Duration::MAX;
        for _ in 0..THROUGHPUT_RUNS {
            let t = Instant::now();
            let (code, bytes) = exec_agent(&http, &base, json!({"cmd": ["cat", file]})).await;
            agent_best = agent_best.min(t.elapsed());
            assert_eq!((code, bytes), (Some(0), BIG));
            let t = Instant::now();
            let out = Command::new("docker")
                .args(["exec", &name, "cat", file])
                .output()
                .unwrap();
            docker_best = docker_best.min(t.elapsed());
            assert_eq!(out.stdout.len() as u64, BIG);
        }
        rows.push((file, mib_s(agent_best), mib_s(docker_best)));
    }
    let busy_rss_kib = rss_kib(&host_pid);
    drop(container);

    // The same agent built other ways, if given: idle RSS only, same conditions.
    let mut other_builds = Vec::new();
    for (var, what) in [
        (
            "BERTH_BENCH_IMAGE_AGENT",
            "built with the `image` profile (opt-level s, fat LTO), as workspace images use it",
        ),
        (
            "BERTH_BENCH_STATIC_AGENT",
            "linked static-pie (`+crt-static`)",
        ),
    ] {
        if let Some(path) = std::env::var_os(var) {
            let (c, _, pid) = start_workspace(&http, std::path::Path::new(&path), "other").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            other_builds.push((what, rss_kib(&pid)));
            drop(c);
        }
    }

    let machine = machine();
    println!("\n## workspace-agent\n");
    println!("Measured {}; {machine}.\n", today());
    println!("| what | agent | peer (same run, same container) | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| exec round trip of `true`, p50 (mean) | {} ({}) | `docker exec` CLI: {} ({}) | {:.0}× faster | ≥ 20× |",
        ms(agent_rt.p50),
        ms(agent_rt.mean),
        ms(docker_cli_rt.p50),
        ms(docker_cli_rt.mean),
        docker_cli_rt.p50.as_secs_f64() / agent_rt.p50.as_secs_f64()
    );
    println!(
        "| exec round trip of `true`, p50 (mean) | {} ({}) | Engine API exec create+start+inspect: {} ({}) | {:.0}× faster | — |",
        ms(agent_rt.p50),
        ms(agent_rt.mean),
        ms(docker_api_rt.p50),
        ms(docker_api_rt.mean),
        docker_api_rt.p50.as_secs_f64() / agent_rt.p50.as_secs_f64()
    );
    println!(
        "| exec round trip of `true`, p99 | {} | `docker exec` CLI: {} | | |",
        ms(agent_rt.p99),
        ms(docker_cli_rt.p99)
    );
    for (file, agent, peer) in &rows {
        let kind = if file.ends_with("random") {
            "random bytes (agent sends base64)"
        } else {
            "text"
        };
        println!(
            "| `cat` 100 MiB of {kind}, best of {THROUGHPUT_RUNS} | {agent:.0} MiB/s | `docker exec cat`: {peer:.0} MiB/s | {:.2}× | ≥ 1× |",
            agent / peer
        );
    }
    println!(
        "| idle RSS of the agent (release, claimed, PID 1 of the container) | {:.1} MiB | — | — | ≤ 4 MiB |",
        idle_rss_kib as f64 / 1024.0
    );
    for (what, kib) in &other_builds {
        println!(
            "| idle RSS of the agent {what}, same conditions | {:.1} MiB | — | — | ≤ 4 MiB |",
            *kib as f64 / 1024.0
        );
    }
    println!(
        "| RSS after the runs above | {:.1} MiB | — | — | — |",
        busy_rss_kib as f64 / 1024.0
    );
    println!(
        "\nSamples: {ROUND_TRIPS_AGENT} agent round trips, {ROUND_TRIPS_DOCKER} of each docker kind."
    );
}

/// Starts one hardened workspace container from `agent_bin`, waits for its agent
/// and claims it. Returns the container, the agent's base URL and its host pid.
async fn start_workspace(
    http: &reqwest::Client,
    agent_bin: &std::path::Path,
    tag: &str,
) -> (Container, String, String) {
    let image = berth_hostd::image::ensure_image(&berth_hostd::image::workspace_spec(agent_bin))
        .expect("workspace image");
    let name = format!("berth-bench-agent-{tag}-{}", std::process::id());
    let container = Container { name: name.clone() };
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &format!("berth.bench={}", std::process::id()),
        "--user",
        "1000:1000",
        "--read-only",
        "--tmpfs",
        "/workspace:rw,nosuid,nodev,size=256m,uid=1000,gid=1000,mode=0755",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,size=256m,mode=1777",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "--pids-limit",
        "128",
        "--memory",
        "256m",
        "-e",
        "BERTH_AGENT_LISTEN=0.0.0.0:9000",
        "-e",
        "BERTH_AGENT_ROOT=/workspace",
        &image,
    ]);
    let ip = docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &name]);
    let host_pid = docker(&["inspect", "-f", "{{.State.Pid}}", &name]);
    let base = format!("http://{ip}:9000");
    let start = Instant::now();
    while http.get(format!("{base}/health")).send().await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "agent never up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let claim = http
        .post(format!("{base}/v1/claim"))
        .json(&json!({"workspace_id": "bench", "token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(claim.status(), 200);
    (container, base, host_pid)
}

/// Runs one command through the agent; returns its exit code and the output bytes,
/// every event parsed and every chunk decoded as a real client would.
async fn exec_agent(
    http: &reqwest::Client,
    base: &str,
    body: serde_json::Value,
) -> (Option<i32>, u64) {
    let resp = http
        .post(format!("{base}/v1/exec"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut scanned = 0;
    let mut bytes = 0u64;
    let mut code = None;
    let mut decoded = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        let mut start = 0;
        while let Some(nl) = buf[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + nl;
            match serde_json::from_slice::<ExecEvent>(&buf[start..end]).unwrap() {
                ExecEvent::Stdout { data, base64 } | ExecEvent::Stderr { data, base64 } => {
                    if base64 {
                        decoded.clear();
                        base64::engine::general_purpose::STANDARD
                            .decode_vec(data.as_bytes(), &mut decoded)
                            .unwrap();
                        bytes += decoded.len() as u64;
                    } else {
                        bytes += data.len() as u64;
                    }
                }
                ExecEvent::Exit { code: c, .. } => code = c,
                _ => {}
            }
            start = end + 1;
            scanned = start;
        }
        buf.drain(..start);
        scanned = buf.len();
    }
    (code, bytes)
}

/// `docker exec` through the Engine API: create, start attached, drain, inspect.
async fn exec_engine(engine: &bollard::Docker, container: &str, cmd: &[&str]) -> Option<i64> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = engine
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd.to_vec()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    if let StartExecResults::Attached { mut output, .. } =
        engine.start_exec(&created.id, None).await.unwrap()
    {
        while output.next().await.is_some() {}
    }
    engine.inspect_exec(&created.id).await.unwrap().exit_code
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        let total: Duration = samples.iter().sum();
        Self {
            p50: at(0.5),
            p99: at(0.99),
            mean: total / samples.len() as u32,
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib_s(d: Duration) -> f64 {
    BIG as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn rss_kib(host_pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{host_pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let docker = docker(&["version", "-f", "{{.Server.Version}}"]);
    format!(
        "{cores} cores of {cpu}, Linux {}, Docker {docker}",
        kernel.trim()
    )
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

//! Checkpoint and restore of a realistic workspace against `tar | zstd` of the same
//! tree, and host death → the conversation's restored workspace, in one run
//! (`docs/BENCHMARKS.md`, "checkpoints").
//!
//! `cargo build --release --bins -p berth-agent -p berth-proxy && \
//!  cargo bench -p berth-tests --bench checkpoint` (needs moto: tests/run.sh
//! installs it; Debian's `zstd` and `tar`).
//!
//! The tree, made inside a real workspace: 20,000 source files (about 1.5 KiB of
//! text each, in 200 directories) and 200 MiB of build output (20 files of 10 MiB,
//! each half random bytes, half repetitive text, like object files next to debug
//! data). Ours: `POST /v1/workspaces/{id}/checkpoint` (the agent archives, hostd
//! streams to moto's S3 on loopback) and a create that restores it (moto → hostd →
//! agent, SHA-256 checked). The peer: `tar -cf - . | zstd -3` of the same tmpfs
//! (read through `/proc/<pid>/root`) into a file, and `zstd -dc | tar -xf -` of
//! that file into a fresh tmpfs directory. Host death: two hosts, the first killed
//! (its hostd stopped, its containers removed), the conversation's create retried
//! until it answers with a restored workspace on the second. `BERTH_BENCH_RUNS`
//! (default 3) repetitions of each.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::{agent::AgentClient, moto::MotoServer, system::LocalBerth};
use berth_wire::Workspace;
use serde_json::{Value, json};

const TREE: &str = "set -e; cd /workspace; mkdir -p src build; \
    awk 'BEGIN { for (i = 0; i < 20000; i++) { d = sprintf(\"src/m%03d\", i % 200); \
      if (i < 200) system(\"mkdir -p \" d); f = sprintf(\"%s/f%05d.rs\", d, i); \
      for (l = 0; l < 30; l++) printf(\"pub fn f%d_%d(x: u64) -> u64 {{ x * %d + %d }} // line %d\\n\", i, l, i, l, l) > f; \
      close(f) } }'; \
    for i in $(seq 1 20); do head -c 5242880 /dev/urandom > build/obj$i.o; \
      seq 1 1000000 | head -c 5242880 >> build/obj$i.o; done; \
    find . -type f | wc -l; du -sk . | cut -f1";

fn runs() -> usize {
    std::env::var("BERTH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn sh(line: &str) -> Duration {
    let started = Instant::now();
    let out = Command::new("sh").args(["-c", line]).output().expect("sh");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

async fn create(berth: &LocalBerth, body: Value) -> (u16, Value) {
    let resp = berth
        .http
        .post(format!("{}/v1/workspaces", berth.api))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn release(berth: &LocalBerth, id: &str) {
    let resp = berth
        .http
        .delete(format!("{}/v1/workspaces/{id}?checkpoint=false", berth.api))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn container_pid(agent: &AgentClient) -> String {
    let id = agent.container().await;
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", &id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let moto = MotoServer::start().expect("moto");
    let store = moto.checkpoint_store("berth-bench").await;
    let mut berth = LocalBerth::start_with(berth_tests::system::Options {
        pool: 2,
        checkpoints: Some(store.clone()),
        memory_limit_mib: Some(1536),
        workspace_size_mib: Some(1024),
        ..Default::default()
    })
    .await;
    let second = berth.add_host().await;
    let first = berth.host_id.clone();
    assert!(berth.wait_pool(2, Duration::from_secs(90)).await);
    let mut ws: Option<Workspace> = None;
    for i in 0..8 {
        let (status, body) = create(&berth, json!({"conversation_id": format!("bench-{i}")})).await;
        assert_eq!(status, 200, "{body}");
        let w: Workspace = serde_json::from_value(body).unwrap();
        if w.host_id == first {
            ws = Some(w);
            break;
        }
    }
    let ws = ws.expect("a workspace on the first host");
    let conv = ws.conversation_id.clone();
    let agent = AgentClient::for_workspace(ws.clone());
    let made = agent.exec(json!({"shell": TREE, "timeout_ms": 600_000})).await;
    assert_eq!(made.code, Some(0), "{}", made.stderr_text());
    let counts: Vec<u64> = made
        .stdout_text()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let (files, kib) = (counts[0], counts[1]);
    let bytes = kib * 1024;
    println!("tree: {files} files, {:.1} MiB on tmpfs", kib as f64 / 1024.0);

    // The peer: tar | zstd of the same tree, into a file, and back into a fresh tmpfs.
    let pid = container_pid(&agent).await;
    let peer_file = std::env::temp_dir().join(format!("berth-bench-peer-{}.tar.zst", std::process::id()));
    let peer_dir = format!("/dev/shm/berth-bench-restore-{}", std::process::id());
    let mut peer_out = Vec::new();
    let mut peer_in = Vec::new();
    let mut ours_out = Vec::new();
    let mut ours_in = Vec::new();
    let mut sizes = (0u64, 0u64);
    let mut agent_alone = Vec::new();
    let secret = berth
        .scheduler
        .store()
        .workspace(&ws.id)
        .await
        .unwrap()
        .expect("the workspace's record")
        .claim_secret;
    for _ in 0..runs() {
        // The agent's archive alone, drained here (no store, no hostd).
        let started = Instant::now();
        let mut resp = berth
            .http
            .get(format!("{}/v1/archive", ws.agent_url))
            .header(berth_wire::settings::CLAIM_SECRET_HEADER, &secret)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        while resp.chunk().await.unwrap().is_some() {}
        agent_alone.push(started.elapsed());

        peer_out.push(sh(&format!(
            "tar -C /proc/{pid}/root/workspace -cf - . | zstd -3 -q -o {} -f",
            peer_file.display()
        )));
        sizes.0 = std::fs::metadata(&peer_file).unwrap().len();
        sh(&format!("rm -rf {peer_dir} && mkdir -p {peer_dir}"));
        peer_in.push(sh(&format!(
            "zstd -dc -q {} | tar -C {peer_dir} -xf -",
            peer_file.display()
        )));

        let started = Instant::now();
        let resp = berth
            .http
            .post(format!("{}/v1/workspaces/{}/checkpoint", berth.api, ws.id))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let m: berth_wire::checkpoint::Manifest = resp.json().await.unwrap();
        ours_out.push(started.elapsed());
        sizes.1 = m.size;
    }
    sh(&format!("rm -rf {peer_dir}"));
    let _ = std::fs::remove_file(&peer_file);

    // Ours, restoring: a create for the conversation on the other workspace's
    // host... any host: the conversation's workspace is released (no checkpoint)
    // and created again, restored, each run. The bare warm create is measured too.
    let mut bare = Vec::new();
    let mut live = ws.clone();
    for i in 0..runs() {
        release(&berth, &live.id).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let (status, body) = create(&berth, json!({"conversation_id": conv})).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{body}");
        live = serde_json::from_value(body).unwrap();
        assert!(live.restored_from.is_some(), "{live:?}");
        ours_in.push(took);
        let started = Instant::now();
        let (status, body) = create(&berth, json!({"conversation_id": format!("bare-{i}")})).await;
        bare.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
    }
    let check = AgentClient::for_workspace(live.clone())
        .sh("find /workspace -type f | wc -l")
        .await;
    assert_eq!(check.stdout_text().trim(), files.to_string(), "restored file count");

    // moto alone: an archive of the same size uploaded from memory.
    let data: Vec<u8> = (0..sizes.1).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    let data = bytes::Bytes::from(data);
    let started = Instant::now();
    let chunks: Vec<std::io::Result<bytes::Bytes>> = (0..data.len())
        .step_by(256 * 1024)
        .map(|i| Ok(data.slice(i..(i + 256 * 1024).min(data.len()))))
        .collect();
    let m = store
        .upload(
            berth_wire::checkpoint::Manifest {
                id: berth_checkpoint::new_id(1, 1),
                parent: None,
                conversation_id: "store-alone".into(),
                workspace_id: "none".into(),
                template: "default".into(),
                reason: berth_wire::checkpoint::CheckpointReason::Api,
                size: 0,
                sha256: String::new(),
                entries: 0,
                bytes: 0,
                skipped: 0,
                created_at_ms: 0,
                duration_ms: 0,
            },
            futures_util::stream::iter(chunks),
            started,
        )
        .await
        .unwrap();
    let store_alone = started.elapsed();
    println!(
        "  the store alone (moto, {:.1} MiB from memory): {:.2} s",
        m.size as f64 / 1048576.0,
        store_alone.as_secs_f64()
    );
    let (po, pi, oo, oi) = (median(peer_out), median(peer_in), median(ours_out), median(ours_in));
    let aa = median(agent_alone);
    println!(
        "  of which the agent's archive alone (drained, no store): {:.2} s ({:.0} MiB/s)",
        aa.as_secs_f64(),
        mib_s(bytes, aa)
    );
    println!(
        "checkpoint: ours {:.2} s ({:.0} MiB/s, {:.1} MiB stored in S3) vs tar|zstd {:.2} s ({:.0} MiB/s, {:.1} MiB to a file): {:.2}x its throughput",
        oo.as_secs_f64(),
        mib_s(bytes, oo),
        sizes.1 as f64 / 1048576.0,
        po.as_secs_f64(),
        mib_s(bytes, po),
        sizes.0 as f64 / 1048576.0,
        po.as_secs_f64() / oo.as_secs_f64()
    );
    println!(
        "restore: ours {:.2} s (a create that restores; bare warm create {:.3} s) vs zstd -d|tar -x {:.2} s: {:.2}x its throughput",
        oi.as_secs_f64(),
        median(bare).as_secs_f64(),
        pi.as_secs_f64(),
        pi.as_secs_f64() / oi.as_secs_f64()
    );

    // Host death: the conversation's workspace onto the first host again, then the
    // host dies.
    let mut on_first = live;
    let mut tries = 0;
    while on_first.host_id != first {
        tries += 1;
        assert!(tries < 10, "never placed on the first host");
        release(&berth, &on_first.id).await;
        let (status, body) = create(&berth, json!({"conversation_id": conv})).await;
        assert_eq!(status, 200, "{body}");
        on_first = serde_json::from_value(body).unwrap();
    }
    let died = Instant::now();
    berth.kill_host(&first);
    let replacement = loop {
        assert!(died.elapsed() < Duration::from_secs(60), "never replaced");
        let (status, body) = create(&berth, json!({"conversation_id": conv})).await;
        if status == 200 && body["id"] != on_first.id.as_str() {
            break serde_json::from_value::<Workspace>(body).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = died.elapsed();
    assert_eq!(replacement.host_id, second);
    assert!(replacement.restored_from.is_some());
    println!(
        "host death → restored workspace on the other host: {:.1} s (heartbeat TTL {} s)",
        took.as_secs_f64(),
        berth_scheduler::Config::default().host_ttl.as_secs()
    );
    berth.stop().await;
}

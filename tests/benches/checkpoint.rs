//! Checkpoint and restore of a realistic workspace against `tar | zstd` of the same
//! tree, and host death → the conversation's restored workspace, in one run
//! (`docs/BENCHMARKS.md`, "checkpoints").
//!
//! `cargo build --release --bins -p berth-agent -p berth-proxy && \
//!  cargo bench -p berth-tests --bench checkpoint` (needs moto: tests/run.sh
//! installs it; Debian's `zstd`, `tar` and `curl`).
//!
//! The tree, made inside a real workspace: 20,000 source files (about 1.5 KiB of
//! text each, in 200 directories) and 200 MiB of build output (20 files of 10 MiB,
//! each half random bytes, half repetitive text, like object files next to debug
//! data). Ours: `POST /v1/workspaces/{id}/checkpoint` (the agent archives, hostd
//! streams to the store) and a create that restores it (store → hostd → agent,
//! SHA-256 checked), on two stores: a local directory (`scheduler dev`'s) and
//! moto's S3 on loopback. The peer, to the same place: `tar -cf - . | zstd -3` of
//! the same tmpfs (read through `/proc/<pid>/root`) into a file, or through
//! `curl -T -` into the same moto bucket; back with `zstd -dc | tar -xf -` into a
//! fresh tmpfs directory. Also timed alone: the agent's archive drained without a
//! store, and moto taking an archive of the same size from memory. Host death
//! (moto round only): two hosts, the first killed
//! (its hostd stopped, its containers removed), the conversation's create retried
//! until it answers with a restored workspace on the second. `BERTH_BENCH_RUNS`
//! (default 3) repetitions of each.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::{agent::AgentClient, moto::MotoServer, system::LocalBerth};
use berth_wire::{Workspace, checkpoint::Manifest};
use serde_json::json;

const TREE: &str = "set -e; cd /workspace; mkdir -p src build; \
    awk 'BEGIN { for (i = 0; i < 20000; i++) { d = sprintf(\"src/m%03d\", i % 200); \
      if (i < 200) system(\"mkdir -p \" d); f = sprintf(\"%s/f%05d.rs\", d, i); \
      for (l = 0; l < 30; l++) printf(\"pub fn f%d_%d(x: u64) -> u64 {{ x * %d + %d }} // line %d\\n\", i, l, i, l, l) > f; \
      close(f) } }'; \
    for i in $(seq 1 20); do head -c 5242880 /dev/urandom > build/obj$i.o; \
      seq 1 1000000 | head -c 5242880 >> build/obj$i.o; done; \
    find . -type f | wc -l";

/// A directory removed when dropped, also when the bench panics.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// curl's own SigV4 signing, with moto's static test credentials.
const SIGNED: &str = "--aws-sigv4 aws:amz:us-east-1:s3 --user testing:testing";

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

async fn release(berth: &LocalBerth, id: &str) {
    let (status, body) = berth
        .delete(&format!("/v1/workspaces/{id}?checkpoint=false"))
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn container_pid(agent: &AgentClient) -> String {
    let id = agent.container().await;
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", &id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Where a round stores: ours through `store`, the peer through `peer_put` (a
/// shell fragment reading the compressed stream on stdin) and `peer_get` (one
/// writing it to stdout).
struct Round<'a> {
    label: &'a str,
    store: berth_checkpoint::Store,
    peer_put: String,
    peer_get: String,
    /// Two hosts and a host death at the end.
    host_death: bool,
}

async fn round(r: Round<'_>) {
    let mut berth = LocalBerth::start_with(berth_tests::system::Options {
        pool: 2,
        checkpoints: Some(r.store.clone()),
        memory_limit_mib: Some(1536),
        workspace_size_mib: Some(1024),
        ..Default::default()
    })
    .await;
    let second = if r.host_death {
        Some(berth.add_host().await)
    } else {
        None
    };
    let first = berth.host_id.clone();
    assert!(berth.wait_pool(2, Duration::from_secs(90)).await);
    let mut ws: Option<Workspace> = None;
    for i in 0..8 {
        let (status, body) = berth
            .create(&json!({"conversation_id": format!("bench-{i}")}))
            .await;
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
    let made = agent
        .exec(json!({"shell": TREE, "timeout_ms": 600_000}))
        .await;
    assert_eq!(made.code, Some(0), "{}", made.stderr_text());
    let files: u64 = made.stdout_text().trim().parse().expect("file count");

    let pid = container_pid(&agent).await;
    let peer_dir = format!("/dev/shm/berth-bench-restore-{}", std::process::id());
    let _removed = RemoveOnDrop(peer_dir.clone().into());
    let secret = berth
        .scheduler
        .store()
        .workspace(&ws.id)
        .await
        .unwrap()
        .expect("the workspace's record")
        .claim_secret;
    let (mut peer_out, mut peer_in, mut ours_out, mut ours_in, mut agent_alone) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut manifest = None;
    for _ in 0..runs() {
        peer_out.push(sh(&format!(
            "tar -C /proc/{pid}/root/workspace -cf - . | zstd -3 -q | {}",
            r.peer_put
        )));
        sh(&format!("rm -rf {peer_dir} && mkdir -p {peer_dir}"));
        peer_in.push(sh(&format!(
            "{} | zstd -dc -q | tar -C {peer_dir} -xf -",
            r.peer_get
        )));
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

        let started = Instant::now();
        let resp = berth
            .http
            .post(format!("{}/v1/workspaces/{}/checkpoint", berth.api, ws.id))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        ours_out.push(started.elapsed());
        manifest = Some(resp.json::<Manifest>().await.unwrap());
    }
    sh(&format!("rm -rf {peer_dir}"));
    let manifest = manifest.expect("a checkpoint");

    // Restoring: the conversation's workspace is released (no checkpoint) and
    // created again, restored, each run; a bare warm create is timed beside it.
    let mut bare = Vec::new();
    let mut live = ws.clone();
    for i in 0..runs() {
        release(&berth, &live.id).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let (status, body) = berth.create(&json!({"conversation_id": conv})).await;
        ours_in.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
        live = serde_json::from_value(body).unwrap();
        assert!(live.restored_from.is_some(), "{live:?}");
        let started = Instant::now();
        let (status, body) = berth
            .create(&json!({"conversation_id": format!("bare-{i}")}))
            .await;
        bare.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
    }
    let check = AgentClient::for_workspace(live.clone())
        .sh("find /workspace -type f | wc -l")
        .await;
    assert_eq!(
        check.stdout_text().trim(),
        files.to_string(),
        "restored file count"
    );

    // The store alone: an archive of the same size from memory.
    let data: Vec<u8> = (0..manifest.size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let data = bytes::Bytes::from(data);
    let chunks: Vec<std::io::Result<bytes::Bytes>> = (0..data.len())
        .step_by(256 * 1024)
        .map(|i| Ok(data.slice(i..(i + 256 * 1024).min(data.len()))))
        .collect();
    let mut alone = manifest.clone();
    alone.conversation_id = "store-alone".into();
    let started = Instant::now();
    r.store
        .upload(alone, futures_util::stream::iter(chunks), started)
        .await
        .unwrap();
    let store_alone = started.elapsed();

    let bytes = manifest.bytes;
    let (po, pi, oo, oi) = (
        median(peer_out),
        median(peer_in),
        median(ours_out),
        median(ours_in),
    );
    let aa = median(agent_alone);
    println!(
        "[{}] tree: {files} files, {:.1} MiB of content, {:.1} MiB compressed",
        r.label,
        bytes as f64 / 1048576.0,
        manifest.size as f64 / 1048576.0
    );
    println!(
        "[{}] checkpoint: ours {:.2} s ({:.0} MiB/s) vs tar|zstd {:.2} s ({:.0} MiB/s): {:.2}x its throughput",
        r.label,
        oo.as_secs_f64(),
        mib_s(bytes, oo),
        po.as_secs_f64(),
        mib_s(bytes, po),
        po.as_secs_f64() / oo.as_secs_f64()
    );
    println!(
        "[{}]   the agent's archive alone {:.2} s ({:.0} MiB/s); the store alone takes {:.1} MiB from memory in {:.2} s",
        r.label,
        aa.as_secs_f64(),
        mib_s(bytes, aa),
        manifest.size as f64 / 1048576.0,
        store_alone.as_secs_f64()
    );
    println!(
        "[{}] restore: ours {:.2} s (a create that restores; a bare warm create {:.3} s) vs zstd -d|tar -x {:.2} s: {:.2}x its throughput",
        r.label,
        oi.as_secs_f64(),
        median(bare).as_secs_f64(),
        pi.as_secs_f64(),
        pi.as_secs_f64() / oi.as_secs_f64()
    );

    if let Some(second) = second {
        // The conversation's workspace onto the first host again; the host dies.
        let mut on_first = live;
        let mut tries = 0;
        while on_first.host_id != first {
            tries += 1;
            assert!(tries < 10, "never placed on the first host");
            release(&berth, &on_first.id).await;
            let (status, body) = berth.create(&json!({"conversation_id": conv})).await;
            assert_eq!(status, 200, "{body}");
            on_first = serde_json::from_value(body).unwrap();
        }
        let died = Instant::now();
        berth.kill_host(&first);
        let replacement = loop {
            assert!(died.elapsed() < Duration::from_secs(60), "never replaced");
            let (status, body) = berth.create(&json!({"conversation_id": conv})).await;
            if status == 200 && body["id"] != on_first.id.as_str() {
                break serde_json::from_value::<Workspace>(body).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let took = died.elapsed();
        assert_eq!(replacement.host_id, second);
        assert!(replacement.restored_from.is_some());
        println!(
            "[{}] host death → restored workspace on the other host: {:.1} s (heartbeat TTL {} s)",
            r.label,
            took.as_secs_f64(),
            berth_scheduler::Config::default().host_ttl.as_secs()
        );
    }
    berth.stop().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = std::env::temp_dir().join(format!("berth-bench-ckpt-{}", std::process::id()));
    let _removed = RemoveOnDrop(dir.clone());
    let peer_file = dir.join("peer.tar.zst");
    std::fs::create_dir_all(&dir).unwrap();
    round(Round {
        label: "local directory",
        store: berth_checkpoint::Store::open(dir.join("store").to_str().unwrap()).unwrap(),
        peer_put: format!("cat > {}", peer_file.display()),
        peer_get: format!("cat {}", peer_file.display()),
        host_death: false,
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);

    let moto = MotoServer::start().expect("moto");
    let store = moto.checkpoint_store("berth-bench").await;
    let object = format!("{}/berth-bench/peer.tar.zst", moto.endpoint());
    round(Round {
        label: "moto S3",
        store,
        peer_put: format!("curl -sSf {SIGNED} -T - {object}"),
        peer_get: format!("curl -sSf {SIGNED} {object}"),
        host_death: true,
    })
    .await;
}

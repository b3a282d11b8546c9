//! A conversation's files outlive its workspace and its host: checkpointed to the
//! store (a local directory, and moto's S3), restored into the conversation's next
//! workspace on release and resume, and on another host after the first died;
//! hostile archives are refused and the workspace stays usable; workspace code
//! cannot reach the store nor take an archive from its own agent.

use std::time::{Duration, Instant};

use berth_tests::{agent::AgentClient, moto::MotoServer, system::LocalBerth};
use berth_wire::{Workspace, checkpoint::Manifest};
use serde_json::{Value, json};

/// A tree with what a restore must keep: modes, a symlink, an empty directory, a
/// nested file and a large one of random bytes (`big_mib`).
fn make_tree(big_mib: u64) -> String {
    format!(
        "set -e; cd /workspace; mkdir -p src/deep/er empty; \
         echo 'fn main() {{}}' > src/main.rs; printf '#!/bin/sh\\necho hi\\n' > run.sh; \
         chmod 751 run.sh; chmod 600 src/main.rs; ln -s src/main.rs link; \
         ln -s ../../../run.sh src/deep/er/up; echo nested > src/deep/er/file; \
         head -c {} /dev/urandom > build.bin",
        big_mib * 1024 * 1024
    )
}

/// What the tree must look like after a restore: every entry's name, mode, type
/// and size, every file's SHA-256 and every link's target.
const FINGERPRINT: &str = "cd /workspace && find . | sort | while read -r f; do \
    stat -c '%n %a %F %s' \"$f\"; done | grep -v '^\\. ' ; \
    find . -type f | sort | xargs sha256sum; readlink link; readlink src/deep/er/up";

/// One host with `store`, its pool of 2 filled.
async fn start(store: &berth_checkpoint::Store, idle: Option<Duration>) -> LocalBerth {
    let berth = LocalBerth::start_with(berth_tests::system::Options {
        pool: 2,
        checkpoints: Some(store.clone()),
        idle_timeout: idle,
        ..Default::default()
    })
    .await;
    assert!(berth.wait_pool(2, Duration::from_secs(60)).await);
    berth
}

async fn workspace(berth: &LocalBerth, conv: &str) -> Workspace {
    let (status, body) = berth.create(&json!({"conversation_id": conv})).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn fingerprint(agent: &AgentClient) -> String {
    let out = agent.sh(FINGERPRINT).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    out.stdout_text()
}

async fn checkpoint(berth: &LocalBerth, ws: &Workspace) -> Manifest {
    let resp = berth
        .http
        .post(format!("{}/v1/workspaces/{}/checkpoint", berth.api, ws.id))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

/// A directory removed when dropped, also when a test panics.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn join(&self, p: impl AsRef<std::path::Path>) -> std::path::PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn local_store(tag: &str) -> (Scratch, berth_checkpoint::Store) {
    let dir = std::env::temp_dir().join(format!(
        "berth-ckpt-test-{tag}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let store = berth_checkpoint::Store::open(dir.to_str().unwrap()).unwrap();
    (Scratch(dir), store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_and_resume_restore_the_files_and_deleting_the_conversation_deletes_them() {
    let (dir, store) = local_store("resume");
    let berth = start(&store, None).await;
    let ws = workspace(&berth, "resume-me").await;
    let agent = AgentClient::for_workspace(ws.clone());
    let made = agent.sh(&make_tree(8)).await;
    assert_eq!(made.code, Some(0), "{}", made.stderr_text());
    let before = fingerprint(&agent).await;

    // Release checkpoints first (the template's default), then the slot goes.
    assert_eq!(
        berth.delete(&format!("/v1/workspaces/{}", ws.id)).await.0,
        200
    );
    let list: Vec<Manifest> = berth_tests::get_json(
        &berth.http,
        &format!("{}/v1/conversations/resume-me/checkpoints", berth.api),
        None,
    )
    .await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0].reason,
        berth_wire::checkpoint::CheckpointReason::Release
    );
    assert_eq!(list[0].workspace_id, ws.id);

    // Resume: the next create restores it, and says from what.
    let again = workspace(&berth, "resume-me").await;
    assert_ne!(again.id, ws.id);
    assert_eq!(again.restored_from.as_deref(), Some(list[0].id.as_str()));
    let agent = AgentClient::for_workspace(again.clone());
    assert_eq!(
        fingerprint(&agent).await,
        before,
        "the restored tree differs"
    );

    // `restore: false` hands out an empty workspace.
    let path = format!("/v1/workspaces/{}?checkpoint=false", again.id);
    assert_eq!(berth.delete(&path).await.0, 200);
    let (status, body) = berth
        .create(&json!({"conversation_id": "resume-me", "restore": false}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("restored_from").is_none(), "{body}");
    let empty = AgentClient::for_workspace(serde_json::from_value(body).unwrap());
    assert_eq!(
        empty
            .sh("ls -A /workspace | wc -l")
            .await
            .stdout_text()
            .trim(),
        "0"
    );

    // The user deletes the conversation: its workspace and checkpoints go.
    let (status, gone) = berth.delete("/v1/conversations/resume-me").await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["checkpoints_deleted"], 1, "{gone}");
    assert_eq!(gone["released"].as_array().unwrap().len(), 1, "{gone}");
    assert!(store.latest("resume-me").await.unwrap().is_none());
    berth.stop().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_conversation_comes_back_on_another_host_with_its_files_from_s3() {
    // moto listens on the gateway of a Docker network of the test's own, one of
    // this machine's addresses: a workspace could address it, and must not reach it.
    let net = berth_tests::docker::TestNetwork::create();
    let moto = MotoServer::start_on(&net.gateway).unwrap();
    let store = moto.checkpoint_store("berth-ckpt").await;
    let mut berth = LocalBerth::start_with(berth_tests::system::Options {
        pool: 2,
        checkpoints: Some(store.clone()),
        memory_limit_mib: Some(768),
        workspace_size_mib: Some(512),
        ..Default::default()
    })
    .await;
    let second = berth.add_host().await;
    let first = berth.host_id.clone();
    assert!(berth.wait_pool(2, Duration::from_secs(60)).await);

    // A conversation on the first host.
    let mut victim = None;
    for i in 0..8 {
        let ws = workspace(&berth, &format!("s3-conv-{i}")).await;
        if ws.host_id == first {
            victim = Some(ws);
            break;
        }
    }
    let victim = victim.expect("no workspace landed on the first host");
    let agent = AgentClient::for_workspace(victim.clone());
    let made = agent.sh(&make_tree(200)).await;
    assert_eq!(made.code, Some(0), "{}", made.stderr_text());
    let before = fingerprint(&agent).await;
    let m = checkpoint(&berth, &victim).await;
    assert!(m.size > 200 * 1024 * 1024, "{m:?}");
    assert_eq!(m.conversation_id, victim.conversation_id);
    eprintln!(
        "checkpoint of 200 MiB + tree: {} bytes in {} ms",
        m.size, m.duration_ms
    );

    // The host dies; the conversation's next create lands on the other host, with
    // its files.
    let died = Instant::now();
    berth.kill_host(&first);
    let replacement = loop {
        assert!(died.elapsed() < Duration::from_secs(60), "never replaced");
        let (status, body) = berth
            .create(&json!({"conversation_id": victim.conversation_id}))
            .await;
        if status == 200 && body["id"] != victim.id.as_str() {
            break serde_json::from_value::<Workspace>(body).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = died.elapsed();
    eprintln!("host death → restored workspace in {took:?}");
    assert_eq!(replacement.host_id, second);
    assert_eq!(replacement.replaced.as_deref(), Some(victim.id.as_str()));
    assert_eq!(replacement.restored_from.as_deref(), Some(m.id.as_str()));
    let agent = AgentClient::for_workspace(replacement.clone());
    assert_eq!(
        fingerprint(&agent).await,
        before,
        "the restored tree differs"
    );

    // Workspace code reaches neither the store (through its proxy: refused by the
    // allowlist; around it: the egress lock) nor its own agent's archive.
    let moto_url = format!("{}/berth-ckpt/", moto.endpoint());
    let out = agent
        .sh(&format!(
            "timeout 5 wget -q -O- {moto_url} 2>&1; echo rc=$?; \
             timeout 5 wget -Y off -q -O- {moto_url} 2>&1; echo rc=$?; \
             timeout 5 wget -Y off -q -O- http://127.0.0.1:9000/v1/archive 2>&1; echo rc=$?"
        ))
        .await;
    let text = out.stdout_text();
    assert_eq!(text.matches("rc=0").count(), 0, "{text}");
    assert!(!text.contains("ListBucketResult"), "{text}");
    assert!(
        text.contains("403 Forbidden"),
        "the proxy refuses the store: {text}"
    );
    assert!(
        text.contains("401 Unauthorized"),
        "the agent refuses its archive without the claim secret: {text}"
    );
    berth.stop().await;
    drop(net);
}

/// One raw tar entry: path, type, declared size, link target, data.
type RawEntry<'a> = (&'a str, tar::EntryType, u64, Option<&'a str>, &'a [u8]);

/// A tar stream of raw entries, written without the tar crate's checks, compressed
/// as a checkpoint is.
fn hostile(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, kind, size, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_mode(0o644);
        h.set_size(*size);
        h.set_entry_type(*kind);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    zstd::encode_all(out.as_slice(), 3).unwrap()
}

/// Stores `archive` as conversation `conv`'s latest checkpoint, as hostd would.
async fn plant(store: &berth_checkpoint::Store, conv: &str, archive: Vec<u8>) -> Manifest {
    let manifest = Manifest {
        id: berth_checkpoint::new_id(berth_wire::now_ms(), rand_u32()),
        parent: None,
        conversation_id: conv.into(),
        workspace_id: "ws-planted".into(),
        template: "default".into(),
        reason: berth_wire::checkpoint::CheckpointReason::Api,
        size: 0,
        sha256: String::new(),
        entries: 1,
        bytes: 0,
        skipped: 0,
        created_at_ms: berth_wire::now_ms(),
        duration_ms: 0,
    };
    let chunks =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(archive))]);
    store
        .upload(manifest, chunks, Instant::now())
        .await
        .unwrap()
}

fn rand_u32() -> u32 {
    u32::from_str_radix(&uuid::Uuid::new_v4().simple().to_string()[..8], 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_or_corrupt_checkpoints_are_refused_and_the_workspace_stays_usable() {
    let (dir, store) = local_store("hostile");
    let berth = start(&store, None).await;
    use tar::EntryType as T;
    let zeros = vec![0u8; 64 << 20];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            hostile(&[
                ("ok", T::Regular, 2, None, b"ok"),
                ("../../etc/evil", T::Regular, 4, None, b"evil"),
            ]),
            "archive_refused",
        ),
        (
            "absolute",
            hostile(&[("/etc/evil", T::Regular, 4, None, b"evil")]),
            "archive_refused",
        ),
        (
            "link-to-etc",
            hostile(&[("etc", T::Symlink, 0, Some("/etc"), b"")]),
            "archive_refused",
        ),
        (
            "through-link",
            hostile(&[
                ("d/", T::Directory, 0, None, b""),
                ("l", T::Symlink, 0, Some("d"), b""),
                ("l/x", T::Regular, 1, None, b"x"),
            ]),
            "archive_refused",
        ),
        (
            "sparse-10g",
            hostile(&[("huge", T::Regular, 10 << 30, None, b"")]),
            "archive_too_large",
        ),
        (
            "bomb",
            hostile(&[("zeros", T::Regular, zeros.len() as u64, None, &zeros)]),
            "archive_refused",
        ),
    ];
    for (name, archive, code) in cases {
        let conv = format!("hostile-{name}");
        plant(&store, &conv, archive).await;
        // Refused by default: the files are not silently dropped.
        let (status, body) = berth.create(&json!({"conversation_id": conv})).await;
        assert_eq!(body["error"]["code"], code, "{name}: {status} {body}");
        assert!(status == 422 || status == 413, "{name}: {status} {body}");
        // Allowed empty: the workspace works and holds nothing of the archive.
        let (status, body) = berth
            .create(&json!({"conversation_id": conv, "on_restore_error": "empty"}))
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["restore_error"]["code"], code, "{name}: {body}");
        let agent = AgentClient::for_workspace(serde_json::from_value(body).unwrap());
        let out = agent
            .sh("ls -A /workspace | wc -l; ls /etc/evil 2>&1; echo alive")
            .await;
        let text = out.stdout_text();
        assert!(
            text.starts_with("0\n") && text.contains("alive"),
            "{name}: {text}"
        );
        assert!(text.contains("No such file"), "{name}: {text}");
    }

    // A checksum that does not match, and an archive gone from the store.
    let good = hostile(&[("a", T::Regular, 1, None, b"a")]);
    let m = plant(&store, "corrupt", good.clone()).await;
    let manifest_path = dir
        .join(berth_checkpoint::conversation_key("corrupt"))
        .join(format!("{}.json", m.id));
    let mut wrong = m.clone();
    wrong.sha256 = "0".repeat(64);
    std::fs::write(&manifest_path, serde_json::to_vec(&wrong).unwrap()).unwrap();
    let (status, body) = berth.create(&json!({"conversation_id": "corrupt"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("checksum_mismatch")),
        "{body}"
    );
    let m = plant(&store, "missing", good).await;
    std::fs::remove_file(
        dir.join(berth_checkpoint::conversation_key("missing"))
            .join(format!("{}.tar.zst", m.id)),
    )
    .unwrap();
    let (status, body) = berth.create(&json!({"conversation_id": "missing"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("checkpoint_missing")),
        "{body}"
    );
    // The service keeps serving.
    let ws = workspace(&berth, "after-the-attacks").await;
    assert!(
        AgentClient::for_workspace(ws)
            .sh("echo ok")
            .await
            .stdout_text()
            .contains("ok")
    );
    berth.stop().await;
    drop(dir);
}

/// The idle reaper checkpoints before it reaps: the conversation's next workspace
/// has the files; `/metrics` counts the checkpoint and the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_workspace_is_checkpointed_before_it_is_reaped() {
    let (dir, store) = local_store("idle");
    let berth = start(&store, Some(Duration::from_secs(3))).await;
    let ws = workspace(&berth, "idle-keeps-files").await;
    let agent = AgentClient::for_workspace(ws.clone());
    let made = agent.sh(&make_tree(1)).await;
    assert_eq!(made.code, Some(0), "{}", made.stderr_text());
    let before = fingerprint(&agent).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = berth
            .http
            .get(format!("{}/v1/workspaces/{}", berth.api, ws.id))
            .send()
            .await
            .unwrap()
            .status();
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "never reaped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = store.list("idle-keeps-files").await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0].reason,
        berth_wire::checkpoint::CheckpointReason::Idle
    );
    let again = workspace(&berth, "idle-keeps-files").await;
    assert_eq!(again.restored_from.as_deref(), Some(list[0].id.as_str()));
    assert_eq!(
        fingerprint(&AgentClient::for_workspace(again)).await,
        before
    );
    let metrics = berth_tests::get_text(&berth.http, &format!("{}/metrics", berth.api), None).await;
    for line in [
        "berth_checkpoints_total 1",
        "berth_restores_total 1",
        "berth_checkpoints_failed_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in /metrics");
    }
    berth.stop().await;
    drop(dir);
}

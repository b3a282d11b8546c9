//! The idle reaper on real workspaces: activity is read from the agent (attached
//! streams, processes) and the proxy (egress), never from a timer that only API
//! calls touch. Real Docker, real hostd, the scheduler's leader loop.

use std::time::{Duration, Instant};

use berth_tests::{
    agent::{AgentClient, acquire},
    system::{LocalBerth, Options},
};
use serde_json::json;

/// `GET /v1/workspaces/{id}`'s status: 200 while the workspace lives, 404 once reaped.
async fn status_of(berth: &LocalBerth, id: &str) -> u16 {
    berth
        .http
        .get(format!("{}/v1/workspaces/{id}", berth.api))
        .send()
        .await
        .expect("scheduler reachable")
        .status()
        .as_u16()
}

async fn wait_gone(berth: &LocalBerth, id: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if status_of(berth, id).await == 404 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Three workspaces and a 3 s idle timeout: one runs a command with its stream
/// attached, one left a process running in the background with nothing attached,
/// one does nothing. Only the idle one is reaped (with its slot stopped); the
/// attached one goes once its command has ended; the background process keeps its
/// workspace however long it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_work_keeps_a_workspace_past_the_idle_timeout_and_idleness_reaps_it() {
    let berth = LocalBerth::start_with(Options {
        pool: 3,
        idle_timeout: Some(Duration::from_secs(3)),
        ..Options::default()
    })
    .await;
    assert!(berth.wait_pool(3, Duration::from_secs(60)).await);
    let attached = acquire(&berth, "idle-attached").await;
    let background = acquire(&berth, "idle-background").await;
    let idle = acquire(&berth, "idle-nothing").await;

    // A detached `sleep` (its own session, so it outlives its command's group; the
    // `sleep 1` lets it leave the group before the command ends): the process
    // lives on with nothing attached.
    let out = background
        .sh("setsid sleep 60 </dev/null >/dev/null 2>&1 & sleep 1")
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    // A command that runs 8 s with its stream attached the whole time.
    let runner = {
        let a = AgentClient::for_workspace(attached.workspace.clone());
        tokio::spawn(async move { a.sh("sleep 8; echo done").await })
    };
    let started = Instant::now();
    let idle_slot_id = berth
        .scheduler
        .store()
        .workspace(&idle.workspace.id)
        .await
        .unwrap()
        .expect("recorded")
        .slot_id;

    assert!(
        wait_gone(&berth, &idle.workspace.id, Duration::from_secs(15)).await,
        "the idle workspace is reaped"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !berth_tests::docker::containers_labelled(berth_wire::labels::SLOT, &idle_slot_id)
        .is_empty()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        berth_tests::docker::containers_labelled(berth_wire::labels::SLOT, &idle_slot_id),
        Vec::<String>::new(),
        "its slot was stopped"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "reaped before the command ends"
    );
    assert_eq!(status_of(&berth, &attached.workspace.id).await, 200);
    assert_eq!(status_of(&berth, &background.workspace.id).await, 200);

    let out = runner.await.unwrap();
    assert_eq!(
        out.stdout_text(),
        "done\n",
        "the command ran to its end: {out:?}"
    );
    assert!(
        wait_gone(&berth, &attached.workspace.id, Duration::from_secs(15)).await,
        "once its command ended, the attached workspace is idle too"
    );
    // Well past the timeout since its last request: the background process keeps it.
    assert_eq!(status_of(&berth, &background.workspace.id).await, 200);
    // Counted as they are removed (the count lands a moment after the 404 can).
    let counted = || {
        berth
            .scheduler
            .counters()
            .idle_reaped
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted(), 2, "both idle workspaces counted, nothing else");
    // The service kept serving throughout.
    let resp = berth
        .http
        .post(format!("{}/v1/workspaces", berth.api))
        .json(&json!({"conversation_id": "idle-after"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    berth.stop().await;
}

//! The real `hostd` binary, with its own seccomp filter enforcing (a call outside
//! the allow-list kills it) and its capabilities dropped to the documented set, keeps
//! doing its whole job: heartbeats, creating slots through the Docker socket, the
//! egress lock in every slot and the host rules on this machine's Docker, health
//! checks, its status endpoints, destroying slots, and removing everything (host
//! rules included) at shutdown.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use berth_scheduler::{Config, Scheduler, store::Store};
use berth_tests::docker;
use berth_wire::{ExecEvent, Workspace, labels};
use serde_json::json;

/// Kills hostd and removes its containers if the test fails half-way.
struct HostdChild {
    child: Child,
    host_id: String,
}

impl Drop for HostdChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        docker::remove_labelled(labels::HOST, &self.host_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostd_binary_works_with_its_own_filter_enforcing() {
    let (ws_image, proxy_image) = docker::images().clone();
    let host_id = format!("tb{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let token = uuid::Uuid::new_v4().simple().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let scheduler = Scheduler::new(
        Config {
            pools: [("default".to_owned(), 2)].into(),
            host_token: token.clone(),
            ..Config::default()
        },
        Store::memory(),
    );
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(berth_scheduler::run(
        scheduler.clone(),
        listener,
        async move {
            let _ = stop_rx.changed().await;
        },
    ));

    let hostd_port = berth_tests::free_port();
    let hostd_url = format!("http://127.0.0.1:{hostd_port}");
    let child = Command::new(berth_tests::bin_dir().join("hostd"))
        .args(["--listen", &format!("127.0.0.1:{hostd_port}")])
        .args(["--host-id", &host_id, "--scheduler-url", &api])
        .args([
            "--workspace-image",
            &ws_image,
            "--proxy-image",
            &proxy_image,
        ])
        .args(["--memory-limit-mib", "256", "--pids-limit", "128"])
        .args(["--self-seccomp", "enforce", "--cleanup-on-exit"])
        .args([
            "--label",
            &format!("{}={}", docker::TEST_RUN, docker::run_id()),
        ])
        .env("BERTH_HOST_TOKEN", &token)
        .env("BERTH_LOG", "info")
        .stdout(Stdio::null())
        .spawn()
        .expect("start hostd");
    let mut hostd = HostdChild {
        child,
        host_id: host_id.clone(),
    };
    let pid = hostd.child.id();

    // The pool fills: heartbeats, slot creation and health checks all ran filtered.
    let mut filled = false;
    for _ in 0..600 {
        let sizes = scheduler.store().pool_sizes().await.unwrap();
        if sizes.get("default").copied().unwrap_or(0) >= 2 {
            filled = true;
            break;
        }
        assert!(
            hostd.child.try_wait().unwrap().is_none(),
            "hostd died (a syscall outside its filter?)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(filled, "pool never filled");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("Seccomp:\t2"),
        "hostd is not filtered: {status}"
    );
    // Only the documented capabilities are left, in every set that could give any
    // back (the bounding set bounds what the iptables tools it runs can have).
    let kept = format!("{:016x}", berth_hostd::capabilities::kept_mask());
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(set))
            .unwrap_or_else(|| panic!("no {set} in {status}"));
        assert_eq!(line, format!("{set}:\t{kept}"), "hostd's {set}");
    }
    for set in ["CapInh", "CapAmb"] {
        let line = status.lines().find(|l| l.starts_with(set)).unwrap();
        assert_eq!(line, format!("{set}:\t{:016x}", 0), "hostd's {set}");
    }

    let http = reqwest::Client::new();
    let ws: Workspace = http
        .post(format!("{api}/v1/workspaces"))
        .json(&json!({"conversation_id": "filtered"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = http
        .post(format!("{}/v1/exec", ws.agent_url))
        .bearer_auth(&ws.token)
        .json(&json!({"cmd": ["echo", "through a filtered hostd"]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<ExecEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        matches!(events.last(), Some(ExecEvent::Exit { code: Some(0), .. })),
        "{events:?}"
    );

    // Its status endpoints answer.
    for path in ["/", "/status", "/metrics", "/healthz"] {
        let resp = http.get(format!("{hostd_url}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let report: serde_json::Value = http
        .get(format!("{hostd_url}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["host_id"], host_id.as_str());
    // With those capabilities and its filter on, it applied and proved the host
    // rules on this machine's Docker and every slot's egress lock.
    assert_eq!(report["compliant"], true, "{report}");
    for check in [
        "host_rules_v4",
        "host_rules_v6",
        "slot_rules",
        "container_audit",
    ] {
        let c = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == check)
            .unwrap_or_else(|| panic!("no check {check}: {report}"));
        assert_eq!(c["ok"], true, "{c}");
    }

    // Destroying a slot goes through the filtered Docker client too.
    let del = http
        .delete(format!("{api}/v1/workspaces/{}", ws.id))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    berth_tests::assert_workspace_gone(&http, &ws).await;

    // SIGTERM: hostd removes everything and exits cleanly, not by SIGSYS.
    let _ = stop.send(true);
    let _ = server.await;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut exit = None;
    for _ in 0..300 {
        if let Some(s) = hostd.child.try_wait().unwrap() {
            exit = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = exit.expect("hostd did not stop within 30 s");
    assert!(exit.success(), "hostd exited with {exit:?}");
    assert!(
        docker::containers_labelled(labels::HOST, &host_id).is_empty(),
        "hostd's cleanup left containers"
    );
    let rules = Command::new("iptables")
        .args(["-S", "DOCKER-USER"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("BERTH-HOST"),
        "hostd's cleanup left its host rules"
    );
}

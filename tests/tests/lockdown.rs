//! hostd's lock-down, for real: the egress lock in namespaces the tests make (with a
//! fake metadata listener, no route out) and in real slots, the host rules, the
//! container audit, and re-verification after a restart.
//!
//! Network rule: traffic goes only to loopback, to our own containers, to listeners
//! these tests bind on this machine's own addresses, and — for the metadata
//! addresses — to listeners inside namespaces these tests made, which have no
//! interface but loopback.

use std::{process::Command, sync::Arc, time::Duration};

use berth_hostd::{
    enforce::{Enforcer, Journal},
    netfilter::{self, EgressPolicy, HostPolicy},
    privileged::{Family, HostPrivileged, Netns, Privileged},
};
use berth_tests::{
    agent::{AgentClient, acquire},
    docker,
    netns::{self, TestNetns},
    system::LocalBerth,
};
use berth_wire::uids;
use serde_json::Value;

async fn enforcer(policy: EgressPolicy) -> Enforcer {
    let privileged: Arc<dyn Privileged> = Arc::new(HostPrivileged::new(docker::connect().await));
    Enforcer {
        privileged,
        egress: policy,
        host: HostPolicy::default(),
        journal: Journal::default(),
    }
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").args(["-c", cmd]).output().expect("sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_reachable_before_the_lock_and_refused_after_for_every_uid() {
    netns::sweep_leftovers();
    let ns = TestNetns::new();
    ns.add_local_addresses(&[
        netfilter::IMDS_V4,
        netfilter::IMDS_V6,
        netfilter::ECS_CREDENTIALS,
    ]);
    let listeners = [
        ns.listen(netfilter::IMDS_V4, 80, Duration::from_secs(30)),
        ns.listen(netfilter::IMDS_V6, 80, Duration::from_secs(30)),
        ns.listen(netfilter::ECS_CREDENTIALS, 80, Duration::from_secs(30)),
    ];
    let targets = [
        netfilter::IMDS_V4,
        netfilter::IMDS_V6,
        netfilter::ECS_CREDENTIALS,
    ];
    // The control: without Berth's rules, both uids reach the fake listeners.
    for uid in [uids::WORKSPACE, uids::PROXY] {
        for t in targets {
            assert!(
                ns.connects_as(uid, t, 80),
                "control: uid {uid} should reach {t} before the lock"
            );
        }
    }
    let e = enforcer(EgressPolicy::default()).await;
    let locked = e
        .lock_slot(&Netns::Path(ns.path()))
        .await
        .expect("lock applies");
    assert_eq!(
        locked.repaired.len(),
        2,
        "both families applied: {locked:?}"
    );
    for uid in [uids::WORKSPACE, uids::PROXY] {
        for t in targets {
            assert!(
                !ns.connects_as(uid, t, 80),
                "uid {uid} reached {t} through the lock"
            );
        }
    }
    // Read back, the lock is exactly what was written (iptables-save's own form).
    for family in Family::BOTH {
        let saved = e
            .privileged
            .read_rules(&Netns::Path(ns.path()), family)
            .await
            .unwrap();
        let spec = netfilter::egress_spec(&EgressPolicy::default(), family);
        assert!(
            netfilter::drift(&saved, &[spec]).is_empty(),
            "{family:?} read back differs:\n{saved}"
        );
    }
    // Applying again changes nothing and adds no second hook.
    assert!(
        e.lock_slot(&Netns::Path(ns.path()))
            .await
            .unwrap()
            .repaired
            .is_empty()
    );
    let v4 = ns.exec_ok(&["iptables-save", "-t", "filter"]);
    assert_eq!(v4.matches("-A OUTPUT -j BERTH-EGRESS").count(), 1, "{v4}");
    drop(ns);
    let accepted: usize = listeners.into_iter().map(|l| l.join().unwrap()).sum();
    assert_eq!(
        accepted, 6,
        "only the six control connections were accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_switch_opens_the_endpoint_to_the_proxy_alone() {
    let ns = TestNetns::new();
    ns.add_local_addresses(&[netfilter::IMDS_V4, netfilter::ECS_CREDENTIALS]);
    let _l1 = ns.listen(netfilter::ECS_CREDENTIALS, 80, Duration::from_secs(10));
    let _l2 = ns.listen(netfilter::IMDS_V4, 80, Duration::from_secs(10));
    let e = enforcer(EgressPolicy {
        proxy_task_credentials: true,
        ..EgressPolicy::default()
    })
    .await;
    e.lock_slot(&Netns::Path(ns.path())).await.unwrap();
    assert!(ns.connects_as(uids::PROXY, netfilter::ECS_CREDENTIALS, 80));
    assert!(!ns.connects_as(uids::WORKSPACE, netfilter::ECS_CREDENTIALS, 80));
    assert!(
        !ns.connects_as(uids::PROXY, netfilter::IMDS_V4, 80),
        "IMDS stays closed to the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_hook_docker_user_are_restored_and_removed_cleanly() {
    let e = enforcer(EgressPolicy::default()).await;
    // An engine without DOCKER-USER (nftables backend) is a failing check, with why.
    let bare = TestNetns::new();
    let checks = e.check_host_rules(&Netns::Path(bare.path()), true).await;
    let v4 = checks.iter().find(|c| c.name == "host_rules_v4").unwrap();
    assert!(
        !v4.ok
            && v4.detail.contains("DOCKER-USER does not exist")
            && v4.detail.contains("nftables"),
        "{v4:?}"
    );

    // A namespace set up the way Docker sets up a host.
    let ns = TestNetns::new();
    ns.exec_ok(&["iptables", "-N", "DOCKER-USER"]);
    ns.exec_ok(&["iptables", "-A", "DOCKER-USER", "-j", "RETURN"]);
    ns.exec_ok(&["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"]);
    let target = Netns::Path(ns.path());
    let checks = e.check_host_rules(&target, true).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    let v4 = ns.exec_ok(&["iptables-save", "-t", "filter"]);
    assert!(
        v4.contains("-A DOCKER-USER -j BERTH-HOST\n-A DOCKER-USER -j RETURN\n"),
        "{v4}"
    );
    assert!(v4.contains("-A BERTH-HOST -d 169.254.169.254/32 -j DROP"));
    let v6 = ns.exec_ok(&["ip6tables-save", "-t", "filter"]);
    assert!(
        v6.contains("-A FORWARD -j BERTH-HOST\n")
            && v6.contains("-A BERTH-HOST -d fd00:ec2::254/128 -j DROP"),
        "{v6}"
    );

    // A firewall reload that drops our rules: restored by the next check, as an event.
    ns.exec_ok(&["iptables", "-F", "BERTH-HOST"]);
    ns.exec_ok(&["iptables", "-D", "DOCKER-USER", "-j", "BERTH-HOST"]);
    let checks = e.check_host_rules(&target, false).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    assert!(
        ns.exec_ok(&["iptables-save", "-t", "filter"])
            .contains("-A DOCKER-USER -j BERTH-HOST\n")
    );
    let ev = e.journal.events();
    assert!(
        ev.iter()
            .any(|e| e.kind == "rules_reapplied" && e.message.contains("host rules restored")),
        "{ev:?}"
    );

    // Removal takes ours away and leaves Docker's chain as it was.
    e.remove_host_rules(&target).await;
    let v4 = ns.exec_ok(&["iptables-save", "-t", "filter"]);
    assert!(!v4.contains("BERTH"), "{v4}");
    assert!(
        v4.contains("-A DOCKER-USER -j RETURN\n") && v4.contains("-A FORWARD -j DOCKER-USER\n"),
        "{v4}"
    );
}

/// A listener on the gateway address of a Docker network this test creates (an
/// address of this machine), counting the connections it accepts until dropped.
struct GatewayListener {
    network: String,
    addr: std::net::SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl GatewayListener {
    fn new() -> Self {
        let network = format!("bt-gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let out = sh(&format!(
            "docker network create --label {}={} {network} >/dev/null && \
             docker network inspect -f '{{{{(index .IPAM.Config 0).Gateway}}}}' {network}",
            docker::TEST_RUN,
            docker::run_id()
        ));
        let gateway = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !gateway.is_empty(),
            "network: {out:?}"
        );
        let listener =
            std::net::TcpListener::bind((gateway.as_str(), 0)).expect("bind on the gateway");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + Duration::from_secs(240);
            while !s.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < end {
                match listener.accept() {
                    Ok(_) => {
                        a.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            network,
            addr,
            accepted,
            stop,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for GatewayListener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sh(&format!(
            "docker network rm {} >/dev/null 2>&1",
            self.network
        ));
    }
}

/// Runs `cmd` in the workspace container as `uid`, outside the agent (docker exec).
fn exec_as(container: &str, uid: u32, cmd: &str) -> std::process::Output {
    Command::new("docker")
        .args([
            "exec",
            "-u",
            &uid.to_string(),
            container,
            "/bin/sh",
            "-c",
            cmd,
        ])
        .output()
        .expect("docker exec")
}

async fn hostd_text(berth: &LocalBerth, path: &str) -> String {
    let resp = berth
        .http
        .get(format!("{}{path}", berth.hostd_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.text().await.unwrap()
}

async fn status(berth: &LocalBerth) -> Value {
    berth
        .http
        .get(format!("{}/status", berth.hostd_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn workspace_can_connect(ws: &AgentClient, addr: std::net::SocketAddr) -> bool {
    let out = ws
        .sh(&format!(
            "timeout 5 nc {} {} </dev/null",
            addr.ip(),
            addr.port()
        ))
        .await;
    out.code == Some(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_slot_is_locked_down_and_repaired_when_flushed() {
    let berth = LocalBerth::start(1).await;
    assert!(
        berth.wait_pool(1, Duration::from_secs(60)).await,
        "pool never filled"
    );
    let gw = GatewayListener::new();
    let ws = acquire(&berth, "lockdown-real").await;
    let container = ws.container().await;
    let proxy_container = container.replace("-ws", "-proxy");

    // The workspace's uid reaches nothing outside, and cannot resolve names.
    assert!(
        !workspace_can_connect(&ws, gw.addr).await,
        "workspace uid reached {}",
        gw.addr
    );
    let dns = ws
        .sh(&format!("timeout 5 nslookup {proxy_container} 127.0.0.11"))
        .await;
    assert_ne!(
        dns.code,
        Some(0),
        "workspace uid resolved through Docker's DNS: {}",
        dns.stdout_text()
    );
    // It reaches the proxy on loopback, and ordinary tools are pointed at it.
    let health = ws
        .sh("timeout 5 wget -Y off -q -O - http://127.0.0.1:8080/health")
        .await;
    assert_eq!(
        health.code,
        Some(0),
        "proxy on loopback: {}",
        health.stderr_text()
    );
    // Without `-Y off`, wget goes through the proxy (HTTP_PROXY), whose policy
    // refuses a loopback upstream.
    let via_proxy = ws
        .sh("timeout 5 wget -q -O - http://127.0.0.1:8080/health")
        .await;
    assert!(via_proxy.stderr_text().contains("403"), "{via_proxy:?}");
    let env = ws.sh("env").await.stdout_text();
    assert!(
        env.contains("HTTPS_PROXY=http://127.0.0.1:8080\n")
            && env.contains("NO_PROXY=localhost,127.0.0.1,::1\n"),
        "{env}"
    );
    assert_eq!(gw.accepted(), 0);

    // The proxy's uid, in the same namespace, reaches the same listener and resolves.
    let out = exec_as(
        &container,
        uids::PROXY,
        &format!(
            "timeout 5 nc {} {} </dev/null",
            gw.addr.ip(),
            gw.addr.port()
        ),
    );
    assert!(out.status.success(), "proxy uid: {out:?}");
    assert!(
        berth_tests::wait_until(Duration::from_secs(5), || gw.accepted() == 1),
        "listener saw {}",
        gw.accepted()
    );
    let out = exec_as(
        &container,
        uids::PROXY,
        &format!("timeout 5 nslookup {proxy_container} 127.0.0.11"),
    );
    assert!(out.status.success(), "proxy uid resolves: {out:?}");

    // Someone flushes the slot's chain by hand: hostd restores it within its period.
    let pid = String::from_utf8_lossy(
        &sh(&format!(
            "docker inspect -f '{{{{.State.Pid}}}}' {proxy_container}"
        ))
        .stdout,
    )
    .trim()
    .to_owned();
    let flushed = sh(&format!("nsenter -t {pid} -n iptables -F BERTH-EGRESS"));
    assert!(flushed.status.success(), "{flushed:?}");
    let mut restored = false;
    for _ in 0..50 {
        let s = status(&berth).await;
        if s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "rules_reapplied")
        {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(restored, "no rules_reapplied event after the flush");
    let chain = sh(&format!("nsenter -t {pid} -n iptables -S BERTH-EGRESS"));
    assert!(String::from_utf8_lossy(&chain.stdout).contains("--uid-owner 2000 -j ACCEPT"));
    assert!(
        !workspace_can_connect(&ws, gw.addr).await,
        "after repair, the workspace uid is locked again"
    );
    // The service kept serving throughout.
    assert_eq!(ws.sh("echo still-here").await.stdout_text(), "still-here\n");
    let s = status(&berth).await;
    assert_eq!(s["compliant"], true, "{s}");
    // hostd measured the slot at idle: both containers, from the engine's account.
    // (This workspace's slot: the pool's refill may have made a newer one.)
    let slot = s["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sl| sl["agent_url"] == ws.workspace.agent_url.as_str())
        .unwrap_or_else(|| panic!("the workspace's slot is not reported: {s}"));
    let idle = slot["memory_idle_mib"]
        .as_u64()
        .unwrap_or_else(|| panic!("not measured: {slot}"));
    assert!(
        idle > 0 && idle < slot["memory_limit_mib"].as_u64().unwrap(),
        "{slot}"
    );
    let metrics = hostd_text(&berth, "/metrics").await;
    assert!(
        metrics.contains("berth_hostd_rules_reapplied_total 1\n"),
        "{metrics}"
    );
    drop(gw);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weakened_workspace_container_is_stopped_and_shown() {
    let berth = LocalBerth::start(0).await;
    let (ws_image, _) = docker::images().clone();
    let mut names = Vec::new();
    for (suffix, flag) in [
        ("capadd", "--cap-add NET_ADMIN --read-only"),
        ("writable", ""),
    ] {
        let name = format!(
            "berth-rogue-{suffix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let out = sh(&format!(
            "docker run -d --name {name} --label berth.managed=1 --label berth.host={host} \
             --label berth.role=workspace --label berth.slot={name} --label {run_key}={run} \
             --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges {flag} \
             --pids-limit 64 --memory 64m --network none --entrypoint /bin/sleep {ws_image} 300",
            host = berth.host_id,
            run_key = docker::TEST_RUN,
            run = docker::run_id(),
        ));
        assert!(out.status.success(), "{out:?}");
        names.push(name);
    }
    let running = |n: &str| {
        String::from_utf8_lossy(
            &sh(&format!("docker inspect -f '{{{{.State.Running}}}}' {n}")).stdout,
        )
        .trim()
            == "true"
    };
    assert!(
        berth_tests::wait_until(Duration::from_secs(10), || names
            .iter()
            .all(|n| !running(n))),
        "the audit did not stop both"
    );
    let page = hostd_text(&berth, "/").await;
    assert!(
        page.contains(&names[0]) && page.contains("no_cap_add: CapAdd is"),
        "{page}"
    );
    assert!(
        page.contains(&names[1])
            && page.contains("readonly_rootfs: the root filesystem is writable"),
        "{page}"
    );
    assert!(page.contains("container_stopped"));
    berth.stop().await;
    for n in names {
        let _ = sh(&format!("docker rm -f {n}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_hostd_finds_its_slots_and_reverifies_their_rules() {
    let (ws_image, proxy_image) = docker::images().clone();
    let host_id = format!("tr{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let config = berth_hostd::Config {
        host_id: host_id.clone(),
        runtime: berth_hostd::HostRuntime::Docker,
        instance_type: "local".into(),
        branch_limit: 4,
        branch_limit_source: berth_hostd::capacity::BranchSource::Configured,
        memory_system_mib: 512,
        advertise_url: "http://127.0.0.1:1".into(),
        scheduler_url: None,
        token: "0123456789abcdef0123".into(),
        templates: vec![berth_hostd::SlotTemplate {
            name: "default".into(),
            workspace_image: ws_image,
            proxy_image,
            memory_limit_mib: 128,
            memory_reservation_mib: 16,
            pids_limit: 64,
            workspace_size_mib: 64,
            seccomp_profile: Some(berth_seccomp::WORKSPACE_PROFILE_JSON.to_owned()),
            proxy_env: Vec::new(),
            proxy_config_dir: None,
        }],
        cleanup_on_exit: true,
        extra_labels: [(docker::TEST_RUN.to_owned(), docker::run_id().to_owned())].into(),
        self_seccomp: None,
        host_rules: None,
        egress: EgressPolicy::default(),
        check_every: Duration::from_secs(1),
        daemon_seccomp: None,
        checkpoints: None,
    };
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            docker::remove_labelled(berth_wire::labels::HOST, &self.0);
        }
    }
    let _cleanup = Cleanup(host_id.clone());
    let first = berth_hostd::Hostd::start(config.clone()).await.unwrap();
    let slot = first
        .create_slot(berth_wire::CreateSlot {
            slot_id: format!("{host_id}-a"),
            template: "default".into(),
        })
        .await
        .unwrap();
    assert_eq!(slot.state, berth_wire::SlotState::Ready);
    assert!(slot.rules_verified_at_ms.is_some());
    drop(first);

    // Someone removes the slot's rules while no hostd runs.
    let proxy = berth_hostd::docker::netns_owner(&slot.slot_id);
    let pid = String::from_utf8_lossy(
        &sh(&format!("docker inspect -f '{{{{.State.Pid}}}}' {proxy}")).stdout,
    )
    .trim()
    .to_owned();
    assert!(
        sh(&format!(
            "nsenter -t {pid} -n iptables -D OUTPUT -j BERTH-EGRESS"
        ))
        .status
        .success()
    );

    let second = berth_hostd::Hostd::start(config).await.unwrap();
    let report = second.report();
    assert_eq!(report.slots.len(), 1, "{report:?}");
    let found = &report.slots[0];
    assert_eq!(found.slot_id, slot.slot_id);
    assert_eq!(found.state, berth_wire::SlotState::Ready, "{found:?}");
    assert!(found.rules_verified_at_ms.is_some());
    // Its memory is counted again from its template: reservation, and both limits.
    assert_eq!((found.memory_mib, found.memory_limit_mib), (16, 128 + 64));
    assert_eq!(
        (
            report.memory_reserved_mib,
            report.memory_limit_total_mib,
            report.memory_system_mib
        ),
        (16, 192, 512)
    );
    let ev = second.journal().events();
    assert!(
        ev.iter()
            .any(|e| e.kind == "rules_applied"
                && e.subject.as_deref() == Some(slot.slot_id.as_str())),
        "{ev:?}"
    );
    let saved = sh(&format!("nsenter -t {pid} -n iptables-save -t filter"));
    assert!(String::from_utf8_lossy(&saved.stdout).contains("-A OUTPUT -j BERTH-EGRESS"));
    second.runtime().destroy_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_token_is_good_for_its_own_host_only() {
    let berth = LocalBerth::start(0).await;
    let own = berth_wire::host_token(&berth.host_secret, &berth.host_id);
    let report = status(&berth).await;
    let post = |host: String, token: String, body: Value| {
        let http = berth.http.clone();
        let api = berth.api.clone();
        async move {
            http.post(format!("{api}/v1/hosts/{host}/report"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        post(berth.host_id.clone(), own.clone(), report.clone()).await,
        204
    );
    // This host's token cannot speak for another host, nor can the fleet secret.
    let mut other = report.clone();
    other["host_id"] = "someone-else".into();
    assert_eq!(
        post("someone-else".into(), own.clone(), other.clone()).await,
        401
    );
    assert_eq!(
        post("someone-else".into(), berth.host_secret.clone(), other).await,
        401
    );
    assert_eq!(
        post(berth.host_id.clone(), berth.host_secret.clone(), report).await,
        401
    );

    // hostd's slot API takes only its own token.
    let delete = |token: String| {
        let http = berth.http.clone();
        let url = format!("{}/v1/slots/none-such", berth.hostd_url);
        async move {
            http.delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let elsewhere = berth_wire::host_token(&berth.host_secret, "someone-else");
    assert_eq!(delete(elsewhere).await, 401);
    assert_eq!(delete(berth.host_secret.clone()).await, 401);
    assert_eq!(delete(own).await, 200);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_without_the_slots_secret_is_refused() {
    let berth = LocalBerth::start(1).await;
    assert!(
        berth.wait_pool(1, Duration::from_secs(60)).await,
        "pool never filled"
    );
    let s = status(&berth).await;
    assert!(
        !s.to_string().contains("claim_secret"),
        "the secret is never reported: {s}"
    );
    let agent_url = s["slots"][0]["agent_url"].as_str().unwrap().to_owned();
    // Someone who can reach the agent tries to bind the warm slot first.
    for body in [
        serde_json::json!({"workspace_id": "ws-squatter", "token": "0123456789abcdef0123"}),
        serde_json::json!({"workspace_id": "ws-squatter", "token": "0123456789abcdef0123",
                           "claim_secret": "0".repeat(64)}),
    ] {
        let resp = berth
            .http
            .post(format!("{agent_url}/v1/claim"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, code, _) = berth_tests::agent::error_code(resp).await;
        assert_eq!((status, code.as_str()), (403, "claim_refused"));
    }
    // The scheduler, which holds the secret, still hands the slot out.
    let ws = acquire(&berth, "claim-secret").await;
    assert_eq!(ws.workspace.agent_url, agent_url);
    assert_eq!(ws.sh("echo mine").await.stdout_text(), "mine\n");
    // Inside, only the secret's hash is visible.
    let env = ws
        .sh("tr '\\0' '\\n' < /proc/1/environ")
        .await
        .stdout_text();
    let hash = env
        .lines()
        .find_map(|l| l.strip_prefix("BERTH_CLAIM_SECRET_SHA256="))
        .expect("the agent was given the hash");
    assert_eq!(hash.len(), 64);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_profile_check_reads_the_running_engine() {
    // This machine's dockerd runs Docker's built-in default; a daemon.json naming
    // Berth's profile is not enough until the daemon has loaded it.
    let dir = std::env::temp_dir().join(format!("berth-daemon-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("workspace.json");
    std::fs::write(&profile, berth_seccomp::WORKSPACE_PROFILE_JSON).unwrap();
    let config = dir.join("daemon.json");
    std::fs::write(
        &config,
        serde_json::json!({"seccomp-profile": profile}).to_string(),
    )
    .unwrap();
    let e = enforcer(EgressPolicy::default()).await;
    let c = e.check_daemon_seccomp(&config).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!c.ok, "{c:?}");
    assert!(
        c.detail.contains("the running daemon uses seccomp profile")
            && c.detail.contains("restart dockerd"),
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecs_credential_path_is_closed_in_input_and_restored() {
    // ECS DNATs 169.254.170.2 to the host's 127.0.0.1:51679, where it meets INPUT.
    let mut e = enforcer(EgressPolicy::default()).await;
    e.host = HostPolicy {
        block_credential_dnat: true,
    };
    let ns = TestNetns::new();
    ns.exec_ok(&["iptables", "-N", "DOCKER-USER"]);
    ns.exec_ok(&["iptables", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"]);
    let target = Netns::Path(ns.path());
    assert!(e.check_host_rules(&target, true).await.iter().all(|c| c.ok));
    let v4 = ns.exec_ok(&["iptables-save", "-t", "filter"]);
    let input: Vec<&str> = v4.lines().filter(|l| l.starts_with("-A INPUT ")).collect();
    assert_eq!(
        input,
        ["-A INPUT -j BERTH-HOST-INPUT", "-A INPUT -i lo -j ACCEPT"],
        "{v4}"
    );
    assert!(
        v4.contains(
            "-A BERTH-HOST-INPUT -d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 51679 -j DROP"
        ),
        "{v4}"
    );
    // Someone inserts an ACCEPT above ours: the hook is no longer first, so it is
    // put back on top.
    ns.exec_ok(&["iptables", "-I", "INPUT", "1", "-j", "ACCEPT"]);
    let checks = e.check_host_rules(&target, false).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    let v4 = ns.exec_ok(&["iptables-save", "-t", "filter"]);
    assert!(
        v4.contains("-A INPUT -j BERTH-HOST-INPUT\n-A INPUT -j ACCEPT\n"),
        "{v4}"
    );
    assert!(
        e.journal
            .events()
            .iter()
            .any(|ev| ev.kind == "rules_reapplied")
    );
}

/// hostd in ECS mode turns the credential path's INPUT rule on by itself, and
/// leaves it off when the proxy signs with the task's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_mode_closes_the_credential_path_unless_the_proxy_uses_task_credentials() {
    // An ECS agent with nothing running: hostd's first pass applies host rules.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/tasks",
        axum::routing::get(|| async { axum::Json(serde_json::json!({"Tasks": []})) }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    for (switch, closed) in [(false, true), (true, false)] {
        let ns = TestNetns::new();
        ns.exec_ok(&["iptables", "-N", "DOCKER-USER"]);
        let config = berth_hostd::Config {
            host_id: format!("i-{}", &uuid::Uuid::new_v4().simple().to_string()[..17]),
            runtime: berth_hostd::HostRuntime::Ecs {
                agent_url: agent_url.clone(),
            },
            instance_type: "c6i.large".into(),
            branch_limit: 10,
            branch_limit_source: berth_hostd::capacity::BranchSource::Table,
            memory_system_mib: 512,
            advertise_url: "http://127.0.0.1:1".into(),
            scheduler_url: None,
            token: "0123456789abcdef0123".into(),
            templates: Vec::new(),
            cleanup_on_exit: false,
            extra_labels: Default::default(),
            self_seccomp: None,
            host_rules: Some(Netns::Path(ns.path())),
            egress: EgressPolicy {
                proxy_task_credentials: switch,
                ..EgressPolicy::default()
            },
            check_every: Duration::from_secs(1),
            daemon_seccomp: None,
            checkpoints: None,
        };
        let hostd = berth_hostd::Hostd::start(config).await.unwrap();
        let v4 = ns.exec_ok(&["iptables-save", "-t", "filter"]);
        assert_eq!(
            v4.contains("-A INPUT -j BERTH-HOST-INPUT"),
            closed,
            "proxy_task_credentials={switch}: {v4}"
        );
        assert!(hostd.report().compliant, "{:?}", hostd.report().checks);
        assert_eq!(hostd.report().runtime, "ecs");
    }
}

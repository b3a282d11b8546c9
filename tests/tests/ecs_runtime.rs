//! The ECS path end to end, through the scheduler's API: RunTask with a constraint
//! naming the host placement chose (recorded by the forwarder in front of moto),
//! the task's containers started by that host's ECS-agent stand-in on the real
//! Docker engine, adopted by that host's hostd in ECS mode, claimed, used and
//! stopped. See tests/src/ecs_bed.rs for what is real and what stands in.

use std::time::{Duration, Instant};

use berth_scheduler::{addrs, throttle::BucketShape};
use berth_tests::{
    agent::AgentClient,
    ecs_bed::{BedOptions, EcsBed},
    ecs_forwarder::{Fault, constrained_instance},
};
use berth_wire::Workspace;
use serde_json::{Value, json};

async fn acquire(bed: &EcsBed, conversation: &str) -> Workspace {
    let resp = bed
        .http
        .post(format!("{}/v1/workspaces", bed.api))
        .json(&json!({"conversation_id": conversation}))
        .send()
        .await
        .expect("scheduler reachable");
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "acquire {conversation}: {body}");
    serde_json::from_str(&body).expect("workspace JSON")
}

/// The ENI addresses moto invented in its RunTask answers.
fn moto_addresses(bed: &EcsBed) -> Vec<String> {
    bed.forwarder
        .calls_of("RunTask")
        .iter()
        .flat_map(|r| r.response["tasks"].as_array().cloned().unwrap_or_default())
        .flat_map(|t| t["attachments"].as_array().cloned().unwrap_or_default())
        .flat_map(|a| a["details"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["name"] == "privateIPv4Address")
        .filter_map(|d| d["value"].as_str().map(str::to_owned))
        .collect()
}

async fn scheduler_metrics(bed: &EcsBed) -> String {
    bed.http
        .get(format!("{}/metrics", bed.api))
        .send()
        .await
        .expect("scheduler /metrics")
        .text()
        .await
        .expect("metrics text")
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_pool_fills_across_two_ecs_hosts_and_release_stops_the_task() {
    let bed = EcsBed::start(BedOptions {
        pool: 4,
        ..BedOptions::default()
    })
    .await;
    assert!(
        bed.wait_pool(4, Duration::from_secs(120)).await,
        "the pool did not fill; RunTask calls: {:?}",
        bed.forwarder
            .calls_of("RunTask")
            .iter()
            .map(|r| &r.response)
            .collect::<Vec<_>>()
    );
    let instances: Vec<String> = bed.hosts.iter().map(|h| h.instance_id.clone()).collect();
    let runs = bed.forwarder.calls_of("RunTask");
    assert!(!runs.is_empty());
    for r in &runs {
        let req = &r.request;
        let host = constrained_instance(req).expect("every RunTask names an instance");
        assert!(instances.contains(&host), "{host} is not one of ours");
        let count = req["count"].as_i64().unwrap_or(1);
        assert!((1..=10).contains(&count), "count {count}");
        assert_eq!(req["launchType"], "EC2");
        assert_eq!(req["enableExecuteCommand"], false);
        assert!(req["startedBy"].as_str().unwrap().starts_with("berth-"));
        let vpc = &req["networkConfiguration"]["awsvpcConfiguration"];
        assert_eq!(vpc["subnets"], json!([bed.subnet]));
        assert_eq!(vpc["securityGroups"], json!([bed.security_group]));
        assert_eq!(vpc["assignPublicIp"], "DISABLED");
        let tags: Vec<(String, String)> = req["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["key"].as_str().unwrap().to_owned(),
                    t["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(
            tags.contains(&("berth:template".into(), "default".into())),
            "{tags:?}"
        );
        assert!(
            tags.contains(&("berth:host".into(), host.clone())),
            "{tags:?}"
        );
        assert!(tags.iter().any(|(k, _)| k == "berth:batch"));
        let env = &req["overrides"]["containerOverrides"][0];
        assert_eq!(env["name"], "workspace-agent");
        let names: Vec<&str> = env["environment"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert!(names.contains(&"BERTH_TEMPLATE") && names.contains(&"BERTH_CLAIM_SECRET_SHA256"));
    }
    // Spread placement used both hosts, and each ran exactly what named it.
    for h in &bed.hosts {
        let named: usize = runs
            .iter()
            .filter(|r| constrained_instance(&r.request).as_deref() == Some(h.instance_id.as_str()))
            .map(|r| r.response["tasks"].as_array().map_or(0, Vec::len))
            .sum();
        assert!(named >= 1, "host {} got no task", h.instance_id);
        let ok =
            berth_tests::wait_until(Duration::from_secs(10), || h.agent.running().len() == named);
        assert!(
            ok,
            "{} runs {:?}, RunTask named it for {named}",
            h.instance_id,
            h.agent.running()
        );
    }
    // The scheduler connected only to addresses hostd vouched for: the tasks' real
    // addresses on the bed's network, never moto's fictional ENI addresses.
    let moto = moto_addresses(&bed);
    assert!(!moto.is_empty());
    let metrics = scheduler_metrics(&bed).await;
    assert_eq!(metric(&metrics, "berth_agent_address_refused_total"), 0);
    for i in 0..bed.hosts.len() {
        let status = bed.host_status(i).await;
        assert_eq!(status["runtime"], "ecs");
        for s in status["slots"].as_array().unwrap() {
            let url = s["agent_url"].as_str().unwrap();
            assert!(addrs::url_allowed(url, &bed.agent_networks), "{url}");
            assert!(
                !moto.iter().any(|m| url.contains(m.as_str())),
                "{url} is moto's"
            );
        }
        // hostd counts the awsvpc tasks on its host as branches in use.
        let used = status["branches_used"].as_u64().unwrap();
        assert_eq!(used as usize, bed.hosts[i].agent.running().len());
        let checks = status["checks"].as_array().unwrap();
        let agent_check = checks
            .iter()
            .find(|c| c["name"] == "ecs_agent")
            .expect("ecs_agent check");
        assert_eq!(agent_check["ok"], true, "{agent_check}");
    }

    // Acquire → exec in the task's containers → release stops the task.
    let ws = acquire(&bed, "ecs-conv-1").await;
    assert!(instances.contains(&ws.host_id));
    let agent = AgentClient::for_workspace(ws.clone());
    let out = agent.sh("echo hello; id -u; echo $HTTPS_PROXY").await;
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "hello\n1000\nhttp://127.0.0.1:8080\n");
    let host = bed
        .hosts
        .iter()
        .find(|h| h.instance_id == ws.host_id)
        .unwrap();
    let task_id = bed
        .scheduler
        .store()
        .workspace(&ws.id)
        .await
        .unwrap()
        .expect("record")
        .slot_id;
    assert!(host.agent.running().iter().any(|a| a.ends_with(&task_id)));
    let resp = bed
        .http
        .delete(format!("{}/v1/workspaces/{}", bed.api, ws.id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stops = bed.forwarder.calls_of("StopTask");
    let stop = stops
        .iter()
        .find(|r| r.request["task"].as_str() == Some(task_id.as_str()))
        .expect("release called StopTask for the slot's task");
    assert_eq!(stop.request["reason"], "released");
    assert_eq!(stop.status, 200);
    let gone = berth_tests::wait_until(Duration::from_secs(10), || {
        !host.agent.running().iter().any(|a| a.ends_with(&task_id))
    });
    assert!(gone, "the task's containers still run");
    // And hostd lets the slot go.
    let mut dropped = false;
    for _ in 0..100 {
        let status = bed
            .host_status(
                bed.hosts
                    .iter()
                    .position(|h| h.instance_id == ws.host_id)
                    .unwrap(),
            )
            .await;
        if !status["slots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["slot_id"] == task_id.as_str())
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "hostd still reports the stopped task's slot");
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_runtask_burst_succeeds_after_retries_within_the_bucket() {
    // A small bucket so that a burst of eight cold starts must wait for tokens.
    let shape = BucketShape {
        burst: 3,
        per_second: 4.0,
    };
    let bed = EcsBed::start(BedOptions {
        pool: 0,
        run_bucket: shape,
        ..BedOptions::default()
    })
    .await;
    // Both hosts reported: placement can choose.
    assert!(
        bed.wait_hosts(2, Duration::from_secs(20)).await,
        "hosts did not report"
    );
    bed.forwarder.inject(
        Fault::Throttle {
            action: "RunTask".into(),
        },
        3,
    );
    let start = Instant::now();
    let acquires = (0..8).map(|i| {
        let bed = &bed;
        async move { acquire(bed, &format!("burst-{i}")).await }
    });
    let got = futures_util::future::join_all(acquires).await;
    let took = start.elapsed();
    assert_eq!(got.len(), 8);
    assert_eq!(
        bed.forwarder.faults_left(),
        0,
        "every throttle was met and retried"
    );
    let runs = bed.forwarder.calls_of("RunTask");
    let throttled = runs
        .iter()
        .filter(|r| r.injected && r.status == 400)
        .count();
    assert_eq!(throttled, 3);
    assert_eq!(
        runs.len(),
        8 + 3,
        "each throttled call was retried once more"
    );
    // Never faster than the bucket: in every window, at most burst + rate × window
    // calls (with 20 ms for clock slop). StopTask shares the bucket; none ran here.
    let at: Vec<Instant> = runs.iter().map(|r| r.at).collect();
    for i in 0..at.len() {
        for j in i..at.len() {
            let window = at[j].duration_since(at[i]) + Duration::from_millis(20);
            let n = (j - i + 1) as f64;
            assert!(
                n <= shape.admits_within(window),
                "{n} RunTask calls within {window:?} exceed the bucket {shape:?}"
            );
        }
    }
    let metrics = scheduler_metrics(&bed).await;
    assert_eq!(metric(&metrics, "berth_ecs_throttled_total"), 3);
    assert!(metric(&metrics, "berth_ecs_retries_total") >= 3);
    // The figure: what this bucket allows one replica, measured against its arithmetic.
    let span = at.last().unwrap().duration_since(at[0]).as_secs_f64();
    let expected = (runs.len() as f64 - f64::from(shape.burst)) / shape.per_second;
    println!(
        "RunTask: {} calls (8 starts + 3 throttled retries) in {span:.2} s; bucket {}/{}/s \
         predicts >= {expected:.2} s; 8 workspaces in {:.2} s. Production bucket 100/40 per \
         account and region at 10 tasks per call: 1,000 slots at once, then 400 slots/s.",
        runs.len(),
        shape.burst,
        shape.per_second,
        took.as_secs_f64()
    );
    assert!(
        span + 0.05 >= expected,
        "calls came faster than the bucket allows"
    );
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resource_eni_on_one_host_moves_placement_to_the_other() {
    let mut bed = EcsBed::start(BedOptions {
        hosts: 0,
        pool: 0,
        ..BedOptions::default()
    })
    .await;
    // The roomier host is placement's first choice (spread), and it has no ENI left.
    let full = bed.add_host(16).await;
    let other = bed.add_host(8).await;
    assert!(
        bed.wait_hosts(2, Duration::from_secs(20)).await,
        "hosts did not report"
    );
    bed.forwarder.inject(
        Fault::RunTaskFailure {
            instance_id: full.clone(),
            reason: "RESOURCE:ENI".into(),
        },
        10,
    );
    let a = acquire(&bed, "eni-1").await;
    let b = acquire(&bed, "eni-2").await;
    assert_eq!(a.host_id, other);
    assert_eq!(
        b.host_id, other,
        "the refusing host stays out of placement while stale"
    );
    let runs = bed.forwarder.calls_of("RunTask");
    let on_full: Vec<&Value> = runs
        .iter()
        .filter(|r| constrained_instance(&r.request).as_deref() == Some(full.as_str()))
        .map(|r| &r.response)
        .collect();
    assert_eq!(
        on_full.len(),
        1,
        "one refusal, then the host's view is stale: {on_full:?}"
    );
    assert_eq!(on_full[0]["failures"][0]["reason"], "RESOURCE:ENI");
    let metrics = scheduler_metrics(&bed).await;
    assert_eq!(metric(&metrics, "berth_host_refusals_total"), 1);
    assert_eq!(metric(&metrics, "berth_ecs_task_failures_total"), 1);
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostd_on_an_ecs_host_publishes_a_task_and_withdraws_it_when_it_dies() {
    let bed = EcsBed::start(BedOptions {
        hosts: 1,
        pool: 1,
        ..BedOptions::default()
    })
    .await;
    bed.expect_pool(1, Duration::from_secs(30)).await;
    let status = bed.host_status(0).await;
    let slot = &status["slots"][0];
    assert_eq!(slot["state"], "ready", "{slot}");
    assert!(slot["rules_verified_at_ms"].as_u64().is_some(), "{slot}");
    let task_id = slot["slot_id"].as_str().unwrap().to_owned();
    let events: Vec<String> = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["kind"], e["subject"]))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.contains("slot_adopted") && e.contains(&task_id)),
        "{events:?}"
    );
    // hostd set the pids limit ECS cannot set.
    let ws_container = bed.hosts[0]
        .agent
        .container_of(&task_id, "workspace-agent")
        .expect("workspace container");
    let pids = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.PidsLimit}}", &ws_container])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&pids.stdout).trim(), "128");
    // The workspace container dies behind everyone's back.
    let killed = std::process::Command::new("docker")
        .args(["kill", &ws_container])
        .output()
        .unwrap();
    assert!(killed.status.success());
    let mut withdrawn = false;
    for _ in 0..100 {
        let s = bed.host_status(0).await;
        if !s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["slot_id"] == task_id.as_str())
        {
            withdrawn = s["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "slot_gone");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(withdrawn, "hostd still publishes the dead task's slot");
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orphan_task_is_stopped_after_its_grace_period_and_known_ones_are_not() {
    use berth_scheduler::runtime::{HostTarget, Runtime};
    let bed = EcsBed::start(BedOptions {
        hosts: 1,
        pool: 1,
        orphan_grace: Duration::from_secs(3),
        ..BedOptions::default()
    })
    .await;
    bed.expect_pool(1, Duration::from_secs(60)).await;
    // ECS pages long lists: here one task per page, so the orphan is on page two.
    bed.forwarder.page_list_tasks(1);
    let known = bed.scheduler.store().warm_slots().await.unwrap()[0]
        .slot_id
        .clone();
    // A task started behind the state's back (as a replica that died between
    // RunTask and recording the slot would leave).
    let target = HostTarget {
        host_id: bed.hosts[0].instance_id.clone(),
        hostd_url: bed.hosts[0].hostd_url.clone(),
    };
    // Timed from before RunTask: the reconciler cannot see the task sooner.
    let started = Instant::now();
    let orphan = bed
        .runtime
        .start_slots(&target, "default", 1)
        .await
        .pop()
        .unwrap()
        .expect("orphan starts");
    let mut stopped_at = None;
    while started.elapsed() < Duration::from_secs(30) {
        let stops = bed.forwarder.calls_of("StopTask");
        if let Some(s) = stops
            .iter()
            .find(|r| r.request["task"] == orphan.slot_id.as_str())
        {
            assert!(
                s.request["reason"].as_str().unwrap().starts_with("orphan"),
                "{}",
                s.request
            );
            stopped_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = match stopped_at {
        Some(a) => a,
        None => panic!("the orphan was not stopped:\n{}", bed.diagnose().await),
    };
    assert!(
        after >= Duration::from_secs(3),
        "stopped before its grace period (3 s from RunTask): {after:?}"
    );
    // Reconciliation followed ListTasks' pages, then described what it found.
    let lists = bed.forwarder.calls_of("ListTasks");
    assert!(
        lists
            .iter()
            .any(|r| r.request["nextToken"].as_str() == Some("berth-page-1")),
        "the second page was never asked for: {:?}",
        lists.iter().map(|r| &r.request).collect::<Vec<_>>()
    );
    assert!(
        !bed.forwarder
            .calls_of("StopTask")
            .iter()
            .any(|r| r.request["task"] == known.as_str()),
        "the pool's own slot was stopped"
    );
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_fleet_scales_out_through_the_capacity_provider_and_adopts_the_new_host() {
    // One host with room for one slot; the pool wants two.
    let mut bed = EcsBed::start(BedOptions {
        hosts: 1,
        pool: 2,
        branch_limit: 1,
        capacity_provider: Some("berth-workspaces".into()),
        ..BedOptions::default()
    })
    .await;
    // The shortfall is started with the capacity provider and no constraint; ECS
    // holds it PROVISIONING while managed scaling brings an instance up.
    let mut unplaced = Vec::new();
    // The scheduler scales out only once hosts had a heartbeat TTL to report.
    for _ in 0..400 {
        unplaced = bed
            .forwarder
            .calls_of("RunTask")
            .into_iter()
            .filter(|r| constrained_instance(&r.request).is_none())
            .collect();
        if !unplaced.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !unplaced.is_empty(),
        "no scale-out RunTask:\n{}",
        bed.diagnose().await
    );
    let req = &unplaced[0].request;
    assert_eq!(
        req["capacityProviderStrategy"][0]["capacityProvider"],
        "berth-workspaces"
    );
    assert!(
        req.get("launchType").is_none(),
        "a capacity provider strategy excludes launchType"
    );
    assert_eq!(
        unplaced[0].response["tasks"][0]["lastStatus"],
        "PROVISIONING",
        "{} {}\n{}",
        unplaced[0].status,
        unplaced[0].response,
        bed.moto.log_tail().join("\n")
    );
    let scale_out_tasks: usize = unplaced
        .iter()
        .map(|r| r.response["tasks"].as_array().map_or(0, Vec::len))
        .sum();
    // Still provisioning a few describes later; nothing on the old host took it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let describes = bed.forwarder.calls_of("DescribeTasks");
    assert!(
        describes.iter().any(|r| r.response["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["lastStatus"] == "PROVISIONING")),
        "the scheduler did not watch the provisioning task"
    );
    // The new instance comes up: its ECS agent registers, its hostd reports.
    let new_host = bed.add_host(4).await;
    let ci = bed
        .hosts
        .last()
        .unwrap()
        .agent
        .container_instance_arn
        .clone();
    bed.forwarder.place_unplaced_on(&ci);
    bed.expect_pool(2, Duration::from_secs(60)).await;
    let warm = bed.scheduler.store().warm_slots().await.unwrap();
    let on_new = warm.iter().filter(|w| w.host_id == new_host).count();
    assert_eq!(
        on_new, scale_out_tasks,
        "each scale-out task became a warm slot on the new host: {warm:?}"
    );
    let metrics = scheduler_metrics(&bed).await;
    assert_eq!(
        metric(&metrics, "berth_ecs_scale_out_tasks_total") as usize,
        scale_out_tasks
    );
    // A warm slot from the new host serves a conversation.
    let ws = acquire(&bed, "after-scale-out").await;
    let agent = AgentClient::for_workspace(ws);
    assert_eq!(agent.sh("echo up").await.stdout_text(), "up\n");
    bed.stop().await;
}

/// Accepts connections on `addr`'s listener for at most 60 s, counting them.
fn count_accepts(
    listener: std::net::TcpListener,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    listener.set_nonblocking(true).unwrap();
    let n = std::sync::Arc::new(AtomicUsize::new(0));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (a, s) = (n.clone(), stop.clone());
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        while !s.load(Ordering::Relaxed) && Instant::now() < end {
            match listener.accept() {
                Ok(_) => {
                    a.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (n, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ecs_workspace_is_locked_down_as_a_docker_one_is() {
    use std::sync::atomic::Ordering;
    let bed = EcsBed::start(BedOptions {
        hosts: 1,
        pool: 1,
        ..BedOptions::default()
    })
    .await;
    bed.expect_pool(1, Duration::from_secs(60)).await;
    // A listener on the bed network's gateway: an address of this machine that the
    // task's namespace routes to, standing for "anything outside".
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &bed.network,
        ])
        .output()
        .unwrap();
    let gateway = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let listener = std::net::TcpListener::bind((gateway.as_str(), 0)).expect("bind on the gateway");
    let addr = listener.local_addr().unwrap();
    let (accepted, stop) = count_accepts(listener);

    let ws = acquire(&bed, "ecs-lockdown").await;
    let agent = AgentClient::for_workspace(ws.clone());
    let task_id = bed
        .scheduler
        .store()
        .workspace(&ws.id)
        .await
        .unwrap()
        .unwrap()
        .slot_id;
    let container = bed.hosts[0]
        .agent
        .container_of(&task_id, "workspace-agent")
        .unwrap();
    // The workspace's uid reaches nothing outside and cannot use Docker's DNS.
    let out = agent
        .sh(&format!(
            "timeout 5 nc {} {} </dev/null",
            addr.ip(),
            addr.port()
        ))
        .await;
    assert_ne!(out.code, Some(0), "the workspace uid reached {addr}");
    let dns = agent
        .sh("timeout 5 nslookup example.invalid 127.0.0.11")
        .await;
    assert_ne!(dns.code, Some(0), "the workspace uid used Docker's DNS");
    // The proxy on loopback answers it.
    let health = agent
        .sh("timeout 5 wget -Y off -q -O - http://127.0.0.1:8080/health")
        .await;
    assert_eq!(
        health.code,
        Some(0),
        "proxy on loopback: {}",
        health.stderr_text()
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 0);
    // The proxy's uid, in the same task namespace, gets out.
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            "-u",
            &berth_wire::uids::PROXY.to_string(),
            &container,
            "/bin/sh",
            "-c",
            &format!("timeout 5 nc {} {} </dev/null", addr.ip(), addr.port()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "proxy uid: {out:?}");
    assert!(
        berth_tests::wait_until(Duration::from_secs(5), || accepted.load(Ordering::Relaxed)
            == 1),
        "the listener saw {}",
        accepted.load(Ordering::Relaxed)
    );
    // The rules live in the namespace ECS's pause container owns, and read back.
    let pause = bed.hosts[0]
        .agent
        .container_of(&task_id, "~internal~ecs~pause")
        .unwrap();
    let pid = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", &pause])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_owned();
    let rules = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-n", "iptables-save", "-t", "filter"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains("-A OUTPUT -j BERTH-EGRESS"), "{rules}");
    assert!(rules.contains("169.254.169.254"), "{rules}");
    stop.store(true, Ordering::Relaxed);
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shrunk_pool_empties_the_hosts_without_claimed_workspaces_first() {
    let bed = EcsBed::start(BedOptions {
        pool: 4,
        ..BedOptions::default()
    })
    .await;
    bed.expect_pool(4, Duration::from_secs(60)).await;
    let ws = acquire(&bed, "stays").await;
    // Evening: the operator lowers the pool (bad input first: clear errors).
    let put = |template: &str, body: Value| {
        bed.http
            .put(format!("{}/v1/pools/{template}", bed.api))
            .json(&body)
            .send()
    };
    let r = put("gpu", json!({"target": 1})).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "template_not_found"
    );
    let r = put("default", json!({"target": 1_000_000})).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = put("default", json!({"target": 1})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["target"], 1);
    let idle = bed
        .hosts
        .iter()
        .find(|h| h.instance_id != ws.host_id)
        .expect("the other host");
    let mut settled = false;
    for _ in 0..300 {
        let ready = bed
            .scheduler
            .store()
            .pool_sizes()
            .await
            .unwrap()
            .get("default")
            .copied();
        if ready == Some(1) && idle.agent.running().is_empty() {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled,
        "the pool did not shrink onto the busy host:\n{}",
        bed.diagnose().await
    );
    let shrunk: Vec<_> = bed
        .forwarder
        .calls_of("StopTask")
        .into_iter()
        .filter(|r| r.request["reason"] == "pool shrank")
        .collect();
    assert!(shrunk.len() >= 2, "{} slots stopped", shrunk.len());
    // The conversation's workspace was never touched, and its host keeps the last warm slot.
    let warm = bed.scheduler.store().warm_slots().await.unwrap();
    assert_eq!(warm.len(), 1);
    assert_eq!(warm[0].host_id, ws.host_id);
    let agent = AgentClient::for_workspace(ws);
    assert_eq!(
        agent.sh("echo still here").await.stdout_text(),
        "still here\n"
    );
    let pools: Value = bed
        .http
        .get(format!("{}/v1/pools", bed.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pools["pools"][0]["target"], 1);
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_never_becomes_ready_is_stopped_and_5xx_are_retried() {
    let bed = EcsBed::start(BedOptions {
        hosts: 1,
        pool: 0,
        start_deadline: Duration::from_secs(3),
        ..BedOptions::default()
    })
    .await;
    assert!(
        bed.wait_hosts(1, Duration::from_secs(20)).await,
        "host did not report"
    );
    // ECS answers 500 twice, then the call goes through.
    bed.forwarder.inject(
        Fault::ServerError {
            action: "RunTask".into(),
        },
        2,
    );
    // The host's agent accepts the task but never starts it.
    bed.hosts[0].agent.ignore_new_tasks(true);
    let resp = bed
        .http
        .post(format!("{}/v1/workspaces", bed.api))
        .json(&json!({"conversation_id": "stuck"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "runtime_failed");
    let runs = bed.forwarder.calls_of("RunTask");
    assert_eq!(runs.iter().filter(|r| r.status == 500).count(), 2);
    assert!(
        runs.iter().any(|r| r.status == 200),
        "retried through the 5xx"
    );
    let stuck: Vec<_> = bed
        .forwarder
        .calls_of("StopTask")
        .into_iter()
        .filter(|r| {
            r.request["reason"]
                .as_str()
                .unwrap_or("")
                .contains("not ready")
        })
        .collect();
    assert_eq!(
        stuck.len(),
        1,
        "the cold start's task was stopped: {stuck:?}"
    );
    let metrics = scheduler_metrics(&bed).await;
    assert_eq!(metric(&metrics, "berth_ecs_tasks_stuck_total"), 1);
    assert_eq!(metric(&metrics, "berth_ecs_server_errors_total"), 2);
    // The agent recovers: the next acquire is served.
    bed.hosts[0].agent.ignore_new_tasks(false);
    let ws = acquire(&bed, "unstuck").await;
    assert_eq!(ws.source, berth_wire::Source::Cold);
    bed.stop().await;
}

/// The ECS runtime after Redis loses its data: hostd in ECS mode made every claim,
/// so the leader rebuilds the binding from its inventory (the conversation gets its
/// own workspace back, same token, agent still serving), and the warm tasks nobody
/// claimed — whose claim secrets were only in the lost state — are stopped through
/// ECS (StopTask) and the pool refilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_redis_loses_its_data_ecs_bindings_are_rebuilt_from_the_hosts() {
    let redis = berth_tests::redis_server::RedisServer::start().unwrap();
    let bed = EcsBed::start(BedOptions {
        pool: 2,
        state_url: Some(redis.url()),
        ..BedOptions::default()
    })
    .await;
    bed.expect_pool(2, Duration::from_secs(120)).await;
    let ws = acquire(&bed, "ecs-flush").await;
    bed.expect_pool(2, Duration::from_secs(120)).await;
    let stops_before = bed.forwarder.calls_of("StopTask").len();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let again: Workspace = loop {
        let resp = bed
            .http
            .post(format!("{}/v1/workspaces", bed.api))
            .json(&json!({"conversation_id": "ecs-flush"}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status == 200 {
            break serde_json::from_str(&body).unwrap();
        }
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("state_rebuilding"), "{body}");
        assert!(Instant::now() < deadline, "never rebuilt");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        (
            again.id.as_str(),
            again.token.as_str(),
            again.agent_url.as_str()
        ),
        (ws.id.as_str(), ws.token.as_str(), ws.agent_url.as_str())
    );
    let agent = AgentClient::for_workspace(again);
    assert_eq!(agent.sh("echo kept").await.stdout_text(), "kept\n");
    // The two unclaimable warm tasks were stopped through ECS; the pool refills.
    let deadline = Instant::now() + Duration::from_secs(60);
    while bed.forwarder.calls_of("StopTask").len() < stops_before + 2 {
        assert!(
            Instant::now() < deadline,
            "the unclaimable warm tasks were not stopped"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bed.expect_pool(2, Duration::from_secs(120)).await;
    let other = acquire(&bed, "ecs-after-flush").await;
    assert_ne!(other.agent_url, ws.agent_url, "not the claimed slot");
    bed.stop().await;
}

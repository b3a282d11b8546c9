//! The whole system in this process: hostd (docker runtime) and the scheduler (in
//! memory) on free loopback ports — the path `scheduler dev` runs.

use std::collections::HashMap;
use std::time::Duration;

use berth_scheduler::{Config, Scheduler, store::Store};

/// A running local Berth; stopped (and its containers removed) by [`LocalBerth::stop`],
/// or by `Drop` if a test panics first.
pub struct LocalBerth {
    /// Scheduler base URL.
    pub api: String,
    pub hostd_url: String,
    pub host_id: String,
    /// The fleet's host secret (each host's token is derived from it and its id).
    pub host_secret: String,
    pub scheduler: Scheduler,
    pub http: reqwest::Client,
    config: Config,
    state_url: Option<String>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Config new hosts are cloned from.
    hostd_base: berth_hostd::Config,
    /// Running hostds: (host id, task).
    hosts: Vec<(String, tokio::task::JoinHandle<()>)>,
}

/// Options for [`LocalBerth::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    pub pool: usize,
    pub seccomp_profile: Option<String>,
    pub branch_limit: u32,
    /// `redis://…` to share state with other replicas; `None` keeps it in memory.
    pub state_url: Option<String>,
    /// Extra environment and a configuration directory for every slot's proxy.
    pub proxy_env: Vec<String>,
    pub proxy_config_dir: Option<std::path::PathBuf>,
    /// The scheduler's template policies (`None`: the defaults).
    pub templates: Option<berth_scheduler::templates::Templates>,
    /// The scheduler's idle timeout (`None`: its default).
    pub idle_timeout: Option<Duration>,
    /// The checkpoint store of the scheduler and every host (`None`: no checkpoints).
    pub checkpoints: Option<berth_checkpoint::Store>,
    /// Each slot's memory limit and `/workspace` size (`None`: 256 MiB each).
    pub memory_limit_mib: Option<u64>,
    pub workspace_size_mib: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pool: 2,
            // The same profile hostd applies by default.
            seccomp_profile: Some(berth_seccomp::WORKSPACE_PROFILE_JSON.to_owned()),
            branch_limit: 50,
            state_url: None,
            proxy_env: Vec::new(),
            proxy_config_dir: None,
            templates: None,
            idle_timeout: None,
            checkpoints: None,
            memory_limit_mib: None,
            workspace_size_mib: None,
        }
    }
}

impl LocalBerth {
    pub async fn start(pool: usize) -> Self {
        Self::start_with(Options {
            pool,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(opts: Options) -> Self {
        let (ws_image, proxy_image) = crate::docker::images().clone();
        let host_id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let host_token = uuid::Uuid::new_v4().simple().to_string();
        let sched_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hostd_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", sched_listener.local_addr().unwrap());
        let hostd_url = format!("http://{}", hostd_listener.local_addr().unwrap());
        let hostd_config = berth_hostd::Config {
            host_id: host_id.clone(),
            runtime: berth_hostd::HostRuntime::Docker,
            instance_type: "local".into(),
            branch_limit: opts.branch_limit,
            branch_limit_source: berth_hostd::capacity::BranchSource::Configured,
            memory_system_mib: 512,
            advertise_url: hostd_url.clone(),
            scheduler_url: Some(api.clone()),
            token: host_token.clone(),
            templates: vec![berth_hostd::SlotTemplate {
                name: "default".into(),
                workspace_image: ws_image,
                proxy_image,
                memory_limit_mib: opts.memory_limit_mib.unwrap_or(256),
                memory_reservation_mib: 32,
                pids_limit: 128,
                workspace_size_mib: opts.workspace_size_mib.unwrap_or(256),
                seccomp_profile: opts.seccomp_profile.clone(),
                proxy_env: opts.proxy_env.clone(),
                proxy_config_dir: opts.proxy_config_dir.clone(),
            }],
            cleanup_on_exit: true,
            extra_labels: HashMap::from([(
                crate::docker::TEST_RUN.to_owned(),
                crate::docker::run_id().to_owned(),
            )]),
            // In-process: a filter would confine the test process itself. The real
            // binary runs with it on in tests/tests/hostd_binary.rs.
            self_seccomp: None,
            // Many hostds share this machine in one test process: the host's own
            // firewall is left alone here (tests/tests/lockdown.rs applies host rules
            // in a namespace of its own).
            host_rules: None,
            egress: berth_hostd::EgressPolicy::default(),
            check_every: Duration::from_secs(1),
            daemon_seccomp: None,
            checkpoints: opts.checkpoints.clone(),
        };
        let config = Config {
            pools: [("default".to_owned(), opts.pool)].into(),
            host_token: host_token.clone(),
            templates: opts.templates.clone().unwrap_or_default(),
            idle_timeout: opts.idle_timeout.unwrap_or(Config::default().idle_timeout),
            checkpoints: opts.checkpoints.clone(),
            ..Config::default()
        };
        let store = match &opts.state_url {
            Some(url) => Store::redis(url).await.expect("redis store"),
            None => Store::memory(),
        };
        let scheduler = Scheduler::new(config.clone(), store);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut rx1 = stop_rx.clone();
        let mut rx2 = stop_rx;
        let hostd_base = hostd_config.clone();
        let host_id_for_list = host_id.clone();
        let hostd_task = tokio::spawn(async move {
            berth_hostd::run(hostd_config, hostd_listener, async move {
                let _ = rx1.changed().await;
            })
            .await
            .expect("hostd runs");
        });
        let sched = scheduler.clone();
        let sched_task = tokio::spawn(async move {
            berth_scheduler::run(sched, sched_listener, async move {
                let _ = rx2.changed().await;
            })
            .await
            .expect("scheduler runs");
        });
        Self {
            api,
            hostd_url,
            host_id,
            host_secret: host_token,
            scheduler,
            config,
            state_url: opts.state_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            stop,
            tasks: vec![sched_task],
            hostd_base,
            hosts: vec![(host_id_for_list, hostd_task)],
        }
    }

    /// Starts one more hostd (another "machine") reporting to the scheduler; returns
    /// its host id.
    pub async fn add_host(&mut self) -> String {
        let host_id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = self.hostd_base.clone();
        config.host_id = host_id.clone();
        config.advertise_url = format!("http://{}", listener.local_addr().unwrap());
        let mut rx = self.stop.subscribe();
        let task = tokio::spawn(async move {
            berth_hostd::run(config, listener, async move {
                let _ = rx.changed().await;
            })
            .await
            .expect("hostd runs");
        });
        self.hosts.push((host_id.clone(), task));
        host_id
    }

    /// Simulates a host dying: its hostd stops at once (no goodbye, no cleanup, no
    /// more heartbeats) and its containers vanish.
    pub fn kill_host(&mut self, host_id: &str) {
        if let Some(pos) = self.hosts.iter().position(|(id, _)| id == host_id) {
            let (_, task) = self.hosts.remove(pos);
            task.abort();
        }
        crate::docker::remove_labelled(berth_wire::labels::HOST, host_id);
    }

    /// The gateway address of this host's Docker network: the machine's own
    /// address as its slots see it, where a test may bind listeners for them.
    /// hostd makes the network as it starts, so this waits for it (up to 20 s).
    pub fn gateway(&self) -> std::net::IpAddr {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = std::process::Command::new("docker")
                .args([
                    "network",
                    "inspect",
                    &format!("berth-{}", self.host_id),
                    "-f",
                    "{{(index .IPAM.Config 0).Gateway}}",
                ])
                .output()
                .expect("docker network inspect");
            if let Ok(ip) = String::from_utf8_lossy(&out.stdout).trim().parse() {
                return ip;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hostd's network berth-{} never appeared",
                self.host_id
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `POST /v1/workspaces` with `body`: the status and the JSON answer.
    pub async fn create(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}/v1/workspaces", self.api))
            .json(body)
            .send()
            .await
            .expect("scheduler reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// `DELETE` of `path` (e.g. `/v1/workspaces/ws-1?checkpoint=false`) on the
    /// scheduler: the status and the JSON answer.
    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .delete(format!("{}{path}", self.api))
            .send()
            .await
            .expect("scheduler reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Sets the default pool's target (`PUT /v1/pools/default`).
    pub async fn set_pool(&self, target: usize) {
        let resp = self
            .http
            .put(format!("{}/v1/pools/default", self.api))
            .json(&serde_json::json!({ "target": target }))
            .send()
            .await
            .expect("scheduler reachable");
        assert!(resp.status().is_success(), "set pool: {}", resp.status());
    }

    /// Waits until the default pool holds `n` ready slots.
    pub async fn wait_pool(&self, n: usize, limit: Duration) -> bool {
        crate::wait_pool(&self.scheduler, "default", n, limit).await
    }

    /// Starts another scheduler replica on the same Redis state (the system must
    /// have been started with `state_url`); returns its base URL.
    pub async fn add_replica(&mut self) -> String {
        let url = self
            .state_url
            .clone()
            .expect("replicas need a shared state_url");
        let store = Store::redis(&url).await.expect("redis store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let replica = Scheduler::new(self.config.clone(), store);
        let mut rx = self.stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            berth_scheduler::run(replica, listener, async move {
                let _ = rx.changed().await;
            })
            .await
            .expect("replica runs");
        }));
        api
    }

    /// Stops both services; hostd removes every container and network it made.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for (_, t) in self.hosts.drain(..) {
            let _ = t.await;
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for LocalBerth {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            // A test failed before stop(): remove what the hosts made, synchronously.
            let _ = self.stop.send(true);
            crate::docker::remove_labelled(berth_wire::labels::HOST, &self.host_id);
            for (id, _) in &self.hosts {
                crate::docker::remove_labelled(berth_wire::labels::HOST, id);
            }
        }
    }
}

//! The ECS path on one machine: moto (ECS's API state), the recording forwarder in
//! front of it, one ECS-agent stand-in and one hostd (`--runtime ecs`) per "host",
//! and the scheduler with the ECS runtime — all on loopback and one Docker network
//! the bed makes (it stands for the VPC).
//!
//! Real: the scheduler's ECS runtime and its calls through aws-sdk-ecs, moto's
//! answers, hostd's ECS mode (adoption, audit, egress lock read back, health),
//! Docker, the agent and proxy binaries in their images. Stand-ins: the ECS agent
//! ([`crate::ecs_agent`]) and instance metadata (a loopback listener answering
//! IMDSv2's two paths, for the hostd binary). See docs/ARCHITECTURE.md.

use std::{collections::HashMap, sync::Arc, time::Duration};

use berth_scheduler::{
    Config, Scheduler,
    addrs::Cidr,
    clients::Clients,
    ecs::{EcsConfig, EcsRuntime},
    store::Store,
};

use crate::{docker, ecs_agent::EcsAgentStandIn, ecs_forwarder::EcsForwarder, moto::MotoServer};

/// Memory each container of the bed's task definition asks for (moto counts it
/// against its fixed 7482 MiB per instance).
const CONTAINER_MIB: i32 = 64;

/// One ECS "host": its stand-in agent and its hostd.
pub struct EcsHost {
    pub instance_id: String,
    pub agent: EcsAgentStandIn,
    pub hostd_url: String,
    hostd: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Options for [`EcsBed::start`].
#[derive(Debug, Clone)]
pub struct BedOptions {
    pub hosts: usize,
    pub pool: usize,
    /// Slots each host offers (its branch limit).
    pub branch_limit: u32,
    pub run_bucket: berth_scheduler::throttle::BucketShape,
    pub refill_parallelism: usize,
    pub orphan_grace: Duration,
    /// Scale-out through this capacity provider (see the forwarder's scale-out play).
    pub capacity_provider: Option<String>,
    /// How long a started task may take to be ready before it is stopped.
    pub start_deadline: Duration,
    /// `redis://…` for the scheduler's state; `None` keeps it in memory.
    pub state_url: Option<String>,
}

impl Default for BedOptions {
    fn default() -> Self {
        Self {
            hosts: 2,
            pool: 2,
            branch_limit: 8,
            run_bucket: berth_scheduler::throttle::BucketShape::ECS_MUTATE,
            refill_parallelism: 4,
            orphan_grace: Duration::from_secs(300),
            capacity_provider: None,
            start_deadline: Duration::from_secs(60),
            state_url: None,
        }
    }
}

pub struct EcsBed {
    pub moto: MotoServer,
    pub forwarder: EcsForwarder,
    pub cluster: String,
    pub task_definition: String,
    pub network: String,
    pub subnet: String,
    pub security_group: String,
    pub api: String,
    pub scheduler: Scheduler,
    pub runtime: Arc<EcsRuntime>,
    pub hosts: Vec<EcsHost>,
    pub host_secret: String,
    pub http: reqwest::Client,
    /// What the scheduler may connect to: loopback and the bed's network.
    pub agent_networks: Vec<Cidr>,
    stop: tokio::sync::watch::Sender<bool>,
    scheduler_task: Option<tokio::task::JoinHandle<()>>,
}

/// An EC2 Query API call to moto (VPC, subnet, security group): a form POST whose
/// `Authorization` names the `ec2` service, which is how moto routes it (so no EC2
/// SDK is compiled for three calls).
async fn ec2(http: &reqwest::Client, endpoint: &str, params: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let form: String = [("Version", "2016-11-15")]
        .iter()
        .chain(params)
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    http.post(format!("{endpoint}/"))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("moto ec2 call")
        .text()
        .await
        .expect("moto ec2 answer")
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn xml_value(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map(|(v, _)| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no <{tag}> in moto's answer: {xml}"))
}

/// The subnet of a Docker network, e.g. `172.19.0.0/16`.
fn network_subnet(name: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            name,
        ])
        .output()
        .expect("docker network inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl EcsBed {
    pub async fn start(opts: BedOptions) -> Self {
        docker::sweep_leftovers();
        let (ws_image, proxy_image) = docker::images().clone();
        let moto = MotoServer::start().expect("moto");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        // Tasks stay where we put them (moto walks them one state per describe otherwise).
        http.post(format!(
            "{}/moto-api/state-manager/set-transition",
            moto.endpoint()
        ))
        .json(&serde_json::json!({"model_name": "ecs::task",
                "transition": {"progression": "manual", "times": 1_000_000_000}}))
        .send()
        .await
        .expect("pin moto's task states");
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let cluster = format!("berth-test-{tag}");
        let ecs = moto.ecs();
        ecs.create_cluster()
            .cluster_name(&cluster)
            .send()
            .await
            .expect("create cluster");
        let vpc = ec2(
            &http,
            &moto.endpoint(),
            &[("Action", "CreateVpc"), ("CidrBlock", "10.0.0.0/16")],
        )
        .await;
        let vpc_id = xml_value(&vpc, "vpcId");
        // moto's awsvpc RunTask names the ENI's DNS name, which exists only with
        // DNS host names on (otherwise it answers 500).
        ec2(
            &http,
            &moto.endpoint(),
            &[
                ("Action", "ModifyVpcAttribute"),
                ("VpcId", &vpc_id),
                ("EnableDnsHostnames.Value", "true"),
            ],
        )
        .await;
        let subnet = ec2(
            &http,
            &moto.endpoint(),
            &[
                ("Action", "CreateSubnet"),
                ("VpcId", &vpc_id),
                ("CidrBlock", "10.0.1.0/24"),
            ],
        )
        .await;
        let subnet = xml_value(&subnet, "subnetId");
        let sg = ec2(
            &http,
            &moto.endpoint(),
            &[
                ("Action", "CreateSecurityGroup"),
                ("GroupName", &format!("berth-ws-{tag}")),
                ("GroupDescription", "workspace tasks"),
                ("VpcId", &vpc_id),
            ],
        )
        .await;
        let security_group = xml_value(&sg, "groupId");
        let task_definition =
            register_workspace_task_definition(&ecs, tag, &ws_image, &proxy_image).await;

        // The "VPC": a Docker network of our own.
        let network = format!("berth-ecs-{tag}");
        let made = std::process::Command::new("docker")
            .args([
                "network",
                "create",
                "--label",
                &format!("{}={}", docker::TEST_RUN, docker::run_id()),
                "-o",
                "com.docker.network.bridge.enable_icc=false",
                &network,
            ])
            .output()
            .expect("docker network create");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let mut agent_networks = Cidr::parse_list("127.0.0.0/8").unwrap();
        agent_networks.push(Cidr::parse(&network_subnet(&network)).expect("network subnet"));

        let forwarder = EcsForwarder::start(&moto.endpoint()).await;
        if opts.capacity_provider.is_some() {
            forwarder.hold_unplaced();
        }
        let host_secret = uuid::Uuid::new_v4().simple().to_string();
        let sched_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", sched_listener.local_addr().unwrap());

        let mut ecs_config = EcsConfig::new(&cluster);
        ecs_config.task_definitions = [("*".to_owned(), task_definition.clone())].into();
        ecs_config.subnets = vec![subnet.clone()];
        ecs_config.security_groups = vec![security_group.clone()];
        ecs_config.started_by = format!("berth-{tag}");
        ecs_config.scheduler_name = "test".into();
        ecs_config.mutate_bucket = opts.run_bucket;
        ecs_config.start_deadline = opts.start_deadline;
        ecs_config.retry_deadline = Duration::from_secs(30);
        ecs_config.capacity_provider = opts.capacity_provider.clone();
        ecs_config.provision_deadline = Duration::from_secs(90);
        ecs_config.describe_every = Duration::from_millis(500);
        let client =
            EcsRuntime::client_static(&forwarder.endpoint(), "us-east-1", "testing", "testing");
        let runtime = Arc::new(EcsRuntime::new(
            client,
            ecs_config,
            Clients::new(host_secret.clone()),
        ));
        let config = Config {
            pools: [("default".to_owned(), opts.pool)].into(),
            host_token: host_secret.clone(),
            agent_networks: agent_networks.clone(),
            refill_parallelism: opts.refill_parallelism,
            orphan_grace: opts.orphan_grace,
            ..Config::default()
        };
        let store = match &opts.state_url {
            Some(url) => Store::redis(url).await.expect("redis store"),
            None => Store::memory(),
        };
        let scheduler = Scheduler::with_runtime(config, store, runtime.clone());
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let sched = scheduler.clone();
        let scheduler_task = tokio::spawn(async move {
            berth_scheduler::run(sched, sched_listener, async move {
                let _ = rx.changed().await;
            })
            .await
            .expect("scheduler runs");
        });
        let mut bed = Self {
            moto,
            forwarder,
            cluster,
            task_definition,
            network,
            subnet,
            security_group,
            api,
            scheduler,
            runtime,
            hosts: Vec::new(),
            host_secret,
            http,
            agent_networks,
            stop,
            scheduler_task: Some(scheduler_task),
        };
        for _ in 0..opts.hosts {
            bed.add_host(opts.branch_limit).await;
        }
        bed
    }

    /// A new "instance": its ECS-agent stand-in and its hostd (ECS mode), reporting
    /// to the scheduler.
    pub async fn add_host(&mut self, branch_limit: u32) -> String {
        // The instance ECS would register: moto's EC2 must know it.
        let run = ec2(
            &self.http,
            &self.moto.endpoint(),
            &[
                ("Action", "RunInstances"),
                ("ImageId", "ami-12c6146b"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("InstanceType", "c6i.large"),
                ("SubnetId", &self.subnet),
            ],
        )
        .await;
        let instance_id = xml_value(&run, "instanceId");
        let agent = EcsAgentStandIn::start(
            &self.forwarder,
            self.moto.ecs(),
            &self.cluster,
            &instance_id,
            &self.network,
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hostd_url = format!("http://{}", listener.local_addr().unwrap());
        let config = berth_hostd::Config {
            host_id: instance_id.clone(),
            runtime: berth_hostd::HostRuntime::Ecs {
                agent_url: agent.url(),
            },
            instance_type: "c6i.large".into(),
            branch_limit,
            branch_limit_source: berth_hostd::capacity::BranchSource::Configured,
            memory_system_mib: 512,
            advertise_url: hostd_url.clone(),
            scheduler_url: Some(self.api.clone()),
            token: self.host_secret.clone(),
            templates: vec![berth_hostd::SlotTemplate {
                name: "default".into(),
                workspace_image: String::new(),
                proxy_image: String::new(),
                memory_limit_mib: CONTAINER_MIB as u64,
                memory_reservation_mib: 32,
                pids_limit: 128,
                workspace_size_mib: 64,
                seccomp_profile: None,
                proxy_env: Vec::new(),
                proxy_config_dir: None,
            }],
            cleanup_on_exit: false,
            extra_labels: HashMap::from([(
                docker::TEST_RUN.to_owned(),
                docker::run_id().to_owned(),
            )]),
            self_seccomp: None,
            host_rules: None,
            egress: berth_hostd::EgressPolicy::default(),
            check_every: Duration::from_secs(1),
            daemon_seccomp: None,
            checkpoints: None,
        };
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let hostd = tokio::spawn(async move {
            berth_hostd::run(config, listener, async move {
                let _ = rx.changed().await;
            })
            .await
            .expect("hostd runs");
        });
        self.hosts.push(EcsHost {
            instance_id: instance_id.clone(),
            agent,
            hostd_url,
            hostd,
            stop,
        });
        instance_id
    }

    /// Waits until the default pool holds `n` ready slots.
    pub async fn wait_pool(&self, n: usize, limit: Duration) -> bool {
        crate::wait_pool(&self.scheduler, "default", n, limit).await
    }

    /// What the bed knows, for a failing test's message: every ECS call (action,
    /// status, answer) and each hostd's status.
    pub async fn diagnose(&self) -> String {
        let mut out = String::new();
        for l in self.moto.log_tail().iter().rev().take(40).rev() {
            out.push_str(&format!("moto: {l}\n"));
        }
        for r in self.forwarder.records() {
            out.push_str(&format!("{} {} {}\n", r.action, r.status, r.response));
        }
        for i in 0..self.hosts.len() {
            out.push_str(&format!("host {i}: {}\n", self.host_status(i).await));
            out.push_str(&format!("agent {i}: {:?}\n", self.hosts[i].agent.running()));
        }
        out
    }

    /// Waits until the default pool holds `n` ready slots, failing the test with
    /// everything the bed knows if it does not within `limit`.
    pub async fn expect_pool(&self, n: usize, limit: Duration) {
        if !self.wait_pool(n, limit).await {
            panic!(
                "the pool did not reach {n} slots:\n{}",
                self.diagnose().await
            );
        }
    }

    /// Waits until `n` hosts have reported to the scheduler.
    pub async fn wait_hosts(&self, n: usize, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if self
                .scheduler
                .store()
                .hosts()
                .await
                .map(|h| h.len())
                .unwrap_or(0)
                >= n
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// hostd's `/status` of host `i`.
    pub async fn host_status(&self, i: usize) -> serde_json::Value {
        self.http
            .get(format!("{}/status", self.hosts[i].hostd_url))
            .send()
            .await
            .expect("hostd status")
            .json()
            .await
            .expect("status JSON")
    }

    /// Stops everything the bed started; containers and the network go.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.scheduler_task.take() {
            let _ = t.await;
        }
        for h in self.hosts.drain(..) {
            let _ = h.stop.send(true);
            let _ = h.hostd.await;
            drop(h.agent);
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

impl Drop for EcsBed {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for h in &self.hosts {
            let _ = h.stop.send(true);
            h.hostd.abort();
        }
        self.hosts.clear();
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// Registers the workspace task definition as `terraform/modules/workspace` does
/// (two containers, awsvpc), with the locally built images.
async fn register_workspace_task_definition(
    ecs: &aws_sdk_ecs::Client,
    tag: &str,
    ws_image: &str,
    proxy_image: &str,
) -> String {
    use aws_sdk_ecs::types::{
        ContainerDefinition, KernelCapabilities, KeyValuePair, LinuxParameters, NetworkMode, Tmpfs,
        Ulimit, UlimitName,
    };
    let kv = |k: &str, v: &str| KeyValuePair::builder().name(k).value(v).build();
    let nofile = Ulimit::builder()
        .name(UlimitName::Nofile)
        .soft_limit(4096)
        .hard_limit(8192)
        .build()
        .unwrap();
    let locked = |tmpfs: Vec<Tmpfs>| {
        LinuxParameters::builder()
            .capabilities(KernelCapabilities::builder().drop("ALL").build())
            .init_process_enabled(true)
            .set_tmpfs(Some(tmpfs))
            .build()
    };
    let proxy_url = format!("http://127.0.0.1:{}", berth_wire::ports::PROXY);
    let agent = ContainerDefinition::builder()
        .name(berth_wire::ecs::WORKSPACE_CONTAINER)
        .image(ws_image)
        .essential(true)
        .user("1000:1000")
        .readonly_root_filesystem(true)
        .memory(CONTAINER_MIB)
        .environment(kv("BERTH_AGENT_LISTEN", "0.0.0.0:9000"))
        .environment(kv("BERTH_AGENT_ROOT", "/workspace"))
        .environment(kv("HTTPS_PROXY", &proxy_url))
        .environment(kv("HTTP_PROXY", &proxy_url))
        .environment(kv("NO_PROXY", "localhost,127.0.0.1,::1"))
        .docker_security_options("no-new-privileges")
        .linux_parameters(locked(vec![
            Tmpfs::builder()
                .container_path("/workspace")
                .size(64)
                .mount_options("rw")
                .mount_options("nosuid")
                .mount_options("nodev")
                .mount_options("uid=1000")
                .mount_options("gid=1000")
                .mount_options("mode=0755")
                .build()
                .unwrap(),
            Tmpfs::builder()
                .container_path("/tmp")
                .size(64)
                .mount_options("rw")
                .mount_options("nosuid")
                .mount_options("nodev")
                .mount_options("mode=1777")
                .build()
                .unwrap(),
        ]))
        .ulimits(nofile.clone())
        .build();
    let proxy = ContainerDefinition::builder()
        .name(berth_wire::ecs::PROXY_CONTAINER)
        .image(proxy_image)
        .essential(true)
        .user("2000:2000")
        .readonly_root_filesystem(true)
        .memory(CONTAINER_MIB)
        .docker_security_options("no-new-privileges")
        .linux_parameters(locked(Vec::new()))
        .ulimits(nofile)
        .build();
    let out = ecs
        .register_task_definition()
        .family(format!("berth-{tag}-workspace"))
        .network_mode(NetworkMode::Awsvpc)
        .container_definitions(agent)
        .container_definitions(proxy)
        .send()
        .await
        .expect("register the workspace task definition");
    out.task_definition()
        .and_then(|t| t.task_definition_arn())
        .expect("task definition ARN")
        .to_owned()
}

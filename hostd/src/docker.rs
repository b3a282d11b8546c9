//! The docker runtime: hostd creates and destroys warm slots itself.
//!
//! A slot is the local stand-in for an awsvpc task: a credential-proxy container on
//! the host's Berth network, and a workspace container that joins the proxy's network
//! namespace (`NetworkMode: container:<proxy>`), so the two share one address exactly
//! as the two containers of an ECS task share one ENI. Every object carries the
//! labels in [`berth_wire::labels`], so hostd can rebuild its inventory from the
//! engine after a restart, and leftovers can be found after a crash.

use std::collections::HashMap;

use futures_util::StreamExt;

use berth_wire::{SlotInfo, SlotState, labels, ports, uids};
use bollard::{
    Docker,
    models::{
        ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    },
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
        RemoveContainerOptionsBuilder,
    },
};

/// Limits and images a slot is made with.
#[derive(Debug, Clone)]
pub struct SlotTemplate {
    pub name: String,
    pub workspace_image: String,
    pub proxy_image: String,
    /// Hard memory limit of the workspace container (the proxy's is
    /// [`PROXY_MEMORY_LIMIT_MIB`]).
    pub memory_limit_mib: u64,
    /// Memory the scheduler reserves for the whole slot (both containers) when it
    /// places one, like ECS's `memoryReservation`: what an idle slot uses, so warm
    /// pools pack densely; the limits are what a busy one may grow to.
    pub memory_reservation_mib: u64,
    pub pids_limit: i64,
    /// Size of the writable `/workspace` tmpfs.
    pub workspace_size_mib: u64,
    /// Seccomp profile (Docker JSON) for the workspace container; `None` keeps the
    /// daemon's default profile.
    pub seccomp_profile: Option<String>,
    /// Extra `KEY=VALUE` environment for the proxy container (for example its
    /// Secrets Manager region or endpoint). The workspace container never sees it.
    pub proxy_env: Vec<String>,
    /// A host directory mounted read-only at [`PROXY_CONFIG_DIR`] in the proxy
    /// container only; its `proxy.toml`, when present, is the proxy's file
    /// configuration (name resolution, extra CAs, file routes).
    pub proxy_config_dir: Option<std::path::PathBuf>,
}

/// Where a slot's proxy finds its configuration directory.
pub const PROXY_CONFIG_DIR: &str = "/etc/berth/proxy";

/// The proxy container's environment: its admin channel (open only to the slot's
/// claim secret, whose hash it holds), its configuration file when the template
/// gives one, and the template's extra variables.
pub fn proxy_env(claim_secret_sha256: &str, t: &SlotTemplate) -> Vec<String> {
    let mut env = vec![
        format!("BERTH_PROXY_ADMIN_LISTEN=0.0.0.0:{}", ports::PROXY_ADMIN),
        format!("BERTH_CLAIM_SECRET_SHA256={claim_secret_sha256}"),
    ];
    if let Some(dir) = &t.proxy_config_dir
        && dir.join("proxy.toml").is_file()
    {
        env.push(format!("BERTH_PROXY_CONFIG={PROXY_CONFIG_DIR}/proxy.toml"));
    }
    env.extend(t.proxy_env.iter().cloned());
    env
}

/// Why a docker-runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine: {0}")]
    Connect(#[source] bollard::errors::Error),
    #[error("docker {op} for slot {slot_id}: {source}")]
    Engine {
        op: &'static str,
        slot_id: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("slot {slot_id}: proxy container has no address on network {network}")]
    NoAddress { slot_id: String, network: String },
    #[error("slot {slot_id}: agent at {agent_url} not healthy after {waited_ms} ms")]
    AgentNotReady {
        slot_id: String,
        agent_url: String,
        waited_ms: u64,
    },
    #[error("slot {slot_id}: lock-down could not be proven: {reason}")]
    Lockdown { slot_id: String, reason: String },
    #[error("unknown template `{0}`")]
    UnknownTemplate(String),
    #[error("template `{template}`: its seccomp profile is not JSON: {reason}")]
    BadProfile { template: String, reason: String },
    #[error("cannot install hostd's own seccomp filter: {0}")]
    SelfSeccomp(#[source] berth_seccomp::hostd::HostdFilterError),
}

/// Memory limit of every slot's proxy container.
pub const PROXY_MEMORY_LIMIT_MIB: i64 = 64;

/// Containers removed at once when many go together (hostd stopping, a slot's
/// two): enough to keep the engine busy, few enough not to swamp it.
pub const REMOVALS_AT_ONCE: usize = 16;

/// What a slot of template `t` may grow to: the workspace's limit and the proxy's.
pub fn slot_memory_limit_mib(t: &SlotTemplate) -> u64 {
    t.memory_limit_mib + PROXY_MEMORY_LIMIT_MIB.unsigned_abs()
}

/// The container whose first process owns a slot's network namespace: the proxy,
/// which the workspace container joins.
pub fn netns_owner(slot_id: &str) -> String {
    format!("berth-{slot_id}-proxy")
}

/// A slot's workspace container.
pub fn workspace_container(slot_id: &str) -> String {
    format!("berth-{slot_id}-ws")
}

/// The workspace container's environment: where the agent listens, the hash of the
/// slot's claim secret (workspace code can read it; only the secret itself claims),
/// and the proxy as every ordinary tool's HTTP(S) proxy (the egress lock refuses
/// anything else).
pub fn workspace_env(slot_id: &str, claim_secret_sha256: &str) -> Vec<String> {
    let proxy = format!("http://127.0.0.1:{}", ports::PROXY);
    let no_proxy = "localhost,127.0.0.1,::1";
    vec![
        format!("BERTH_AGENT_LISTEN=0.0.0.0:{}", ports::AGENT),
        "BERTH_AGENT_ROOT=/workspace".into(),
        format!("BERTH_SLOT_ID={slot_id}"),
        format!("BERTH_CLAIM_SECRET_SHA256={claim_secret_sha256}"),
        format!("HTTPS_PROXY={proxy}"),
        format!("HTTP_PROXY={proxy}"),
        format!("https_proxy={proxy}"),
        format!("http_proxy={proxy}"),
        format!("NO_PROXY={no_proxy}"),
        format!("no_proxy={no_proxy}"),
    ]
}

/// hostd's handle on the local Docker engine.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    host_id: String,
    network: String,
    /// Extra labels on everything created (tests add their run id here).
    extra_labels: HashMap<String, String>,
    http: reqwest::Client,
}

impl DockerRuntime {
    /// Connects to the local engine (negotiating the API version) and, when this
    /// host makes its own slots (`own_network`), makes sure its bridge network exists.
    /// ECS tasks bring their own network (awsvpc), so ECS mode makes none.
    pub async fn connect(
        host_id: &str,
        extra_labels: HashMap<String, String>,
        own_network: bool,
    ) -> Result<Self, DockerError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(DockerError::Connect)?
            .negotiate_version()
            .await
            .map_err(DockerError::Connect)?;
        let rt = Self {
            docker,
            host_id: host_id.to_owned(),
            network: format!("berth-{host_id}"),
            extra_labels,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        };
        if own_network {
            rt.ensure_network().await?;
        }
        Ok(rt)
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn labels(&self, slot_id: &str, template: &str, role: &str) -> HashMap<String, String> {
        let mut l = self.extra_labels.clone();
        l.insert(labels::MANAGED.into(), "1".into());
        l.insert(labels::HOST.into(), self.host_id.clone());
        l.insert(labels::SLOT.into(), slot_id.into());
        l.insert(labels::TEMPLATE.into(), template.into());
        l.insert(labels::ROLE.into(), role.into());
        l
    }

    async fn ensure_network(&self) -> Result<(), DockerError> {
        let engine = |source| DockerError::Engine {
            op: "network",
            slot_id: "-".into(),
            source,
        };
        let existing = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new()
                    .filters(&HashMap::from([("name", vec![self.network.as_str()])]))
                    .build(),
            ))
            .await
            .map_err(engine)?;
        if existing
            .iter()
            .any(|n| n.name.as_deref() == Some(self.network.as_str()))
        {
            return Ok(());
        }
        let mut l = self.extra_labels.clone();
        l.insert(labels::MANAGED.into(), "1".into());
        l.insert(labels::HOST.into(), self.host_id.clone());
        self.docker
            .create_network(NetworkCreateRequest {
                name: self.network.clone(),
                driver: Some("bridge".into()),
                labels: Some(l),
                options: Some(HashMap::from([(
                    // No container-to-container traffic on the bridge: workspaces
                    // must not reach each other's agents or proxies.
                    "com.docker.network.bridge.enable_icc".to_owned(),
                    "false".to_owned(),
                )])),
                ..Default::default()
            })
            .await
            .map_err(engine)?;
        Ok(())
    }

    /// Creates and starts one slot, and waits until its agent answers `/health`.
    ///
    /// `lock` is called with the pid that owns the slot's network namespace (the
    /// proxy's) after the proxy starts and before the workspace container exists, so
    /// no workspace code ever runs outside the egress lock; an error from it fails
    /// the slot.
    pub async fn create_slot<F, Fut>(
        &self,
        slot_id: &str,
        t: &SlotTemplate,
        claim_secret_sha256: &str,
        lock: F,
    ) -> Result<SlotInfo, DockerError>
    where
        F: FnOnce(i64) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let result = self
            .try_create_slot(slot_id, t, claim_secret_sha256, lock)
            .await;
        if result.is_err() {
            // Leave nothing half-made behind.
            let _ = self.destroy_slot(slot_id).await;
        }
        result
    }

    async fn try_create_slot<F, Fut>(
        &self,
        slot_id: &str,
        t: &SlotTemplate,
        claim_secret_sha256: &str,
        lock: F,
    ) -> Result<SlotInfo, DockerError>
    where
        F: FnOnce(i64) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let engine = |op| {
            move |source| DockerError::Engine {
                op,
                slot_id: slot_id.to_owned(),
                source,
            }
        };
        let proxy_name = netns_owner(slot_id);
        let proxy = ContainerCreateBody {
            image: Some(t.proxy_image.clone()),
            user: Some(format!("{0}:{0}", uids::PROXY)),
            labels: Some(self.labels(slot_id, &t.name, "proxy")),
            env: Some(proxy_env(claim_secret_sha256, t)),
            host_config: Some(HostConfig {
                network_mode: Some(self.network.clone()),
                binds: t
                    .proxy_config_dir
                    .as_ref()
                    .map(|d| vec![format!("{}:{PROXY_CONFIG_DIR}:ro", d.display())]),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                readonly_rootfs: Some(true),
                memory: Some(PROXY_MEMORY_LIMIT_MIB * 1024 * 1024),
                pids_limit: Some(64),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings::default(),
                )])),
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::new()
                        .name(&proxy_name)
                        .build(),
                ),
                proxy,
            )
            .await
            .map_err(engine("create proxy"))?;
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(engine("start proxy"))?;
        let inspect = self
            .docker
            .inspect_container(&created.id, None)
            .await
            .map_err(engine("inspect proxy"))?;
        let pid = inspect
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .ok_or_else(|| DockerError::Lockdown {
                slot_id: slot_id.into(),
                reason: "the proxy container has no running process".into(),
            })?;
        let ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| DockerError::NoAddress {
                slot_id: slot_id.into(),
                network: self.network.clone(),
            })?;

        lock(pid).await.map_err(|reason| DockerError::Lockdown {
            slot_id: slot_id.into(),
            reason,
        })?;

        let mut security_opt = vec!["no-new-privileges:true".to_owned()];
        if let Some(profile) = &t.seccomp_profile {
            security_opt.push(format!("seccomp={profile}"));
        }
        let workspace = ContainerCreateBody {
            image: Some(t.workspace_image.clone()),
            user: Some(format!("{0}:{0}", uids::WORKSPACE)),
            labels: Some(self.labels(slot_id, &t.name, "workspace")),
            env: Some(workspace_env(slot_id, claim_secret_sha256)),
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{}", created.id)),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(security_opt),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([
                    (
                        "/workspace".to_owned(),
                        format!(
                            "rw,nosuid,nodev,size={}m,uid=1000,gid=1000,mode=0755",
                            t.workspace_size_mib
                        ),
                    ),
                    (
                        "/tmp".to_owned(),
                        "rw,nosuid,nodev,size=256m,mode=1777".to_owned(),
                    ),
                ])),
                memory: Some(i64::try_from(t.memory_limit_mib * 1024 * 1024).unwrap_or(i64::MAX)),
                memory_reservation: Some(
                    i64::try_from(t.memory_reservation_mib * 1024 * 1024).unwrap_or(i64::MAX),
                ),
                pids_limit: Some(t.pids_limit),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ws = self
            .docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::new()
                        .name(&workspace_container(slot_id))
                        .build(),
                ),
                workspace,
            )
            .await
            .map_err(engine("create workspace"))?;
        self.docker
            .start_container(&ws.id, None)
            .await
            .map_err(engine("start workspace"))?;

        let agent_url = format!("http://{ip}:{}", ports::AGENT);
        self.wait_healthy(slot_id, &agent_url, std::time::Duration::from_secs(30))
            .await?;
        Ok(SlotInfo {
            slot_id: slot_id.into(),
            template: t.name.clone(),
            host_id: self.host_id.clone(),
            agent_url,
            state: SlotState::Ready,
            memory_mib: t.memory_reservation_mib,
            memory_limit_mib: slot_memory_limit_mib(t),
            memory_idle_mib: None,
            reason: None,
            rules_verified_at_ms: None,
            created_at_ms: crate::now_ms(),
            claim_secret: None,
        })
    }

    /// Polls the agent's `/health` until it answers 200 or `limit` passes.
    async fn wait_healthy(
        &self,
        slot_id: &str,
        agent_url: &str,
        limit: std::time::Duration,
    ) -> Result<(), DockerError> {
        let start = std::time::Instant::now();
        let mut delay = std::time::Duration::from_millis(5);
        while start.elapsed() < limit {
            if self.agent_healthy(agent_url).await {
                return Ok(());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_millis(200));
        }
        Err(DockerError::AgentNotReady {
            slot_id: slot_id.into(),
            agent_url: agent_url.into(),
            waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    pub async fn agent_healthy(&self, agent_url: &str) -> bool {
        matches!(
            self.http.get(format!("{agent_url}/health")).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    /// Removes a slot's containers (workspace first, then the proxy it joined).
    /// Removing a slot that does not exist is not an error.
    pub async fn destroy_slot(&self, slot_id: &str) -> Result<usize, DockerError> {
        let filter = format!("{}={slot_id}", labels::SLOT);
        let host_filter = format!("{}={}", labels::HOST, self.host_id);
        self.remove_matching(slot_id, vec![filter, host_filter])
            .await
    }

    /// Removes every container and the network this host made.
    pub async fn destroy_all(&self) -> Result<usize, DockerError> {
        let host_filter = format!("{}={}", labels::HOST, self.host_id);
        let n = self.remove_matching("*", vec![host_filter]).await?;
        let _ = self.docker.remove_network(&self.network).await;
        Ok(n)
    }

    async fn remove_matching(
        &self,
        slot_id: &str,
        label_filters: Vec<String>,
    ) -> Result<usize, DockerError> {
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&HashMap::from([("label", label_filters)]))
                    .build(),
            ))
            .await
            .map_err(|source| DockerError::Engine {
                op: "list",
                slot_id: slot_id.into(),
                source,
            })?;
        // Workspaces before proxies: a proxy cannot go while a container shares its
        // netns. Each kind goes [`REMOVALS_AT_ONCE`] at a time: one host's whole
        // inventory (a thousand slots) within a minute, without flooding the engine.
        let (proxies, workspaces): (Vec<_>, Vec<_>) = containers.into_iter().partition(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(labels::ROLE))
                .is_some_and(|r| r == "proxy")
        });
        let mut removed = 0;
        for batch in [workspaces, proxies] {
            let results: Vec<Result<bool, DockerError>> =
                futures_util::stream::iter(batch.into_iter().filter_map(|c| c.id))
                    .map(|id| self.remove_one(id, slot_id))
                    .buffer_unordered(REMOVALS_AT_ONCE)
                    .collect()
                    .await;
            for r in results {
                removed += usize::from(r?);
            }
        }
        Ok(removed)
    }

    /// Removes one container (forced, with its volumes); `false` if it was already
    /// gone or going.
    async fn remove_one(&self, id: String, slot_id: &str) -> Result<bool, DockerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&id, Some(options)).await {
            Ok(()) => Ok(true),
            // Already gone, or being removed by someone else (a test's cleanup, an
            // operator): either way it is going.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(false),
            Err(source) => Err(DockerError::Engine {
                op: "remove",
                slot_id: slot_id.into(),
                source,
            }),
        }
    }

    /// Rebuilds the slot inventory from container labels (after a hostd restart).
    /// Slots are reported `Starting` until a health check has seen their agent.
    pub async fn inventory(&self) -> Result<Vec<SlotInfo>, DockerError> {
        let host_filter = format!("{}={}", labels::HOST, self.host_id);
        let role = format!("{}=proxy", labels::ROLE);
        let proxies = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(false)
                    .filters(&HashMap::from([("label", vec![host_filter, role])]))
                    .build(),
            ))
            .await
            .map_err(|source| DockerError::Engine {
                op: "list",
                slot_id: "*".into(),
                source,
            })?;
        Ok(proxies
            .into_iter()
            .filter_map(|c| {
                let l = c.labels?;
                let ip = c
                    .network_settings?
                    .networks?
                    .remove(&self.network)?
                    .ip_address?;
                Some(SlotInfo {
                    slot_id: l.get(labels::SLOT)?.clone(),
                    template: l.get(labels::TEMPLATE)?.clone(),
                    host_id: self.host_id.clone(),
                    agent_url: format!("http://{ip}:{}", ports::AGENT),
                    state: SlotState::Starting,
                    // Filled from the template by hostd, which knows the templates.
                    memory_mib: 0,
                    memory_limit_mib: 0,
                    memory_idle_mib: None,
                    reason: Some("found after a hostd restart; rules not yet re-verified".into()),
                    rules_verified_at_ms: None,
                    created_at_ms: c
                        .created
                        .and_then(|s| u64::try_from(s).ok())
                        .map(|s| s * 1000)
                        .unwrap_or_else(crate::now_ms),
                    claim_secret: None,
                })
            })
            .collect())
    }
}

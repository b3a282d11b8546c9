//! hostd on an ECS host: who this host is (IMDSv2), and which workspace tasks ECS
//! placed here (the ECS agent's introspection API, checked against the containers'
//! Docker labels).
//!
//! # Background
//! In ECS mode hostd never starts a task: the scheduler calls RunTask with a
//! constraint naming this instance, the ECS agent starts the task's containers, and
//! hostd adopts them. The agent's introspection API (`127.0.0.1:51678`, on the host
//! only) lists the tasks it runs with each container's Docker id and, for awsvpc
//! tasks, the ENI's address; Docker's labels (`com.amazonaws.ecs.task-arn`,
//! `com.amazonaws.ecs.container-name`) confirm which container is which. A task is
//! a slot when it has both of the workspace task definition's containers
//! ([`berth_wire::ecs::WORKSPACE_CONTAINER`] and
//! [`berth_wire::ecs::PROXY_CONTAINER`]); its slot id is its task id.
//!
//! Adoption is the same gate as docker mode: a slot is reported `Starting` until
//! its namespace's egress lock is applied and read back and its agent answers; only
//! then `Ready`. ECS starts the containers before hostd sees them, but nothing
//! untrusted runs in a warm slot until it is claimed, and it cannot be claimed
//! before it is `Ready`.

use std::{collections::BTreeMap, time::Duration};

use berth_wire::ecs as names;
use serde::Deserialize;

/// Where hostd asks who it is and what runs here.
#[derive(Debug, Clone)]
pub struct EcsEndpoints {
    /// Instance metadata (IMDSv2), `http://169.254.169.254` on EC2.
    pub imds: String,
    /// The ECS agent's introspection API, `http://127.0.0.1:51678` on EC2.
    pub agent: String,
}

/// Why the ECS host could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EcsHostError {
    #[error("instance metadata at {url}: {reason}")]
    Imds { url: String, reason: String },
    #[error("ECS agent introspection at {url}: {reason}")]
    Agent { url: String, reason: String },
}

/// The instance, from IMDSv2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    pub instance_type: String,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        // The metadata service and the agent are never behind a proxy.
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// Reads the instance id and type with IMDSv2: a session token first (PUT, with
/// a TTL), then each value with that token. IMDSv1 (no token) is never used; the
/// host image requires tokens and a hop limit of 1, so containers cannot do this.
pub async fn identity(imds: &str) -> Result<Identity, EcsHostError> {
    let client = http();
    let err = |url: &str, reason: String| EcsHostError::Imds {
        url: url.to_owned(),
        reason,
    };
    let token_url = format!("{imds}/latest/api/token");
    let resp = client
        .put(&token_url)
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send()
        .await
        .map_err(|e| err(&token_url, e.to_string()))?;
    if !resp.status().is_success() {
        return Err(err(&token_url, format!("answered {}", resp.status())));
    }
    let token = resp
        .text()
        .await
        .map_err(|e| err(&token_url, e.to_string()))?;
    let get = |path: &'static str| {
        let client = client.clone();
        let token = token.clone();
        let url = format!("{imds}/latest/meta-data/{path}");
        async move {
            let resp = client
                .get(&url)
                .header("X-aws-ec2-metadata-token", token.trim())
                .send()
                .await
                .map_err(|e| err(&url, e.to_string()))?;
            if !resp.status().is_success() {
                return Err(err(&url, format!("answered {}", resp.status())));
            }
            let v = resp.text().await.map_err(|e| err(&url, e.to_string()))?;
            let v = v.trim().to_owned();
            if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_whitespace()) {
                return Err(err(&url, format!("unexpected value `{v}`")));
            }
            Ok(v)
        }
    };
    Ok(Identity {
        instance_id: get("instance-id").await?,
        instance_type: get("instance-type").await?,
    })
}

/// `GET /v1/metadata` of the ECS agent.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AgentMetadata {
    #[serde(rename = "Cluster", default)]
    pub cluster: String,
    #[serde(rename = "ContainerInstanceArn", default)]
    pub container_instance_arn: Option<String>,
    #[serde(rename = "Version", default)]
    pub version: String,
}

/// `GET /v1/tasks` of the ECS agent.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct AgentTasks {
    #[serde(rename = "Tasks", default)]
    pub tasks: Vec<AgentTask>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AgentTask {
    #[serde(rename = "Arn")]
    pub arn: String,
    #[serde(rename = "DesiredStatus", default)]
    pub desired_status: String,
    #[serde(rename = "KnownStatus", default)]
    pub known_status: String,
    #[serde(rename = "Family", default)]
    pub family: String,
    #[serde(rename = "Containers", default)]
    pub containers: Vec<AgentContainer>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AgentContainer {
    #[serde(rename = "DockerId", default)]
    pub docker_id: String,
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Networks", default)]
    pub networks: Vec<AgentNetwork>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AgentNetwork {
    #[serde(rename = "NetworkMode", default)]
    pub network_mode: String,
    #[serde(rename = "IPv4Addresses", default)]
    pub ipv4_addresses: Vec<String>,
}

/// Reads the ECS agent's introspection API.
#[derive(Clone)]
pub struct AgentClient {
    base: String,
    http: reqwest::Client,
}

impl AgentClient {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: http(),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, EcsHostError> {
        let url = format!("{}{path}", self.base);
        let err = |reason: String| EcsHostError::Agent {
            url: url.clone(),
            reason,
        };
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("answered {}", resp.status())));
        }
        resp.json().await.map_err(|e| err(e.to_string()))
    }

    pub async fn metadata(&self) -> Result<AgentMetadata, EcsHostError> {
        self.get("/v1/metadata").await
    }

    pub async fn tasks(&self) -> Result<AgentTasks, EcsHostError> {
        self.get("/v1/tasks").await
    }
}

/// A workspace task found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTask {
    pub slot_id: String,
    pub task_arn: String,
    /// Docker ids of the two containers.
    pub workspace: String,
    pub proxy: String,
    /// The task's ENI address (awsvpc), where its agent listens.
    pub address: Option<String>,
    /// Whether ECS wants it and it runs.
    pub running: bool,
}

/// The awsvpc tasks ECS keeps on this host: each holds one ENI-trunk branch.
pub fn branches_in_use(tasks: &AgentTasks) -> u32 {
    let n = tasks
        .tasks
        .iter()
        .filter(|t| t.known_status != "STOPPED" && t.desired_status != "STOPPED")
        .filter(|t| {
            t.containers
                .iter()
                .any(|c| c.networks.iter().any(|n| n.network_mode == "awsvpc"))
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The workspace tasks among the agent's tasks (those with both containers).
pub fn workspace_tasks(tasks: &AgentTasks) -> Vec<FoundTask> {
    tasks
        .tasks
        .iter()
        .filter_map(|t| {
            let by_name: BTreeMap<&str, &AgentContainer> =
                t.containers.iter().map(|c| (c.name.as_str(), c)).collect();
            let ws = by_name.get(names::WORKSPACE_CONTAINER)?;
            let proxy = by_name.get(names::PROXY_CONTAINER)?;
            if ws.docker_id.is_empty() || proxy.docker_id.is_empty() {
                // Not created yet.
                return None;
            }
            let address = t
                .containers
                .iter()
                .flat_map(|c| &c.networks)
                .filter(|n| n.network_mode == "awsvpc")
                .flat_map(|n| &n.ipv4_addresses)
                .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
                .cloned();
            Some(FoundTask {
                slot_id: names::task_id(&t.arn).to_owned(),
                task_arn: t.arn.clone(),
                workspace: ws.docker_id.clone(),
                proxy: proxy.docker_id.clone(),
                address,
                running: t.known_status == "RUNNING" && t.desired_status == "RUNNING",
            })
        })
        .collect()
}

/// Whether a container's Docker labels say it is `container` of task `arn` — what
/// the ECS agent sets; a container claiming otherwise is not adopted.
pub fn labels_match(labels: &BTreeMap<String, String>, arn: &str, container: &str) -> bool {
    labels.get(names::LABEL_TASK_ARN).map(String::as_str) == Some(arn)
        && labels.get(names::LABEL_CONTAINER_NAME).map(String::as_str) == Some(container)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape the ECS agent answers `/v1/tasks` with (one awsvpc workspace task,
    /// its pause container first, and one other bridge-mode task).
    const TASKS: &str = r#"{"Tasks":[
      {"Arn":"arn:aws:ecs:us-east-1:123456789012:task/berth/0a1b2c3d4e5f","DesiredStatus":"RUNNING",
       "KnownStatus":"RUNNING","Family":"berth-workspace","Version":"3","Containers":[
        {"DockerId":"p0","DockerName":"ecs-berth-workspace-3-internalecspause","Name":"~internal~ecs~pause",
         "Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["10.0.5.17"]}]},
        {"DockerId":"w1","DockerName":"ecs-berth-workspace-3-workspace-agent","Name":"workspace-agent",
         "Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["10.0.5.17"]}]},
        {"DockerId":"x2","DockerName":"ecs-berth-workspace-3-credential-proxy","Name":"credential-proxy",
         "Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["10.0.5.17"]}]}]},
      {"Arn":"arn:aws:ecs:us-east-1:123456789012:task/berth/ffff","DesiredStatus":"RUNNING",
       "KnownStatus":"RUNNING","Family":"other","Version":"1","Containers":[
        {"DockerId":"o1","Name":"app","Networks":[{"NetworkMode":"bridge","IPv4Addresses":["172.17.0.2"]}]}]},
      {"Arn":"arn:aws:ecs:us-east-1:123456789012:task/berth/dead","DesiredStatus":"STOPPED",
       "KnownStatus":"RUNNING","Family":"berth-workspace","Version":"3","Containers":[
        {"DockerId":"w9","Name":"workspace-agent","Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["10.0.5.18"]}]},
        {"DockerId":"x9","Name":"credential-proxy","Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["10.0.5.18"]}]}]}
    ]}"#;

    #[test]
    fn workspace_tasks_are_found_with_their_containers_and_address() {
        let tasks: AgentTasks = serde_json::from_str(TASKS).unwrap();
        let found = workspace_tasks(&tasks);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[0],
            FoundTask {
                slot_id: "0a1b2c3d4e5f".into(),
                task_arn: "arn:aws:ecs:us-east-1:123456789012:task/berth/0a1b2c3d4e5f".into(),
                workspace: "w1".into(),
                proxy: "x2".into(),
                address: Some("10.0.5.17".into()),
                running: true,
            }
        );
        // ECS is stopping the other: found, but not running.
        assert!(!found[1].running);
    }

    #[test]
    fn branches_count_awsvpc_tasks_that_are_not_stopping() {
        let tasks: AgentTasks = serde_json::from_str(TASKS).unwrap();
        // The bridge task holds no branch; the stopping one is on its way out.
        assert_eq!(branches_in_use(&tasks), 1);
    }

    #[test]
    fn a_container_must_carry_the_labels_of_the_task_it_claims() {
        let arn = "arn:aws:ecs:us-east-1:1:task/c/abc";
        let mut l = BTreeMap::new();
        l.insert(names::LABEL_TASK_ARN.to_owned(), arn.to_owned());
        l.insert(
            names::LABEL_CONTAINER_NAME.to_owned(),
            names::WORKSPACE_CONTAINER.to_owned(),
        );
        assert!(labels_match(&l, arn, names::WORKSPACE_CONTAINER));
        assert!(!labels_match(&l, arn, names::PROXY_CONTAINER));
        assert!(!labels_match(
            &l,
            "arn:aws:ecs:us-east-1:1:task/c/other",
            names::WORKSPACE_CONTAINER
        ));
    }

    #[test]
    fn metadata_parses_the_agents_answer() {
        let m: AgentMetadata = serde_json::from_str(
            r#"{"Cluster":"berth-staging","ContainerInstanceArn":"arn:aws:ecs:us-east-1:1:container-instance/berth-staging/9f","Version":"Amazon ECS Agent - v1.89.0 (abc)"}"#,
        )
        .unwrap();
        assert_eq!(m.cluster, "berth-staging");
        assert!(m.version.contains("ECS Agent"));
    }
}

//! An ECS-agent stand-in, one per "host": plays the part of the ECS container agent
//! on an instance, which cannot run here.
//!
//! What it does, as the real agent would:
//! - registers its instance with the cluster (moto's RegisterContainerInstance);
//! - starts, through the real Docker engine, each task that a recorded RunTask
//!   placed on its instance, as ECS starts an awsvpc task: a pause container that
//!   owns the task's network namespace (its address on a Docker network the test
//!   made stands for the task's ENI), then the task definition's containers joined
//!   to it, with the definition's user, environment (plus the call's overrides),
//!   read-only root, dropped capabilities, security options, tmpfs mounts, memory
//!   and ulimits, and the Docker labels the ECS agent sets
//!   (`com.amazonaws.ecs.task-arn`, `…container-name`, `…task-definition-family`,
//!   `…task-definition-version`, `…cluster`);
//! - stops a task's containers when a recorded StopTask names it, and reports a
//!   task whose container died as STOPPED, then forgets it;
//! - serves the introspection API's shape (`/v1/metadata`, `/v1/tasks`) on a free
//!   loopback port.
//!
//! What it fakes: which instance a task runs on is read from the placement
//! constraint the scheduler sent (moto ignores constraints); moto's ENI address
//! (a fictional 10.x) is never used — the introspection API reports the pause
//! container's real address on the test's network; the agent's other duties (image
//! pulls, logs, the credential endpoint, health checks) are not played.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, routing::get};
use bollard::{
    models::{
        ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig, ResourcesUlimits,
    },
    query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder},
};
use serde_json::{Value, json};

use crate::{docker, ecs_forwarder::EcsForwarder};

/// The label the stand-in puts on its containers (with the run label), for cleanup.
pub const INSTANCE_LABEL: &str = "berth.test.ecs-instance";

#[derive(Debug, Clone)]
struct RunningTask {
    arn: String,
    family: String,
    version: String,
    /// (container name, Docker id), the pause container first.
    containers: Vec<(String, String)>,
    address: String,
    known_status: String,
    desired_status: String,
}

#[derive(Default)]
struct State_ {
    /// While set, RunTask placements are ignored (an agent that never starts them).
    ignoring: bool,
    tasks: BTreeMap<String, RunningTask>,
    /// Task definitions already described, by the name RunTask used.
    definitions: HashMap<String, Value>,
    /// Unconstrained RunTask requests (scale-out), by task ARN, until ECS says
    /// which instance each task is on.
    unplaced: HashMap<String, Value>,
}

/// One stand-in; its containers are removed on drop.
pub struct EcsAgentStandIn {
    pub instance_id: String,
    pub container_instance_arn: String,
    port: u16,
    state: Arc<Mutex<State_>>,
    stop: tokio::sync::watch::Sender<bool>,
}

#[derive(Clone)]
struct Ctx {
    instance_id: String,
    cluster: String,
    container_instance_arn: String,
    network: String,
    pause_image: String,
    ecs: aws_sdk_ecs::Client,
    docker: bollard::Docker,
    state: Arc<Mutex<State_>>,
}

impl EcsAgentStandIn {
    /// Registers `instance_id` in `cluster` and starts following `forwarder`.
    /// `ecs` talks to moto directly (what the agent does is not the scheduler's
    /// traffic); `network` is the Docker network that stands for the VPC.
    pub async fn start(
        forwarder: &EcsForwarder,
        ecs: aws_sdk_ecs::Client,
        cluster: &str,
        instance_id: &str,
        network: &str,
    ) -> Self {
        let doc = json!({"instanceId": instance_id, "region": "us-east-1"}).to_string();
        let registered = ecs
            .register_container_instance()
            .cluster(cluster)
            .instance_identity_document(doc)
            .send()
            .await
            .expect("register the container instance in moto");
        let container_instance_arn = registered
            .container_instance()
            .and_then(|c| c.container_instance_arn())
            .unwrap_or_default()
            .to_owned();
        let state = Arc::new(Mutex::new(State_::default()));
        let ctx = Ctx {
            instance_id: instance_id.to_owned(),
            cluster: cluster.to_owned(),
            container_instance_arn: container_instance_arn.clone(),
            network: network.to_owned(),
            pause_image: docker::images().0.clone(),
            ecs,
            docker: docker::connect().await,
            state: state.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind introspection");
        let port = listener.local_addr().expect("addr").port();
        let app = Router::new()
            .route("/v1/metadata", get(metadata))
            .route("/v1/tasks", get(tasks))
            .with_state(ctx.clone());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let mut stopped2 = stopped.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped2.changed().await;
                })
                .await;
        });
        let fwd = forwarder.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => break,
                }
                let new = fwd.records_from(seen);
                seen += new.len();
                for r in new {
                    if r.status != 200 || r.injected {
                        continue;
                    }
                    match r.action.as_str() {
                        "RunTask" => ctx.on_run_task(&r.request, &r.response).await,
                        "DescribeTasks" => ctx.on_describe(&r.response).await,
                        "StopTask" => {
                            if let Some(t) = r.request["task"].as_str() {
                                ctx.stop_task(t).await;
                            }
                        }
                        _ => {}
                    }
                }
                ctx.reap_dead().await;
            }
        });
        Self {
            instance_id: instance_id.to_owned(),
            container_instance_arn,
            port,
            state,
            stop,
        }
    }

    /// The introspection API's base URL (hostd's `--ecs-agent-url`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes this agent ignore new tasks (they stay PENDING as far as ECS knows), or
    /// start them again.
    pub fn ignore_new_tasks(&self, ignore: bool) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ignoring = ignore;
    }

    /// Task ARNs this stand-in runs now.
    pub fn running(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tasks
            .values()
            .filter(|t| t.known_status == "RUNNING")
            .map(|t| t.arn.clone())
            .collect()
    }

    /// Docker id of `container` of the task whose id is `task_id`.
    pub fn container_of(&self, task_id: &str, container: &str) -> Option<String> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.tasks
            .values()
            .find(|t| berth_wire::ecs::task_id(&t.arn) == task_id)?
            .containers
            .iter()
            .find(|(n, _)| n == container)
            .map(|(_, id)| id.clone())
    }
}

impl Drop for EcsAgentStandIn {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        docker::remove_labelled(INSTANCE_LABEL, &self.instance_id);
    }
}

async fn metadata(State(ctx): State<Ctx>) -> axum::Json<Value> {
    axum::Json(json!({
        "Cluster": ctx.cluster,
        "ContainerInstanceArn": ctx.container_instance_arn,
        "Version": "Berth ECS agent stand-in (tests/src/ecs_agent.rs)",
    }))
}

async fn tasks(State(ctx): State<Ctx>) -> axum::Json<Value> {
    let s = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    let tasks: Vec<Value> = s
        .tasks
        .values()
        .map(|t| {
            json!({
                "Arn": t.arn,
                "DesiredStatus": t.desired_status,
                "KnownStatus": t.known_status,
                "Family": t.family,
                "Version": t.version,
                "Containers": t.containers.iter().map(|(name, id)| json!({
                    "DockerId": id,
                    "DockerName": format!("ecs-{}-{}-{}", t.family, t.version, name.replace('~', "")),
                    "Name": name,
                    "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": [t.address]}],
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(json!({ "Tasks": tasks }))
}

/// `KEY=VALUE` strings from an ECS `environment` list.
fn env_list(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|kv| {
                    Some((
                        kv["name"].as_str()?.to_owned(),
                        kv["value"].as_str().unwrap_or("").to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Ctx {
    fn labels(
        &self,
        arn: &str,
        family: &str,
        version: &str,
        name: &str,
    ) -> HashMap<String, String> {
        use berth_wire::ecs as n;
        HashMap::from([
            (n::LABEL_TASK_ARN.to_owned(), arn.to_owned()),
            (n::LABEL_CONTAINER_NAME.to_owned(), name.to_owned()),
            (n::LABEL_FAMILY.to_owned(), family.to_owned()),
            (
                "com.amazonaws.ecs.task-definition-version".to_owned(),
                version.to_owned(),
            ),
            (n::LABEL_CLUSTER.to_owned(), self.cluster.clone()),
            (docker::TEST_RUN.to_owned(), docker::run_id().to_owned()),
            (INSTANCE_LABEL.to_owned(), self.instance_id.clone()),
        ])
    }

    async fn definition(&self, name: &str) -> Option<Value> {
        if let Some(d) = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .definitions
            .get(name)
        {
            return Some(d.clone());
        }
        let out = self
            .ecs
            .describe_task_definition()
            .task_definition(name)
            .send()
            .await
            .ok()?;
        let td = out.task_definition()?;
        // The few fields the stand-in plays, as JSON (the SDK's types have no serde).
        let containers: Vec<Value> = td
            .container_definitions()
            .iter()
            .map(|c| {
                let lp = c.linux_parameters();
                json!({
                    "name": c.name(),
                    "image": c.image(),
                    "user": c.user(),
                    "memory": c.memory(),
                    "memoryReservation": c.memory_reservation(),
                    "readonlyRootFilesystem": c.readonly_root_filesystem(),
                    "dockerSecurityOptions": c.docker_security_options(),
                    "environment": c.environment().iter().map(|e| json!({"name": e.name(), "value": e.value()})).collect::<Vec<_>>(),
                    "drop": lp.and_then(|l| l.capabilities()).map(|k| k.drop().to_vec()).unwrap_or_default(),
                    "tmpfs": lp.map(|l| l.tmpfs().iter().map(|t| json!({
                        "containerPath": t.container_path(), "size": t.size(),
                        "mountOptions": t.mount_options(),
                    })).collect::<Vec<_>>()).unwrap_or_default(),
                    "ulimits": c.ulimits().iter().map(|u| json!({
                        "name": u.name().as_str(), "soft": u.soft_limit(), "hard": u.hard_limit(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let v = json!({
            "family": td.family(),
            "revision": td.revision(),
            "containers": containers,
        });
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .definitions
            .insert(name.to_owned(), v.clone());
        Some(v)
    }

    /// A scale-out task ECS now says runs on this instance: start it.
    async fn on_describe(&self, response: &Value) {
        for t in response["tasks"].as_array().into_iter().flatten() {
            let (Some(arn), Some(ci)) = (t["taskArn"].as_str(), t["containerInstanceArn"].as_str())
            else {
                continue;
            };
            if ci != self.container_instance_arn || t["lastStatus"] != "RUNNING" {
                continue;
            }
            let request = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if s.tasks.contains_key(arn) {
                    continue;
                }
                s.unplaced.remove(arn)
            };
            if let Some(req) = request {
                let one = json!({"tasks": [{"taskArn": arn}]});
                self.start_from(&req, &one).await;
            }
        }
    }

    async fn on_run_task(&self, request: &Value, response: &Value) {
        match crate::ecs_forwarder::constrained_instance(request) {
            Some(i) if i == self.instance_id => self.start_from(request, response).await,
            Some(_) => {}
            None => {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                for t in response["tasks"].as_array().into_iter().flatten() {
                    if let Some(arn) = t["taskArn"].as_str() {
                        s.unplaced.insert(arn.to_owned(), request.clone());
                    }
                }
            }
        }
    }

    /// Starts the tasks of `response` as `request` (a RunTask) defined them.
    async fn start_from(&self, request: &Value, response: &Value) {
        if self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ignoring
        {
            return;
        }
        let Some(td_name) = request["taskDefinition"].as_str() else {
            return;
        };
        let Some(td) = self.definition(td_name).await else {
            return;
        };
        let overrides: HashMap<String, Vec<(String, String)>> =
            request["overrides"]["containerOverrides"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| {
                            Some((o["name"].as_str()?.to_owned(), env_list(&o["environment"])))
                        })
                        .collect()
                })
                .unwrap_or_default();
        for task in response["tasks"].as_array().into_iter().flatten() {
            if let Some(arn) = task["taskArn"].as_str() {
                let me = self.clone();
                let (arn, td, overrides) = (arn.to_owned(), td.clone(), overrides.clone());
                tokio::spawn(async move { me.start_task(&arn, &td, &overrides).await });
            }
        }
    }

    async fn create_and_start(&self, name: &str, body: ContainerCreateBody) -> Option<String> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .ok()?;
        self.docker.start_container(&created.id, None).await.ok()?;
        Some(created.id)
    }

    async fn start_task(
        &self,
        arn: &str,
        td: &Value,
        overrides: &HashMap<String, Vec<(String, String)>>,
    ) {
        let family = td["family"].as_str().unwrap_or("").to_owned();
        let version = td["revision"].to_string();
        let id = berth_wire::ecs::task_id(arn).to_owned();
        let short = &id[..id.len().min(12)];
        let pause_name = "~internal~ecs~pause";
        let pause = ContainerCreateBody {
            image: Some(self.pause_image.clone()),
            entrypoint: Some(vec![
                "/bin/busybox".into(),
                "sleep".into(),
                "999999999".into(),
            ]),
            labels: Some(self.labels(arn, &family, &version, pause_name)),
            host_config: Some(HostConfig {
                network_mode: Some(self.network.clone()),
                cap_drop: Some(vec!["ALL".into()]),
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
        let Some(pause_id) = self
            .create_and_start(
                &format!("ecs-{family}-{version}-internalecspause-{short}"),
                pause,
            )
            .await
        else {
            return;
        };
        let address = self
            .docker
            .inspect_container(&pause_id, None)
            .await
            .ok()
            .and_then(|c| {
                c.network_settings?
                    .networks?
                    .remove(&self.network)?
                    .ip_address
            })
            .unwrap_or_default();
        let mut containers = vec![(pause_name.to_owned(), pause_id.clone())];
        for c in td["containers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("").to_owned();
            let mut env: Vec<String> = env_list(&c["environment"])
                .into_iter()
                .chain(overrides.get(&name).cloned().unwrap_or_default())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            env.dedup();
            let tmpfs: HashMap<String, String> = c["tmpfs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| {
                    let mut opts: Vec<String> = t["mountOptions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|o| o.as_str().map(str::to_owned))
                        .collect();
                    opts.push(format!("size={}m", t["size"].as_i64().unwrap_or(64)));
                    Some((t["containerPath"].as_str()?.to_owned(), opts.join(",")))
                })
                .collect();
            let ulimits: Vec<ResourcesUlimits> = c["ulimits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| ResourcesUlimits {
                    name: u["name"].as_str().map(str::to_owned),
                    soft: u["soft"].as_i64(),
                    hard: u["hard"].as_i64(),
                })
                .collect();
            let mib = |v: &Value| v.as_i64().map(|m| m * 1024 * 1024);
            let body = ContainerCreateBody {
                image: c["image"].as_str().map(str::to_owned),
                user: c["user"].as_str().map(str::to_owned),
                env: Some(env),
                labels: Some(self.labels(arn, &family, &version, &name)),
                host_config: Some(HostConfig {
                    network_mode: Some(format!("container:{pause_id}")),
                    readonly_rootfs: c["readonlyRootFilesystem"].as_bool(),
                    cap_drop: c["drop"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    }),
                    security_opt: c["dockerSecurityOptions"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    }),
                    memory: mib(&c["memory"]),
                    memory_reservation: mib(&c["memoryReservation"]),
                    tmpfs: Some(tmpfs),
                    ulimits: Some(ulimits),
                    init: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let Some(cid) = self
                .create_and_start(&format!("ecs-{family}-{version}-{name}-{short}"), body)
                .await
            else {
                continue;
            };
            containers.push((name, cid));
        }
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tasks
            .insert(
                arn.to_owned(),
                RunningTask {
                    arn: arn.to_owned(),
                    family,
                    version,
                    containers,
                    address,
                    known_status: "RUNNING".into(),
                    desired_status: "RUNNING".into(),
                },
            );
    }

    async fn remove(&self, ids: &[String]) {
        for id in ids {
            let _ = self
                .docker
                .remove_container(
                    id,
                    Some(
                        RemoveContainerOptionsBuilder::new()
                            .force(true)
                            .v(true)
                            .build(),
                    ),
                )
                .await;
        }
    }

    async fn stop_task(&self, task: &str) {
        let id = berth_wire::ecs::task_id(task).to_owned();
        let found = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let arn = s
                .tasks
                .keys()
                .find(|a| berth_wire::ecs::task_id(a) == id)
                .cloned();
            arn.and_then(|a| s.tasks.remove(&a))
        };
        if let Some(t) = found {
            let ids: Vec<String> = t
                .containers
                .iter()
                .rev()
                .map(|(_, id)| id.clone())
                .collect();
            self.remove(&ids).await;
        }
    }

    /// A task with a container that is no longer running is STOPPED (all of a
    /// workspace task's containers are essential); it is listed as such once, then
    /// removed.
    async fn reap_dead(&self) {
        let snapshot: Vec<RunningTask> = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tasks
            .values()
            .cloned()
            .collect();
        for t in snapshot {
            if t.known_status == "STOPPED" {
                let ids: Vec<String> = t.containers.iter().map(|(_, id)| id.clone()).collect();
                self.remove(&ids).await;
                self.state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .tasks
                    .remove(&t.arn);
                continue;
            }
            let mut dead = false;
            for (_, id) in &t.containers {
                let running = self
                    .docker
                    .inspect_container(id, None)
                    .await
                    .ok()
                    .and_then(|c| c.state?.running)
                    .unwrap_or(false);
                dead |= !running;
            }
            if dead
                && let Some(x) = self
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .tasks
                    .get_mut(&t.arn)
            {
                x.known_status = "STOPPED".into();
                x.desired_status = "STOPPED".into();
            }
        }
    }
}

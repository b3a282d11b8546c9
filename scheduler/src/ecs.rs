//! The ECS runtime: slots are ECS tasks that the scheduler starts with RunTask on
//! the host placement chose, and that hostd on that host adopts.
//!
//! # Background
//! A warm slot here is one task of the workspace task definition (two containers,
//! awsvpc, one ENI-trunk branch). The scheduler names the host with the placement
//! constraint `memberOf(ec2InstanceId == <host>)` and starts up to 10 tasks a call
//! (ECS's limit for `count`). ECS starts the containers; hostd on the host finds
//! them by the labels the ECS agent sets, locks their network namespace, checks
//! their agent and reports them. So a start here is: RunTask, then wait until the
//! host's hostd reports each task's slot ready, watching the tasks with
//! DescribeTasks meanwhile so a task ECS stopped, or one stuck in PROVISIONING or
//! PENDING past the deadline, is failed (and stopped) rather than awaited forever.
//!
//! - A slot's id is its task's id (the ARN's last segment): hostd reads the ARN
//!   from the containers' labels, so both sides name the slot the same way without
//!   a per-task tag (tags and overrides are per call, shared by its tasks).
//! - The claim secret is made per call: its SHA-256 goes to the tasks as an
//!   environment override, the secret stays with the scheduler. Up to 10 tasks of
//!   one call share it (docs/SECURITY.md says what that allows).
//! - The agent's address comes from hostd's report (hostd reads the task's ENI
//!   address from the ECS agent), never from our own reading of DescribeTasks, so
//!   the scheduler connects only to addresses a host it trusts vouched for.
//! - Every call first takes a token from its family's bucket ([`crate::throttle`]);
//!   throttling, 5xx and transport errors are retried with jittered backoff under
//!   a deadline, each retry taking a token again. The SDK's own retries are off,
//!   so that no call escapes the bucket.
//! - `failures[]` with a host-level reason (`RESOURCE:*`, `AGENT`, `ATTRIBUTE`,
//!   `MISSING`) come back as [`RuntimeError::HostRefused`]: the scheduler marks
//!   that host's view stale and places on the next.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aws_sdk_ecs::{
    Client,
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    types::{
        AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride,
        DesiredStatus, KeyValuePair, LaunchType, NetworkConfiguration, PlacementConstraint,
        PlacementConstraintType, Tag, Task, TaskField, TaskOverride,
    },
};
use berth_wire::{SlotInfo, SlotState, ecs as names};

use crate::{
    clients::Clients,
    runtime::{BoxFuture, HostTarget, RunningSlot, Runtime, RuntimeError},
    throttle::{BucketShape, TokenBucket, backoff},
};

/// ECS's limit on `count` in one RunTask call.
pub const MAX_TASKS_PER_CALL: usize = 10;

/// How the ECS runtime starts tasks; resolved by the binary from flags.
#[derive(Debug, Clone)]
pub struct EcsConfig {
    pub cluster: String,
    /// Task definition (family:revision or ARN) per template; `*` for any other.
    pub task_definitions: BTreeMap<String, String>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    /// `startedBy` on every task: how ListTasks finds ours (at most 36 characters).
    pub started_by: String,
    /// This scheduler's name, tagged on every task.
    pub scheduler_name: String,
    pub mutate_bucket: BucketShape,
    pub describe_bucket: BucketShape,
    /// How long one call may keep retrying throttles and 5xx.
    pub retry_deadline: Duration,
    /// How long a task may take from RunTask to ready on its host.
    pub start_deadline: Duration,
    /// How often hostd is asked whether a starting task's slot is ready.
    pub poll_every: Duration,
    /// How often starting tasks are described (their ECS state).
    pub describe_every: Duration,
    /// Scale-out: the capacity provider to start tasks with when no host has room
    /// (ECS managed scaling then adds instances); `None` never scales out.
    pub capacity_provider: Option<String>,
    /// How long a scale-out task may wait for a new instance (PROVISIONING).
    pub provision_deadline: Duration,
}

impl EcsConfig {
    /// Defaults for everything but the cluster and the network.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            task_definitions: BTreeMap::new(),
            subnets: Vec::new(),
            security_groups: Vec::new(),
            started_by: "berth".into(),
            scheduler_name: "berth".into(),
            mutate_bucket: BucketShape::ECS_MUTATE,
            describe_bucket: BucketShape::ECS_DESCRIBE,
            retry_deadline: Duration::from_secs(20),
            start_deadline: Duration::from_secs(180),
            poll_every: Duration::from_millis(250),
            describe_every: Duration::from_secs(2),
            capacity_provider: None,
            provision_deadline: Duration::from_secs(600),
        }
    }

    /// Parses `TASKDEF` (every template) or `template=TASKDEF,...` (`*=` for others).
    pub fn parse_task_definitions(s: &str) -> Result<BTreeMap<String, String>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("no task definition given".into());
        }
        if !s.contains('=') {
            return Ok(BTreeMap::from([("*".to_owned(), s.to_owned())]));
        }
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let (t, d) = p
                    .split_once('=')
                    .ok_or_else(|| format!("task definition `{p}` is not `template=TASKDEF`"))?;
                if t.trim().is_empty() || d.trim().is_empty() {
                    return Err(format!("task definition `{p}` has an empty side"));
                }
                Ok((t.trim().to_owned(), d.trim().to_owned()))
            })
            .collect()
    }

    fn task_definition(&self, template: &str) -> Option<&str> {
        self.task_definitions
            .get(template)
            .or_else(|| self.task_definitions.get("*"))
            .map(String::as_str)
    }
}

/// What the ECS runtime counts, for `/metrics`.
#[derive(Default)]
struct EcsCounters {
    calls: AtomicU64,
    throttled: AtomicU64,
    server_errors: AtomicU64,
    retries: AtomicU64,
    tasks_started: AtomicU64,
    task_failures: AtomicU64,
    tasks_stuck: AtomicU64,
    tasks_stopped_early: AtomicU64,
    scale_out_tasks: AtomicU64,
}

/// Which bucket a call draws from.
#[derive(Debug, Clone, Copy)]
enum Family {
    /// RunTask, StartTask, StopTask.
    Mutate,
    /// DescribeTasks, ListTasks (and DescribeContainerInstances, which we count here).
    Describe,
}

/// The ECS runtime.
pub struct EcsRuntime {
    client: Client,
    config: EcsConfig,
    clients: Clients,
    mutate: TokenBucket,
    describe: TokenBucket,
    counters: EcsCounters,
    /// Container instance ARN → EC2 instance id, learnt from DescribeContainerInstances.
    instances: Mutex<HashMap<String, String>>,
}

/// How a failed call should be treated.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Throttled,
    Transient,
    Final,
}

fn classify(code: Option<&str>, status: Option<u16>, transport: bool) -> Failure {
    const THROTTLES: [&str; 5] = [
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ThrottledException",
    ];
    if code.is_some_and(|c| THROTTLES.contains(&c)) || status == Some(429) {
        Failure::Throttled
    } else if transport
        || code == Some("ServerException")
        || status.is_some_and(|s| (500..600).contains(&s))
    {
        Failure::Transient
    } else {
        Failure::Final
    }
}

/// Whether a RunTask failure reason is about the host (try another one).
pub fn host_level_reason(reason: &str) -> bool {
    reason.starts_with("RESOURCE:") || matches!(reason, "AGENT" | "ATTRIBUTE" | "MISSING")
}

impl EcsRuntime {
    pub fn new(client: Client, config: EcsConfig, clients: Clients) -> Self {
        Self {
            client,
            mutate: TokenBucket::new(config.mutate_bucket),
            describe: TokenBucket::new(config.describe_bucket),
            config,
            clients,
            counters: EcsCounters::default(),
            instances: Mutex::default(),
        }
    }

    /// A client for production: the default credential chain and region, with an
    /// optional endpoint (a VPC endpoint). Retries are ours (see the module docs).
    pub async fn client_from_env(endpoint: Option<&str>, region: Option<&str>) -> Client {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some(e) = endpoint {
            loader = loader.endpoint_url(e);
        }
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_owned()));
        }
        Client::new(&loader.load().await)
    }

    /// A client with everything explicit and no credential chain at all (tests, and
    /// anywhere the metadata service must never be asked).
    pub fn client_static(endpoint: &str, region: &str, key_id: &str, secret: &str) -> Client {
        let config = aws_sdk_ecs::Config::builder()
            .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_sdk_ecs::config::Region::new(region.to_owned()))
            .credentials_provider(aws_sdk_ecs::config::Credentials::new(
                key_id,
                secret,
                None,
                None,
                "berth-static",
            ))
            .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
            .build();
        Client::from_conf(config)
    }

    pub fn config(&self) -> &EcsConfig {
        &self.config
    }

    /// One ECS call under its bucket, retried on throttling, 5xx and transport
    /// errors with jittered backoff until the retry deadline.
    async fn call<T, E, F, Fut>(
        &self,
        family: Family,
        op: &'static str,
        mut f: F,
    ) -> Result<T, RuntimeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let bucket = match family {
            Family::Mutate => &self.mutate,
            Family::Describe => &self.describe,
        };
        let deadline = Instant::now() + self.config.retry_deadline;
        let mut attempt = 0u32;
        loop {
            bucket.take().await;
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
            let err = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let status = err.raw_response().map(|r| r.status().as_u16());
            let transport = matches!(
                err,
                SdkError::TimeoutError(_)
                    | SdkError::DispatchFailure(_)
                    | SdkError::ResponseError(_)
            );
            let code = err.code().map(str::to_owned);
            let message = err
                .message()
                .map(str::to_owned)
                .unwrap_or_else(|| aws_sdk_ecs::error::DisplayErrorContext(&err).to_string());
            let kind = classify(code.as_deref(), status, transport);
            match kind {
                Failure::Throttled => self.counters.throttled.fetch_add(1, Ordering::Relaxed),
                Failure::Transient => self.counters.server_errors.fetch_add(1, Ordering::Relaxed),
                Failure::Final => 0,
            };
            attempt += 1;
            let wait = backoff(attempt, Duration::from_millis(50), Duration::from_secs(2));
            if kind == Failure::Final || Instant::now() + wait > deadline {
                return Err(RuntimeError::Aws {
                    op,
                    code: code.unwrap_or_else(|| {
                        status.map_or_else(|| "transport".into(), |s| format!("http_{s}"))
                    }),
                    message,
                    attempts: attempt,
                });
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                op,
                attempt,
                ?kind,
                wait_ms = wait.as_millis(),
                "ECS call retried"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One RunTask call for up to [`MAX_TASKS_PER_CALL`] tasks on `host`.
    async fn run_batch(
        &self,
        host: &HostTarget,
        template: &str,
        count: usize,
    ) -> Vec<Result<SlotInfo, RuntimeError>> {
        let (started, claim_secret, mut results) = self.run_task(Some(host), template, count).await;
        results.extend(self.await_ready(host, &started, &claim_secret).await);
        // ECS answered for fewer tasks than asked without saying why.
        while results.len() < count {
            results.push(Err(RuntimeError::Other(
                "RunTask started fewer tasks than asked and gave no failure".into(),
            )));
        }
        results
    }

    /// Calls RunTask once: constrained to `host`, or (scale-out) with the capacity
    /// provider and no constraint. Returns the started tasks' ARNs, the call's claim
    /// secret, and one error per task that did not start.
    async fn run_task(
        &self,
        host: Option<&HostTarget>,
        template: &str,
        count: usize,
    ) -> (Vec<String>, String, Vec<Result<SlotInfo, RuntimeError>>) {
        let host_id = host.map_or("(scale-out)", |h| h.host_id.as_str());
        let fail_all = |e: RuntimeError| {
            let text = e.to_string();
            let mut out = vec![Err(e)];
            out.extend((1..count).map(|_| Err(RuntimeError::Other(text.clone()))));
            (Vec::new(), String::new(), out)
        };
        let Some(task_definition) = self.config.task_definition(template) else {
            return fail_all(RuntimeError::Other(format!(
                "no ECS task definition for template `{template}` (--ecs-task-definition)"
            )));
        };
        let network = match AwsVpcConfiguration::builder()
            .set_subnets(Some(self.config.subnets.clone()))
            .set_security_groups(Some(self.config.security_groups.clone()))
            .assign_public_ip(AssignPublicIp::Disabled)
            .build()
        {
            Ok(v) => NetworkConfiguration::builder()
                .awsvpc_configuration(v)
                .build(),
            Err(e) => return fail_all(RuntimeError::Other(format!("awsvpc configuration: {e}"))),
        };
        let claim_secret = hex::encode(rand::random::<[u8; 32]>());
        let batch = crate::short_id();
        let overrides = TaskOverride::builder()
            .container_overrides(
                ContainerOverride::builder()
                    .name(names::WORKSPACE_CONTAINER)
                    .environment(env(names::ENV_TEMPLATE, template))
                    .environment(env(
                        names::ENV_CLAIM_SECRET_SHA256,
                        &berth_wire::sha256_hex(claim_secret.as_bytes()),
                    ))
                    .build(),
            )
            // The proxy's admin channel, where hostd pushes each claim's policy,
            // opens only to the same secret.
            .container_overrides(
                ContainerOverride::builder()
                    .name(names::PROXY_CONTAINER)
                    .environment(env(
                        names::ENV_CLAIM_SECRET_SHA256,
                        &berth_wire::sha256_hex(claim_secret.as_bytes()),
                    ))
                    .environment(env(
                        names::ENV_PROXY_ADMIN_LISTEN,
                        &format!("0.0.0.0:{}", berth_wire::ports::PROXY_ADMIN),
                    ))
                    .build(),
            )
            .build();
        let count_i32 = i32::try_from(count.min(MAX_TASKS_PER_CALL)).unwrap_or(1);
        let strategy = match (host, &self.config.capacity_provider) {
            (None, Some(cp)) => match CapacityProviderStrategyItem::builder()
                .capacity_provider(cp)
                .weight(1)
                .build()
            {
                Ok(item) => Some(vec![item]),
                Err(e) => return fail_all(RuntimeError::Other(format!("capacity provider: {e}"))),
            },
            _ => None,
        };
        let out = self
            .call(Family::Mutate, "RunTask", || {
                let mut call = self
                    .client
                    .run_task()
                    .cluster(&self.config.cluster)
                    .task_definition(task_definition)
                    .count(count_i32);
                call = match (host, &self.config.capacity_provider) {
                    (Some(h), _) => call
                        .launch_type(LaunchType::Ec2)
                        .placement_constraints(
                            PlacementConstraint::builder()
                                .r#type(PlacementConstraintType::MemberOf)
                                .expression(format!("ec2InstanceId == {}", h.host_id))
                                .build(),
                        )
                        .tags(tag(names::TAG_HOST, &h.host_id)),
                    (None, _) => call.set_capacity_provider_strategy(strategy.clone()),
                };
                call.started_by(&self.config.started_by)
                    .tags(tag(names::TAG_TEMPLATE, template))
                    .tags(tag(names::TAG_BATCH, &batch))
                    .tags(tag(names::TAG_SCHEDULER, &self.config.scheduler_name))
                    .network_configuration(network.clone())
                    .overrides(overrides.clone())
                    .enable_execute_command(false)
                    .send()
            })
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => return fail_all(e),
        };
        let mut results: Vec<Result<SlotInfo, RuntimeError>> = Vec::with_capacity(count);
        for f in out.failures() {
            let reason = f.reason().unwrap_or("unknown").to_owned();
            self.counters.task_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%host_id, %reason, detail = f.detail().unwrap_or(""),
                "RunTask failure");
            results.push(Err(if host_level_reason(&reason) && host.is_some() {
                RuntimeError::HostRefused {
                    host_id: host_id.to_owned(),
                    reason,
                }
            } else {
                RuntimeError::Other(format!("RunTask failure: {reason}"))
            }));
        }
        let arns: Vec<String> = out
            .tasks()
            .iter()
            .filter_map(|t| t.task_arn().map(str::to_owned))
            .collect();
        self.counters
            .tasks_started
            .fetch_add(arns.len() as u64, Ordering::Relaxed);
        tracing::info!(%host_id, %template, tasks = arns.len(), %batch, "RunTask");
        (arns, claim_secret, results)
    }

    /// Scale-out: starts tasks with the capacity provider, waits (PROVISIONING,
    /// while managed scaling adds an instance) until DescribeTasks says which
    /// instance each landed on, then for that host's hostd to report it ready.
    async fn run_unplaced(
        &self,
        template: &str,
        count: usize,
        resolve: crate::runtime::HostResolver,
    ) -> Vec<Result<SlotInfo, RuntimeError>> {
        let (arns, secret, mut results) = self.run_task(None, template, count).await;
        self.counters
            .scale_out_tasks
            .fetch_add(arns.len() as u64, Ordering::Relaxed);
        let deadline = Instant::now() + self.config.provision_deadline;
        let mut pending: Vec<String> = arns;
        let mut placed: Vec<(String, String)> = Vec::new();
        while !pending.is_empty() {
            if Instant::now() >= deadline {
                for arn in pending.drain(..) {
                    self.counters.tasks_stuck.fetch_add(1, Ordering::Relaxed);
                    let why = format!(
                        "no instance within {} s (PROVISIONING)",
                        self.config.provision_deadline.as_secs()
                    );
                    let _ = self.stop_task(names::task_id(&arn), &why).await;
                    results.push(Err(RuntimeError::Other(format!("task {arn}: {why}"))));
                }
                break;
            }
            tokio::time::sleep(self.config.describe_every).await;
            let Ok(tasks) = self.describe(&pending).await else {
                continue;
            };
            let cis: Vec<String> = tasks
                .iter()
                .filter(|t| !matches!(t.last_status(), Some("PROVISIONING") | None))
                .filter_map(|t| t.container_instance_arn().map(str::to_owned))
                .collect();
            let instances = self.instance_ids(&cis).await;
            for t in &tasks {
                let Some(arn) = t.task_arn() else { continue };
                if t.last_status() == Some("STOPPED") {
                    pending.retain(|a| a != arn);
                    self.counters
                        .tasks_stopped_early
                        .fetch_add(1, Ordering::Relaxed);
                    results.push(Err(RuntimeError::Other(format!(
                        "task {arn} stopped while provisioning: {}",
                        t.stopped_reason().unwrap_or("no reason given")
                    ))));
                    continue;
                }
                if matches!(t.last_status(), Some("PROVISIONING") | None) {
                    continue;
                }
                if let Some(host) = t
                    .container_instance_arn()
                    .and_then(|ci| instances.get(ci).cloned())
                {
                    tracing::info!(task = %arn, host_id = %host, "scale-out task placed");
                    pending.retain(|a| a != arn);
                    placed.push((arn.to_owned(), host));
                }
            }
        }
        // Each placed task: wait for its (possibly brand-new) host to report, then
        // for the slot to be ready there.
        let waits = placed.into_iter().map(|(arn, host_id)| {
            let resolve = resolve.clone();
            let secret = secret.clone();
            async move {
                let target = loop {
                    if let Some(t) = resolve(host_id.clone()).await {
                        break Some(t);
                    }
                    if Instant::now() >= deadline {
                        break None;
                    }
                    tokio::time::sleep(self.config.poll_every).await;
                };
                match target {
                    Some(t) => {
                        self.await_ready(&t, std::slice::from_ref(&arn), &secret)
                            .await
                    }
                    None => {
                        let _ = self
                            .stop_task(names::task_id(&arn), "its host never reported")
                            .await;
                        vec![Err(RuntimeError::Other(format!(
                            "task {arn}: host {host_id} never reported to the scheduler"
                        )))]
                    }
                }
            }
        });
        results.extend(
            futures_util::future::join_all(waits)
                .await
                .into_iter()
                .flatten(),
        );
        results
    }

    /// Waits until hostd reports each task's slot ready; fails (and stops) a task
    /// ECS stopped or that is not ready by the start deadline.
    async fn await_ready(
        &self,
        host: &HostTarget,
        arns: &[String],
        claim_secret: &str,
    ) -> Vec<Result<SlotInfo, RuntimeError>> {
        let mut done: BTreeMap<usize, Result<SlotInfo, RuntimeError>> = BTreeMap::new();
        let deadline = Instant::now() + self.config.start_deadline;
        let mut last_describe = Instant::now();
        while done.len() < arns.len() {
            tokio::time::sleep(self.config.poll_every).await;
            let pending: Vec<usize> = (0..arns.len()).filter(|i| !done.contains_key(i)).collect();
            let probes = pending.iter().map(|&i| async move {
                let id = names::task_id(&arns[i]);
                (
                    i,
                    self.clients.slot(&host.hostd_url, &host.host_id, id).await,
                )
            });
            for (i, got) in futures_util::future::join_all(probes).await {
                if let Ok(Some(mut info)) = got
                    && info.state == SlotState::Ready
                {
                    info.claim_secret = Some(claim_secret.to_owned());
                    done.insert(i, Ok(info));
                }
            }
            let still: Vec<usize> = (0..arns.len()).filter(|i| !done.contains_key(i)).collect();
            if still.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for i in still {
                    let id = names::task_id(&arns[i]);
                    self.counters.tasks_stuck.fetch_add(1, Ordering::Relaxed);
                    let why = format!(
                        "not ready on {} within {} s",
                        host.host_id,
                        self.config.start_deadline.as_secs()
                    );
                    tracing::warn!(task = %arns[i], "{why}; stopping it");
                    let _ = self.stop_task(id, &why).await;
                    done.insert(i, Err(RuntimeError::Other(format!("task {id} {why}"))));
                }
                break;
            }
            if last_describe.elapsed() >= self.config.describe_every {
                last_describe = Instant::now();
                let want: Vec<String> = still.iter().map(|&i| arns[i].clone()).collect();
                if let Ok(tasks) = self.describe(&want).await {
                    for t in tasks {
                        if t.last_status() == Some("STOPPED")
                            && let Some(i) = still
                                .iter()
                                .copied()
                                .find(|&i| Some(arns[i].as_str()) == t.task_arn())
                        {
                            self.counters
                                .tasks_stopped_early
                                .fetch_add(1, Ordering::Relaxed);
                            let reason = t.stopped_reason().unwrap_or("no reason given");
                            done.insert(
                                i,
                                Err(RuntimeError::Other(format!(
                                    "task {} stopped before it was ready: {reason}",
                                    names::task_id(&arns[i])
                                ))),
                            );
                        }
                    }
                }
            }
        }
        done.into_values().collect()
    }

    async fn describe(&self, arns: &[String]) -> Result<Vec<Task>, RuntimeError> {
        let mut tasks = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(100) {
            let out = self
                .call(Family::Describe, "DescribeTasks", || {
                    self.client
                        .describe_tasks()
                        .cluster(&self.config.cluster)
                        .set_tasks(Some(chunk.to_vec()))
                        .include(TaskField::Tags)
                        .send()
                })
                .await?;
            tasks.extend(out.tasks().iter().cloned());
        }
        Ok(tasks)
    }

    async fn stop_task(&self, task: &str, reason: &str) -> Result<(), RuntimeError> {
        // ECS keeps at most 255 characters of the reason.
        let reason: String = reason.chars().take(255).collect();
        match self
            .call(Family::Mutate, "StopTask", || {
                self.client
                    .stop_task()
                    .cluster(&self.config.cluster)
                    .task(task)
                    .reason(&reason)
                    .send()
            })
            .await
        {
            Ok(_) => Ok(()),
            // Gone already (stopped and expired, or never known): nothing to stop.
            Err(RuntimeError::Aws { code, message, .. })
                if code == "InvalidParameterException" && message.contains("not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// EC2 instance ids of container instances, asking ECS for those not yet known.
    async fn instance_ids(&self, arns: &[String]) -> HashMap<String, String> {
        let unknown: Vec<String> = {
            let known = self.instances.lock().unwrap_or_else(|e| e.into_inner());
            let mut u: Vec<String> = arns
                .iter()
                .filter(|a| !known.contains_key(*a))
                .cloned()
                .collect();
            u.sort();
            u.dedup();
            u
        };
        for chunk in unknown.chunks(100) {
            if let Ok(out) = self
                .call(Family::Describe, "DescribeContainerInstances", || {
                    self.client
                        .describe_container_instances()
                        .cluster(&self.config.cluster)
                        .set_container_instances(Some(chunk.to_vec()))
                        .send()
                })
                .await
            {
                let mut known = self.instances.lock().unwrap_or_else(|e| e.into_inner());
                for ci in out.container_instances() {
                    if let (Some(arn), Some(id)) =
                        (ci.container_instance_arn(), ci.ec2_instance_id())
                    {
                        known.insert(arn.to_owned(), id.to_owned());
                    }
                }
            }
        }
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every task this fleet's schedulers started that ECS still runs (desired
    /// RUNNING), with the host each is on; paginated.
    pub async fn running_tasks(&self) -> Result<Vec<RunningSlot>, RuntimeError> {
        let mut arns = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .call(Family::Describe, "ListTasks", || {
                    self.client
                        .list_tasks()
                        .cluster(&self.config.cluster)
                        .started_by(&self.config.started_by)
                        .desired_status(DesiredStatus::Running)
                        .max_results(100)
                        .set_next_token(next.clone())
                        .send()
                })
                .await?;
            arns.extend(out.task_arns().iter().cloned());
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        let tasks = self.describe(&arns).await?;
        let instance_arns: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.container_instance_arn().map(str::to_owned))
            .collect();
        let instances = self.instance_ids(&instance_arns).await;
        Ok(tasks
            .iter()
            .filter(|t| t.last_status() != Some("STOPPED"))
            .filter_map(|t| {
                let arn = t.task_arn()?;
                let tag_of = |k: &str| {
                    t.tags()
                        .iter()
                        .find(|x| x.key() == Some(k))
                        .and_then(|x| x.value())
                        .map(str::to_owned)
                };
                // The instance the constraint named, else the one ECS put it on
                // (scale-out starts carry no constraint).
                let host_id = tag_of(names::TAG_HOST).or_else(|| {
                    t.container_instance_arn()
                        .and_then(|ci| instances.get(ci).cloned())
                })?;
                Some(RunningSlot {
                    slot_id: names::task_id(arn).to_owned(),
                    host_id,
                    template: tag_of(names::TAG_TEMPLATE).unwrap_or_default(),
                })
            })
            .collect())
    }
}

/// `count` tasks as RunTask call sizes: tens, then the rest.
fn call_sizes(count: usize) -> impl Iterator<Item = usize> {
    (0..count.div_ceil(MAX_TASKS_PER_CALL))
        .map(move |i| (count - i * MAX_TASKS_PER_CALL).min(MAX_TASKS_PER_CALL))
}

fn env(name: &str, value: &str) -> KeyValuePair {
    KeyValuePair::builder().name(name).value(value).build()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

impl Runtime for EcsRuntime {
    fn start_slots<'a>(
        &'a self,
        host: &'a HostTarget,
        template: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Vec<Result<SlotInfo, RuntimeError>>> {
        Box::pin(async move {
            let batches = call_sizes(count).map(|n| self.run_batch(host, template, n));
            futures_util::future::join_all(batches)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }

    fn stop_slot<'a>(
        &'a self,
        host: &'a HostTarget,
        slot_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            tracing::info!(host_id = %host.host_id, %slot_id, %reason, "StopTask");
            self.stop_task(slot_id, reason).await
        })
    }

    fn list_slots<'a>(
        &'a self,
        hosts: &'a [HostTarget],
    ) -> BoxFuture<'a, Result<Vec<RunningSlot>, RuntimeError>> {
        Box::pin(async move {
            Ok(self
                .running_tasks()
                .await?
                .into_iter()
                .filter(|s| hosts.iter().any(|h| h.host_id == s.host_id))
                .collect())
        })
    }

    fn start_unplaced<'a>(
        &'a self,
        template: &'a str,
        count: usize,
        resolve: crate::runtime::HostResolver,
    ) -> BoxFuture<'a, Vec<Result<SlotInfo, RuntimeError>>> {
        Box::pin(async move {
            let batches =
                call_sizes(count).map(|n| self.run_unplaced(template, n, resolve.clone()));
            futures_util::future::join_all(batches)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }

    fn can_scale_out(&self) -> bool {
        self.config.capacity_provider.is_some()
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("berth_ecs_calls_total", g(&c.calls)),
            ("berth_ecs_throttled_total", g(&c.throttled)),
            ("berth_ecs_server_errors_total", g(&c.server_errors)),
            ("berth_ecs_retries_total", g(&c.retries)),
            ("berth_ecs_tasks_started_total", g(&c.tasks_started)),
            ("berth_ecs_task_failures_total", g(&c.task_failures)),
            ("berth_ecs_tasks_stuck_total", g(&c.tasks_stuck)),
            (
                "berth_ecs_tasks_stopped_early_total",
                g(&c.tasks_stopped_early),
            ),
            ("berth_ecs_scale_out_tasks_total", g(&c.scale_out_tasks)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_and_server_errors_are_retried_and_the_rest_is_not() {
        assert_eq!(
            classify(Some("ThrottlingException"), Some(400), false),
            Failure::Throttled
        );
        assert_eq!(classify(None, Some(429), false), Failure::Throttled);
        assert_eq!(
            classify(Some("ServerException"), Some(500), false),
            Failure::Transient
        );
        assert_eq!(classify(None, Some(503), false), Failure::Transient);
        assert_eq!(classify(None, None, true), Failure::Transient);
        assert_eq!(
            classify(Some("ClusterNotFoundException"), Some(400), false),
            Failure::Final
        );
        assert_eq!(
            classify(Some("AccessDeniedException"), Some(400), false),
            Failure::Final
        );
    }

    #[test]
    fn starts_are_split_into_calls_of_at_most_ten() {
        assert_eq!(call_sizes(0).collect::<Vec<_>>(), Vec::<usize>::new());
        assert_eq!(call_sizes(7).collect::<Vec<_>>(), vec![7]);
        assert_eq!(call_sizes(10).collect::<Vec<_>>(), vec![10]);
        assert_eq!(call_sizes(23).collect::<Vec<_>>(), vec![10, 10, 3]);
    }

    #[test]
    fn host_level_failures_move_placement_and_others_do_not() {
        for r in [
            "RESOURCE:ENI",
            "RESOURCE:MEMORY",
            "RESOURCE:CPU",
            "AGENT",
            "ATTRIBUTE",
            "MISSING",
        ] {
            assert!(host_level_reason(r), "{r}");
        }
        assert!(!host_level_reason("INACTIVE"));
    }

    #[test]
    fn task_definitions_parse_one_for_all_or_per_template() {
        let all = EcsConfig::parse_task_definitions("berth-workspace:3").unwrap();
        let mut c = EcsConfig::new("c");
        c.task_definitions = all;
        assert_eq!(c.task_definition("anything"), Some("berth-workspace:3"));
        let per = EcsConfig::parse_task_definitions("default=ws:1, gpu=ws-gpu:2").unwrap();
        c.task_definitions = per;
        assert_eq!(c.task_definition("gpu"), Some("ws-gpu:2"));
        assert_eq!(c.task_definition("other"), None);
        assert!(
            EcsConfig::parse_task_definitions("default=ws:1,gpu")
                .unwrap_err()
                .contains("`gpu`")
        );
        assert!(EcsConfig::parse_task_definitions(" ").is_err());
    }
}

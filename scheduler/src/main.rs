//! `scheduler`: thin binary over [`berth_scheduler`]. `serve` runs the API for a
//! fleet; `dev` runs the whole system on this machine. Exit codes: 64 bad
//! configuration, 69 a dependency unavailable, 1 other failures.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use std::sync::Arc;

#[cfg(feature = "dev")]
use berth_scheduler::dev;
use berth_scheduler::{
    Config, Scheduler,
    addrs::Cidr,
    clients::Clients,
    ecs::{EcsConfig, EcsRuntime},
    placement::Strategy,
    store::Store,
    templates::Templates,
    throttle::BucketShape,
};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "scheduler", version, about = "Berth's scheduler")]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines.
    #[arg(long, global = true, env = "BERTH_LOG_JSON")]
    log_json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API for hosts that report to it.
    Serve {
        #[arg(long, env = "BERTH_LISTEN", default_value = "0.0.0.0:7700")]
        listen: std::net::SocketAddr,
        /// State store: `memory` (one process only) or `redis://host:port` (a fleet).
        #[arg(long, env = "BERTH_STATE", default_value = "memory")]
        state: String,
        /// Warm pools, `template=size` separated by commas.
        #[arg(long, env = "BERTH_POOLS", default_value = "default=3")]
        pools: String,
        #[arg(long, env = "BERTH_PLACEMENT", default_value = "spread")]
        placement: Strategy,
        /// Bearer token the backend presents (required unless --insecure-no-auth).
        #[arg(long, env = "BERTH_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// The operator's token: the fleet page, /metrics, /v1/hosts, drain and
        /// /v1/pools take it (as a bearer token, or as the password of HTTP Basic
        /// for a browser) and refuse the backend's. Required unless --insecure-no-auth.
        #[arg(long, env = "BERTH_OPERATOR_TOKEN", hide_env_values = true)]
        operator_token: Option<String>,
        /// Serve the API without a backend token: anyone who can reach the port may
        /// create and delete workspaces. For a laptop only; warned at every start.
        #[arg(long, env = "BERTH_INSECURE_NO_AUTH")]
        insecure_no_auth: bool,
        /// Token shared with hostd.
        #[arg(long, env = "BERTH_HOST_TOKEN", hide_env_values = true)]
        host_token: String,
        /// Templates' policies (TOML): what a claim may ask for (egress, credential
        /// routes, files). Without it every template gets the default policy.
        #[arg(long, env = "BERTH_TEMPLATES")]
        templates: Option<std::path::PathBuf>,
        #[command(flatten)]
        runtime: Box<RuntimeArgs>,
    },
    /// Run the whole system locally: hostd (docker runtime) + scheduler (in memory).
    #[cfg(feature = "dev")]
    Dev {
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:7701")]
        hostd_listen: std::net::SocketAddr,
        /// Warm workspaces to keep ready.
        #[arg(long, default_value_t = 3)]
        pool: usize,
        /// Seccomp profile (Docker JSON) for workspace containers, or `docker-default`;
        /// without it hostd applies Berth's workspace profile.
        #[arg(long, env = "BERTH_SECCOMP_PROFILE")]
        seccomp_profile: Option<std::path::PathBuf>,
        /// Templates' policies (TOML), as for `serve`.
        #[arg(long, env = "BERTH_TEMPLATES")]
        templates: Option<std::path::PathBuf>,
        /// Where checkpoints are kept (default: `$XDG_DATA_HOME/berth/checkpoints`,
        /// else `~/.local/share/berth/checkpoints`); `s3://…` works here too.
        #[arg(long, env = "BERTH_CHECKPOINT_STORE")]
        checkpoint_store: Option<String>,
    },
}

/// How slots are started: hostd's slot API (`docker`) or ECS RunTask (`ecs`).
#[derive(clap::Args, Debug)]
struct RuntimeArgs {
    /// `docker` (each host's hostd makes slots) or `ecs` (RunTask; hostd adopts).
    #[arg(long = "runtime", env = "BERTH_RUNTIME", default_value = "docker")]
    kind: String,
    /// Networks agents may be reached in (the VPC's CIDR), comma-separated; a slot
    /// whose agent address is elsewhere is discarded. Empty: any.
    #[arg(long, env = "BERTH_AGENT_NETWORKS", default_value = "")]
    agent_networks: String,
    /// Warm slots being started at once, per pool.
    #[arg(long, env = "BERTH_REFILL_PARALLELISM")]
    refill_parallelism: Option<usize>,
    /// Seconds a running slot may be unknown to every state before it is stopped.
    #[arg(long, env = "BERTH_ORPHAN_GRACE_SECS", default_value_t = 300)]
    orphan_grace_secs: u64,
    /// Seconds with no attached stream, no process and no egress after which a
    /// workspace is released (a template's `idle_timeout_seconds` wins); 0: never.
    #[arg(long, env = "BERTH_IDLE_TIMEOUT_SECS", default_value_t = 1800)]
    idle_timeout_secs: u64,
    /// Seconds after which a binding still `Claiming` is taken for one whose
    /// replica died mid-claim: removed and its slot stopped. Longer than any claim.
    #[arg(long, env = "BERTH_CLAIM_RECOVERY_SECS", default_value_t = 90)]
    claim_recovery_secs: u64,
    /// Seconds one create may take, every call inside it included; must be below
    /// the claim recovery (a live replica's claim is never taken for a dead one's).
    #[arg(long, env = "BERTH_ACQUIRE_DEADLINE_SECS", default_value_t = 30)]
    acquire_deadline_secs: u64,
    /// Where checkpoints of workspaces' files are: `s3://BUCKET/PREFIX` (the
    /// `AWS_*` environment or the task role) or an absolute directory; give every
    /// hostd the same. Unset or empty: no checkpoints and no restores.
    #[arg(long, env = "BERTH_CHECKPOINT_STORE")]
    checkpoint_store: Option<String>,
    /// ECS cluster (ecs runtime).
    #[arg(long, env = "BERTH_ECS_CLUSTER")]
    ecs_cluster: Option<String>,
    /// Workspace task definition (family:revision or ARN) for every template, or
    /// `template=TASKDEF,...`.
    #[arg(long, env = "BERTH_ECS_TASK_DEFINITION")]
    ecs_task_definition: Option<String>,
    /// Subnets of workspace task ENIs, comma-separated.
    #[arg(long, env = "BERTH_ECS_SUBNETS", default_value = "")]
    ecs_subnets: String,
    /// Security groups of workspace task ENIs, comma-separated.
    #[arg(long, env = "BERTH_ECS_SECURITY_GROUPS", default_value = "")]
    ecs_security_groups: String,
    /// ECS API endpoint (a VPC endpoint, or a test's); default: the region's.
    #[arg(long, env = "BERTH_ECS_ENDPOINT")]
    ecs_endpoint: Option<String>,
    /// `startedBy` on every task Berth starts (how reconciliation finds them).
    #[arg(long, env = "BERTH_ECS_STARTED_BY", default_value = "berth")]
    ecs_started_by: String,
    /// Token bucket for RunTask/StartTask/StopTask, `BURST/PER_SECOND`.
    #[arg(long, env = "BERTH_ECS_RUN_BUCKET", default_value = "100/40")]
    ecs_run_bucket: String,
    /// Token bucket for DescribeTasks/ListTasks, `BURST/PER_SECOND`.
    #[arg(long, env = "BERTH_ECS_DESCRIBE_BUCKET", default_value = "100/20")]
    ecs_describe_bucket: String,
    /// Seconds a task may take from RunTask to ready before it is stopped.
    #[arg(long, env = "BERTH_ECS_START_TIMEOUT_SECS", default_value_t = 180)]
    ecs_start_timeout_secs: u64,
    /// Scale-out: the capacity provider to start tasks with, without an instance
    /// constraint, when no host has room (ECS managed scaling adds instances).
    /// Unset: never scale out.
    #[arg(long, env = "BERTH_ECS_CAPACITY_PROVIDER")]
    ecs_capacity_provider: Option<String>,
    /// Seconds a scale-out task may wait for its instance (PROVISIONING).
    #[arg(long, env = "BERTH_ECS_PROVISION_TIMEOUT_SECS", default_value_t = 600)]
    ecs_provision_timeout_secs: u64,
    /// Slots of room kept free across the fleet; below it the scheduler scales out.
    #[arg(long, env = "BERTH_SCALE_OUT_HEADROOM", default_value_t = 0)]
    scale_out_headroom: usize,
    /// This scheduler's name, tagged on every task (`berth:scheduler`).
    #[arg(long, env = "BERTH_SCHEDULER_NAME", default_value = "berth")]
    scheduler_name: String,
}

/// The ECS runtime's settings from flags, or what is wrong with them.
fn ecs_config(r: &RuntimeArgs) -> Result<EcsConfig, String> {
    let cluster = r
        .ecs_cluster
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or("--runtime ecs needs --ecs-cluster (BERTH_ECS_CLUSTER)")?;
    let mut c = EcsConfig::new(cluster);
    c.task_definitions = EcsConfig::parse_task_definitions(
        r.ecs_task_definition
            .as_deref()
            .ok_or("--runtime ecs needs --ecs-task-definition (BERTH_ECS_TASK_DEFINITION)")?,
    )?;
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    c.subnets = list(&r.ecs_subnets);
    c.security_groups = list(&r.ecs_security_groups);
    if c.subnets.is_empty() || c.security_groups.is_empty() {
        return Err(
            "--runtime ecs needs --ecs-subnets and --ecs-security-groups (awsvpc tasks)".into(),
        );
    }
    if r.ecs_started_by.is_empty() || r.ecs_started_by.len() > 36 {
        return Err("--ecs-started-by must be 1 to 36 characters (ECS's limit)".into());
    }
    c.started_by = r.ecs_started_by.clone();
    c.scheduler_name = r.scheduler_name.clone();
    c.mutate_bucket = BucketShape::parse(&r.ecs_run_bucket)?;
    c.describe_bucket = BucketShape::parse(&r.ecs_describe_bucket)?;
    c.start_deadline = std::time::Duration::from_secs(r.ecs_start_timeout_secs.max(1));
    c.capacity_provider = r.ecs_capacity_provider.clone().filter(|p| !p.is_empty());
    c.provision_deadline = std::time::Duration::from_secs(r.ecs_provision_timeout_secs.max(1));
    Ok(c)
}

fn parse_pools(s: &str) -> Result<BTreeMap<String, usize>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (t, n) = p
                .split_once('=')
                .ok_or_else(|| format!("pool `{p}` is not `template=size`"))?;
            let n = n
                .trim()
                .parse()
                .map_err(|_| format!("pool `{p}`: size is not a number"))?;
            Ok((t.trim().to_owned(), n))
        })
        .collect()
}

fn config_error(msg: &str) -> std::process::ExitCode {
    eprintln!("scheduler: configuration error: {msg}");
    std::process::ExitCode::from(64)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match args.command {
        #[cfg(feature = "dev")]
        Command::Dev {
            listen,
            hostd_listen,
            pool,
            seccomp_profile,
            templates,
            checkpoint_store,
        } => {
            let templates = match templates.as_deref().map(Templates::load).transpose() {
                Ok(t) => t.unwrap_or_default(),
                Err(e) => return config_error(&format!("--templates: {e}")),
            };
            let opts = dev::DevOptions {
                listen,
                hostd_listen,
                pool_size: pool,
                seccomp_profile,
                templates,
                checkpoint_store: checkpoint_store.unwrap_or_else(dev::default_checkpoint_dir),
            };
            match dev::run(opts).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth: {e}");
                    std::process::ExitCode::from(69)
                }
            }
        }
        Command::Serve {
            listen,
            state,
            pools,
            placement,
            api_token,
            operator_token,
            insecure_no_auth,
            host_token,
            templates,
            runtime,
        } => {
            match (&api_token, insecure_no_auth) {
                (Some(t), _) if t.len() < 16 => {
                    return config_error("the API token must be at least 16 characters");
                }
                (Some(_), _) => {}
                (None, true) => tracing::warn!(
                    "serving WITHOUT a backend token (--insecure-no-auth): anyone who can \
                     reach this port can create and delete workspaces"
                ),
                (None, false) => {
                    return config_error(
                        "a backend token is required: --api-token or BERTH_API_TOKEN \
                         (`scheduler serve --help` says how to run without one on a laptop)",
                    );
                }
            }
            match (&operator_token, insecure_no_auth) {
                (Some(t), _) if t.len() < 16 => {
                    return config_error("the operator token must be at least 16 characters");
                }
                (Some(t), _) if Some(t) == api_token.as_ref() => {
                    return config_error(
                        "the operator token must differ from the backend's (BERTH_OPERATOR_TOKEN)",
                    );
                }
                (Some(_), _) | (None, true) => {}
                (None, false) => {
                    return config_error(
                        "an operator token is required: --operator-token or BERTH_OPERATOR_TOKEN",
                    );
                }
            }
            let templates = match templates.as_deref().map(Templates::load).transpose() {
                Ok(t) => t.unwrap_or_default(),
                Err(e) => return config_error(&format!("--templates: {e}")),
            };
            let store = if state == "memory" {
                Store::memory()
            } else if state.starts_with("redis://") || state.starts_with("rediss://") {
                match Store::redis(&state).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reach the state store");
                        return std::process::ExitCode::from(69);
                    }
                }
            } else {
                return config_error(&format!(
                    "state store `{state}` is not `memory` or a redis:// URL"
                ));
            };
            let pools = match parse_pools(&pools) {
                Ok(p) => p,
                Err(e) => return config_error(&e),
            };
            if host_token.len() < 16 {
                return config_error("the host token must be at least 16 characters");
            }
            let agent_networks = match Cidr::parse_list(&runtime.agent_networks) {
                Ok(n) => n,
                Err(e) => return config_error(&format!("--agent-networks: {e}")),
            };
            let mut config = Config {
                pools,
                strategy: placement,
                api_token,
                operator_token,
                host_token,
                agent_networks,
                templates,
                ..Config::default()
            };
            config.scale_out_headroom = runtime.scale_out_headroom;
            config.orphan_grace = std::time::Duration::from_secs(runtime.orphan_grace_secs.max(1));
            config.idle_timeout = std::time::Duration::from_secs(runtime.idle_timeout_secs);
            config.claim_recovery =
                std::time::Duration::from_secs(runtime.claim_recovery_secs.max(1));
            config.acquire_deadline =
                std::time::Duration::from_secs(runtime.acquire_deadline_secs.max(1));
            if let Some(url) = runtime.checkpoint_store.as_ref().filter(|u| !u.is_empty()) {
                match berth_checkpoint::Store::open(url) {
                    Ok(store) => config.checkpoints = Some(store),
                    Err(e) => return config_error(&format!("--checkpoint-store: {e}")),
                }
            }
            // A create that restores a checkpoint may take a second deadline.
            let longest_claim = match config.checkpoints {
                Some(_) => config.acquire_deadline * 2,
                None => config.acquire_deadline,
            };
            if config.claim_recovery <= longest_claim + std::time::Duration::from_secs(1) {
                return config_error(&format!(
                    "--claim-recovery-secs ({}) must exceed --acquire-deadline-secs ({}{}) by more \
                     than a second: a claim still within its deadline would be taken for a dead \
                     replica's",
                    runtime.claim_recovery_secs,
                    runtime.acquire_deadline_secs,
                    if config.checkpoints.is_some() {
                        ", twice over with a checkpoint store: a restore gets a second deadline"
                    } else {
                        ""
                    }
                ));
            }
            if let Some(n) = runtime.refill_parallelism {
                config.refill_parallelism = n.max(1);
            }
            let scheduler = match runtime.kind.as_str() {
                "docker" => Scheduler::new(config, store),
                "ecs" => {
                    let ecs = match ecs_config(&runtime) {
                        Ok(c) => c,
                        Err(e) => return config_error(&e),
                    };
                    let client =
                        EcsRuntime::client_from_env(runtime.ecs_endpoint.as_deref(), None).await;
                    tracing::info!(cluster = %ecs.cluster, "runtime: ecs");
                    let clients = Clients::new(config.host_token.clone());
                    let rt = Arc::new(EcsRuntime::new(client, ecs, clients));
                    Scheduler::with_runtime(config, store, rt)
                }
                other => {
                    return config_error(&format!("runtime `{other}` is not `docker` or `ecs`"));
                }
            };
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%listen, error = %e, "cannot listen");
                    return std::process::ExitCode::from(69);
                }
            };
            tracing::info!(%listen, "scheduler serving");
            // SIGTERM (ECS stopping the task) or Ctrl-C: stop accepting, let the
            // requests in flight finish, stop the reconcilers, exit 0.
            let shutdown = async {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(t) => t,
                        Err(_) => return std::future::pending().await,
                    };
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: draining requests in flight"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining requests in flight"),
                }
            };
            match berth_scheduler::run(scheduler, listener, shutdown).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pools;

    #[test]
    fn pools_parse_and_errors_name_the_entry() {
        let p = parse_pools("default=3, gpu=1").unwrap();
        assert_eq!(p["default"], 3);
        assert_eq!(p["gpu"], 1);
        assert!(parse_pools("default").unwrap_err().contains("`default`"));
        assert!(
            parse_pools("default=x")
                .unwrap_err()
                .contains("not a number")
        );
    }
}

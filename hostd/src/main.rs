//! `hostd`: thin binary over [`berth_hostd`]. Exit codes: 64 bad configuration,
//! 69 a dependency (Docker, the listen address) unavailable, 1 other failures.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "hostd", version, about = "Berth's per-host daemon")]
struct Args {
    /// Address for the status page and slot API.
    #[arg(long, env = "BERTH_HOSTD_LISTEN", default_value = "0.0.0.0:7701")]
    listen: std::net::SocketAddr,
    /// This host's id (docker runtime; the ECS runtime reads the instance id).
    #[arg(long, env = "BERTH_HOST_ID")]
    host_id: Option<String>,
    /// `docker` (hostd makes slots) or `ecs` (ECS starts workspace tasks; hostd
    /// adopts them; identity from instance metadata).
    #[arg(long, env = "BERTH_HOST_RUNTIME", default_value = "docker")]
    runtime: String,
    /// Instance type (capacity table); ECS mode reads it from instance metadata.
    #[arg(long, env = "BERTH_INSTANCE_TYPE")]
    instance_type: Option<String>,
    /// Instance metadata (IMDSv2) base URL, ECS mode.
    #[arg(
        long,
        env = "BERTH_IMDS_ENDPOINT",
        default_value = "http://169.254.169.254"
    )]
    imds_endpoint: String,
    /// The ECS agent's introspection API, ECS mode.
    #[arg(
        long,
        env = "BERTH_ECS_AGENT_URL",
        default_value = "http://127.0.0.1:51678"
    )]
    ecs_agent_url: String,
    /// The ECS cluster this host should serve (ECS mode): hostd says so on its page
    /// and in its checks when the ECS agent registered it elsewhere.
    #[arg(long, env = "BERTH_ECS_CLUSTER")]
    ecs_cluster: Option<String>,
    /// Slots this host may run; defaults to the ENI-trunk table for the instance type,
    /// 400 for a `local` machine, and 2 (with a warning) for a type not in the table.
    #[arg(long, env = "BERTH_BRANCH_LIMIT")]
    branch_limit: Option<u32>,
    /// URL the scheduler uses to reach this hostd (default: http://<listen>).
    #[arg(long, env = "BERTH_HOSTD_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Scheduler base URL for heartbeats.
    #[arg(long, env = "BERTH_SCHEDULER_URL")]
    scheduler_url: Option<String>,
    /// Shared host token (or use --token-file).
    #[arg(long, env = "BERTH_HOST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, env = "BERTH_HOST_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Workspace image (docker runtime; ECS tasks name theirs).
    #[arg(long, env = "BERTH_WORKSPACE_IMAGE")]
    workspace_image: Option<String>,
    /// Proxy image (docker runtime).
    #[arg(long, env = "BERTH_PROXY_IMAGE")]
    proxy_image: Option<String>,
    /// Seccomp profile (Docker JSON) for workspace containers: a file, or
    /// `docker-default` for the daemon's own default. Without it, Berth's workspace
    /// profile (seccomp/workspace.json, built in) is used.
    #[arg(long, env = "BERTH_SECCOMP_PROFILE")]
    seccomp_profile: Option<std::path::PathBuf>,
    /// Extra `KEY=VALUE` environment for every slot's proxy container (docker
    /// runtime), e.g. `AWS_REGION=eu-west-1`; repeat the flag for more.
    #[arg(long = "proxy-env", value_name = "KEY=VALUE")]
    proxy_env: Vec<String>,
    /// A directory mounted read-only at /etc/berth/proxy in every slot's proxy
    /// container (docker runtime); its proxy.toml is the proxy's file configuration.
    #[arg(long, env = "BERTH_PROXY_CONFIG_DIR")]
    proxy_config_dir: Option<std::path::PathBuf>,
    #[arg(long, env = "BERTH_MEMORY_LIMIT_MIB", default_value_t = 512)]
    memory_limit_mib: u64,
    /// Memory placement counts for one slot (both containers, at idle); the limits
    /// are what a busy slot may grow to.
    #[arg(long, env = "BERTH_MEMORY_RESERVATION_MIB", default_value_t = 48)]
    memory_reservation_mib: u64,
    /// Memory kept for the system (OS, Docker, the ECS agent, hostd), not offered to slots.
    #[arg(long, env = "BERTH_MEMORY_SYSTEM_MIB", default_value_t = 512)]
    memory_system_mib: u64,
    #[arg(long, env = "BERTH_PIDS_LIMIT", default_value_t = 256)]
    pids_limit: i64,
    #[arg(long, env = "BERTH_WORKSPACE_SIZE_MIB", default_value_t = 1024)]
    workspace_size_mib: u64,
    /// Remove every container and network this hostd made when it stops (local use).
    #[arg(long)]
    cleanup_on_exit: bool,
    /// hostd's own seccomp filter after start-up: `enforce` (a call outside the
    /// allow-list kills hostd), `audit` (logged only), or `off`.
    #[arg(long, env = "BERTH_HOSTD_SECCOMP", default_value = "enforce")]
    self_seccomp: String,
    /// Where the host's metadata blocks (DOCKER-USER, the ECS credential path) are
    /// applied: `host` (this machine's firewall), `off`, or a network namespace file
    /// such as /run/netns/NAME.
    #[arg(long, env = "BERTH_HOST_RULES", default_value = "host")]
    host_rules: String,
    /// Let the proxy's uid (only) reach the ECS credential endpoint, for proxies that
    /// sign with the task's own credentials.
    #[arg(long, env = "BERTH_PROXY_TASK_CREDENTIALS")]
    proxy_task_credentials: bool,
    /// Seconds between enforcement passes (rules read back, containers audited).
    #[arg(long, env = "BERTH_CHECK_EVERY_SECS", default_value_t = berth_hostd::CHECK_EVERY.as_secs())]
    check_every_secs: u64,
    /// The Docker daemon's config file (e.g. /etc/docker/daemon.json) whose
    /// `seccomp-profile` must be Berth's workspace profile and loaded: checked every
    /// pass. The host image sets it; unset, the check is not made.
    #[arg(long, env = "BERTH_CHECK_DAEMON_SECCOMP")]
    check_daemon_seccomp: Option<std::path::PathBuf>,
    /// Where checkpoints of `/workspace` are stored: `s3://BUCKET/PREFIX`
    /// (credentials, region and endpoint from the usual `AWS_*` environment, else
    /// the instance role) or an absolute directory. Unset or empty: no checkpoints.
    #[arg(long, env = "BERTH_CHECKPOINT_STORE")]
    checkpoint_store: Option<String>,
    /// Keep every capability hostd started with (debugging only); by default all but
    /// CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN and CAP_SYS_PTRACE are dropped at start.
    #[arg(long)]
    keep_all_capabilities: bool,
    /// Extra label (`key=value`) on every container and network; repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Log as JSON lines.
    #[arg(long, env = "BERTH_LOG_JSON")]
    log_json: bool,
}

fn config_error(msg: &str) -> std::process::ExitCode {
    eprintln!("hostd: configuration error: {msg}");
    std::process::ExitCode::from(64)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // While hostd has one thread: capabilities are per thread, and every thread made
    // from here on inherits the reduced sets.
    if !args.keep_all_capabilities
        && let Err(e) = berth_hostd::capabilities::drop_to_kept()
    {
        eprintln!("hostd: {e}");
        return std::process::ExitCode::from(69);
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async_main(args)),
        Err(e) => {
            eprintln!("hostd: cannot start the runtime: {e}");
            std::process::ExitCode::from(69)
        }
    }
}

async fn async_main(args: Args) -> std::process::ExitCode {
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
    let runtime = match args.runtime.as_str() {
        "docker" => berth_hostd::HostRuntime::Docker,
        "ecs" => berth_hostd::HostRuntime::Ecs {
            agent_url: args.ecs_agent_url.trim_end_matches('/').to_owned(),
        },
        other => return config_error(&format!("runtime `{other}` is not `docker` or `ecs`")),
    };
    let (workspace_image, proxy_image) = match (&runtime, args.workspace_image, args.proxy_image) {
        (_, Some(w), Some(p)) => (w, p),
        (berth_hostd::HostRuntime::Ecs { .. }, w, p) => {
            (w.unwrap_or_default(), p.unwrap_or_default())
        }
        _ => {
            return config_error(
                "the docker runtime needs --workspace-image and --proxy-image \
                 (BERTH_WORKSPACE_IMAGE, BERTH_PROXY_IMAGE)",
            );
        }
    };
    let token = match (args.token, args.token_file) {
        (Some(t), _) => t,
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => return config_error(&format!("cannot read {}: {e}", path.display())),
        },
        (None, None) => return config_error("a host token is required (--token or --token-file)"),
    };
    if token.len() < 16 {
        return config_error("the host token must be at least 16 characters");
    }
    if let Some(bad) = args.proxy_env.iter().find(|kv| {
        kv.split_once('=').is_none_or(|(k, _)| {
            k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    }) {
        return config_error(&format!("--proxy-env {bad:?} is not KEY=VALUE"));
    }
    if let Some(dir) = &args.proxy_config_dir
        && !dir.is_dir()
    {
        return config_error(&format!(
            "--proxy-config-dir {} is not a directory",
            dir.display()
        ));
    }
    let seccomp_profile = match args.seccomp_profile {
        Some(p) if p.as_os_str() == "docker-default" => None,
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(s) => Some(s),
            Err(e) => return config_error(&format!("cannot read {}: {e}", p.display())),
        },
        None => Some(berth_seccomp::WORKSPACE_PROFILE_JSON.to_owned()),
    };
    if let Some(profile) = &seccomp_profile
        && let Err(e) = serde_json::from_str::<serde_json::Value>(profile)
    {
        return config_error(&format!("the seccomp profile is not JSON: {e}"));
    }
    let self_seccomp = match args.self_seccomp.as_str() {
        "enforce" => Some(berth_seccomp::HostdFilterMode::Enforce),
        "audit" => Some(berth_seccomp::HostdFilterMode::Audit),
        "off" => None,
        other => {
            return config_error(&format!(
                "--self-seccomp `{other}` is not one of enforce, audit, off"
            ));
        }
    };
    let mut extra_labels = HashMap::new();
    for l in &args.labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                extra_labels.insert(k.to_owned(), v.to_owned());
            }
            _ => return config_error(&format!("--label `{l}` is not key=value")),
        }
    }
    let host_rules = match args.host_rules.as_str() {
        "host" => Some(berth_hostd::Netns::Host),
        "off" => None,
        path if path.starts_with('/') => Some(berth_hostd::Netns::Path(path.into())),
        other => {
            return config_error(&format!(
                "--host-rules `{other}` is not `host`, `off` or a namespace file path"
            ));
        }
    };
    if args.check_every_secs == 0 {
        return config_error("--check-every-secs must be at least 1");
    }
    let (host_id, instance_type) = match &runtime {
        berth_hostd::HostRuntime::Docker => (
            args.host_id.unwrap_or_else(|| {
                let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                format!("local-{}", name.trim())
            }),
            args.instance_type.unwrap_or_else(|| "local".into()),
        ),
        berth_hostd::HostRuntime::Ecs { agent_url } => {
            let imds = args.imds_endpoint.trim_end_matches('/');
            let id = match berth_hostd::ecs::identity(imds).await {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read this instance's identity");
                    return std::process::ExitCode::from(69);
                }
            };
            if let Some(h) = &args.host_id
                && h != &id.instance_id
            {
                return config_error(&format!(
                    "--host-id {h} is not this instance ({}); leave it unset in ECS mode",
                    id.instance_id
                ));
            }
            match berth_hostd::ecs::AgentClient::new(agent_url.clone())
                .metadata()
                .await
            {
                Ok(m) => {
                    if let Some(want) = &args.ecs_cluster
                        && !m.cluster.is_empty()
                        && !m.cluster.ends_with(want.as_str())
                    {
                        tracing::error!(agent_cluster = %m.cluster, expected = %want,
                            "the ECS agent serves another cluster than BERTH_ECS_CLUSTER");
                    }
                    tracing::info!(cluster = %m.cluster, agent = %m.version, "ECS agent found");
                }
                // hostd starts before the agent (Before=ecs.service): it keeps asking.
                Err(e) => {
                    tracing::warn!(error = %e, "ECS agent not answering yet; will keep trying")
                }
            }
            (
                id.instance_id,
                args.instance_type.unwrap_or(id.instance_type),
            )
        }
    };
    let (branch_limit, branch_limit_source) =
        berth_hostd::capacity::branch_limit(&instance_type, args.branch_limit);
    if branch_limit_source == berth_hostd::capacity::BranchSource::Unknown {
        tracing::warn!(
            %instance_type,
            branch_limit,
            "instance type not in the ENI-trunking table: assuming {branch_limit} awsvpc tasks; \
             set --branch-limit to the real figure"
        );
    }
    if args.memory_reservation_mib == 0 {
        return config_error("--memory-reservation-mib must be at least 1");
    }
    let checkpoints = match args
        .checkpoint_store
        .as_deref()
        .map(berth_checkpoint::Store::open)
    {
        None => None,
        Some(Ok(store)) => {
            tracing::info!(store = %store.url(), "checkpoints stored here");
            Some(store)
        }
        Some(Err(e)) => return config_error(&e.to_string()),
    };
    let config = berth_hostd::Config {
        host_id,
        runtime,
        instance_type,
        branch_limit,
        branch_limit_source,
        memory_system_mib: args.memory_system_mib,
        advertise_url: args
            .advertise_url
            .unwrap_or_else(|| format!("http://{}", args.listen)),
        scheduler_url: args.scheduler_url,
        token,
        templates: vec![berth_hostd::SlotTemplate {
            name: "default".into(),
            workspace_image,
            proxy_image,
            memory_limit_mib: args.memory_limit_mib,
            memory_reservation_mib: args.memory_reservation_mib,
            pids_limit: args.pids_limit,
            workspace_size_mib: args.workspace_size_mib,
            seccomp_profile,
            proxy_env: args.proxy_env.clone(),
            proxy_config_dir: args.proxy_config_dir.clone(),
        }],
        cleanup_on_exit: args.cleanup_on_exit,
        extra_labels,
        self_seccomp,
        host_rules,
        egress: berth_hostd::EgressPolicy {
            proxy_task_credentials: args.proxy_task_credentials,
            ..berth_hostd::EgressPolicy::default()
        },
        check_every: std::time::Duration::from_secs(args.check_every_secs),
        daemon_seccomp: args.check_daemon_seccomp,
        checkpoints,
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %args.listen, error = %e, "cannot listen");
            return std::process::ExitCode::from(69);
        }
    };
    tracing::info!(host_id = %config.host_id, listen = %args.listen, branch_limit, "hostd starting");
    match berth_hostd::run(config, listener, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "hostd failed");
            std::process::ExitCode::from(69)
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
    tracing::info!("stopping");
}

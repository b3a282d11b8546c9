//! Privileged operations: the only place hostd enters network namespaces, runs
//! `iptables-restore`/`iptables-save`, reads routes, and inspects or stops containers.
//!
//! # Background
//! hostd is root so that it can lock workspaces down; every call that needs that power
//! goes through [`Privileged`], so the policy that decides *what* to apply (the egress
//! rules, the host rules, the container audit) is plain code tested against
//! [`RecordingPrivileged`] without root, and the real calls ([`HostPrivileged`]) are
//! tested for real in namespaces and containers the tests make.
//!
//! Entering a namespace: `setns(2)` moves only the calling *thread* into another
//! network namespace. Doing that on a tokio worker (or a `spawn_blocking` thread,
//! which tokio reuses) would leave a pool thread in a workspace's namespace, where the
//! next unrelated task would open its sockets. So each namespaced operation runs on a
//! thread of its own, made for it and ended after it: the thread enters the namespace
//! and spawns `iptables-restore` or `iptables-save`, which inherits that thread's
//! namespace, then exits. Nothing else ever runs on it.
//!
//! Rules are loaded with `iptables-restore --noflush`: one transaction per family, in
//! which Berth's own chains are declared (and so emptied and refilled) and nothing
//! else is touched — Docker's chains and any other tool's rules stay as they were, and
//! a reader never sees a half-applied set.

use std::{
    collections::BTreeMap,
    future::Future,
    io::Write,
    path::PathBuf,
    pin::Pin,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

/// A boxed future, so that [`Privileged`] can be used as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    fn restore_bin(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn save_bin(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// A network namespace to operate in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Netns {
    /// hostd's own (the host's).
    Host,
    /// A namespace file: `/proc/<pid>/ns/net` of the process that owns a task's
    /// namespace, or a bind mount such as `/run/netns/<name>`.
    Path(PathBuf),
}

impl Netns {
    /// The namespace of process `pid`.
    pub fn of_pid(pid: i64) -> Self {
        Netns::Path(PathBuf::from(format!("/proc/{pid}/ns/net")))
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Netns::Host => f.write_str("host"),
            Netns::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One route, as the kernel lists it in `/proc/net/route` or `/proc/net/ipv6_route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network, e.g. `0.0.0.0/0` or `fd00:ec2::254/128`.
    pub destination: String,
    /// Next hop, if the route has one.
    pub gateway: Option<String>,
    pub device: String,
    /// `RTF_REJECT`: unreachable or prohibit (the kind of route a metadata block adds).
    pub reject: bool,
}

/// What the audit needs to know about one container, as the engine reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// Pid of its first process (0 when not running).
    pub pid: i64,
    /// `Config.User` as given, e.g. `1000:1000`; empty means the image's (often root).
    pub user: String,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub readonly_rootfs: bool,
    pub pids_limit: Option<i64>,
    /// Bytes; 0 means unlimited.
    pub memory_limit: i64,
    /// (type, source, read-only) of every mount: `bind` mounts of host paths are
    /// refused, but for a read-only one the expectations name.
    pub mounts: Vec<(String, String, bool)>,
    pub devices: usize,
    pub network_mode: String,
    pub pid_mode: String,
    pub ipc_mode: String,
    pub uts_mode: String,
    pub userns_mode: String,
    /// The address on each network it is attached to.
    pub addresses: BTreeMap<String, String>,
    /// `BERTH_TEMPLATE` from its environment (the scheduler sets it on ECS tasks);
    /// nothing else of the environment is kept (the proxy's holds credentials).
    pub env_template: Option<String>,
}

/// Why a privileged operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PrivError {
    #[error("cannot enter network namespace {netns}: {reason}")]
    EnterNetns { netns: String, reason: String },
    #[error("`{command}` in {netns} failed: {detail}")]
    Command {
        command: String,
        netns: String,
        detail: String,
    },
    #[error("cannot read routes in {netns}: {reason}")]
    Routes { netns: String, reason: String },
    #[error("container {id} not found")]
    NoSuchContainer { id: String },
    #[error("docker {op} {id}: {reason}")]
    Docker {
        op: &'static str,
        id: String,
        reason: String,
    },
}

/// hostd's privileged calls. Implemented for real by [`HostPrivileged`] and recorded
/// by [`RecordingPrivileged`].
pub trait Privileged: Send + Sync + 'static {
    /// Loads `rules` (iptables-restore format) into `netns` with `--noflush`.
    fn apply_rules<'a>(
        &'a self,
        netns: &'a Netns,
        family: Family,
        rules: &'a str,
    ) -> BoxFuture<'a, Result<(), PrivError>>;

    /// The `filter` table of `netns`, as `iptables-save -t filter` prints it.
    fn read_rules<'a>(
        &'a self,
        netns: &'a Netns,
        family: Family,
    ) -> BoxFuture<'a, Result<String, PrivError>>;

    /// The routes of `netns`, IPv4 then IPv6.
    fn read_routes<'a>(&'a self, netns: &'a Netns) -> BoxFuture<'a, Result<Vec<Route>, PrivError>>;

    fn inspect_container<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ContainerFacts, PrivError>>;

    /// Ids of the containers (running or not) matching a Docker label filter:
    /// `key` (any value) or `key=value`.
    fn containers_labelled<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, PrivError>>;

    /// Stops a container (a short grace, then SIGKILL).
    fn stop_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), PrivError>>;

    /// Sets a running container's pids cgroup limit (ECS cannot set one itself).
    fn set_pids_limit<'a>(
        &'a self,
        id: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<(), PrivError>>;

    /// The engine's security options (`docker info`), e.g. `name=seccomp,profile=…`.
    fn daemon_security_options(&self) -> BoxFuture<'_, Result<Vec<String>, PrivError>>;

    /// Memory a running container uses now, in bytes, as `docker stats` counts it
    /// (usage less inactive page cache).
    fn container_memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u64, PrivError>>;
}

// === impl HostPrivileged ===

/// The real calls: namespaces entered on a thread of their own, netfilter through the
/// iptables tools, containers through the Docker engine.
#[derive(Clone)]
pub struct HostPrivileged {
    docker: bollard::Docker,
}

impl HostPrivileged {
    pub fn new(docker: bollard::Docker) -> Self {
        Self { docker }
    }
}

/// Runs `work` on a new thread that first enters `netns`; the thread ends with it.
async fn in_netns<T: Send + 'static>(
    netns: &Netns,
    work: impl FnOnce() -> Result<T, PrivError> + Send + 'static,
) -> Result<T, PrivError> {
    let target = netns.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || {
            let result = enter(&target).and_then(|()| work());
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(PrivError::EnterNetns {
            netns: netns.to_string(),
            reason: format!("cannot start a thread: {e}"),
        });
    }
    rx.await.unwrap_or_else(|_| {
        Err(PrivError::EnterNetns {
            netns: netns.to_string(),
            reason: "the namespace thread ended without an answer".into(),
        })
    })
}

/// Moves the calling thread into `netns` (nothing to do for the host's).
fn enter(netns: &Netns) -> Result<(), PrivError> {
    let Netns::Path(path) = netns else {
        return Ok(());
    };
    let fail = |reason: String| PrivError::EnterNetns {
        netns: netns.to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| fail(format!("setns: {e}")))
}

fn run_tool(
    netns: &Netns,
    bin: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, PrivError> {
    let command = format!("{bin} {}", args.join(" "));
    let fail = |detail: String| PrivError::Command {
        command: command.clone(),
        netns: netns.to_string(),
        detail,
    };
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| fail(format!("cannot write its input: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("cannot wait for it: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Privileged for HostPrivileged {
    fn apply_rules<'a>(
        &'a self,
        netns: &'a Netns,
        family: Family,
        rules: &'a str,
    ) -> BoxFuture<'a, Result<(), PrivError>> {
        let owned_ns = netns.clone();
        let rules = rules.to_owned();
        Box::pin(in_netns(netns, move || {
            run_tool(
                &owned_ns,
                family.restore_bin(),
                &["--noflush", "-w", "5"],
                Some(&rules),
            )
            .map(|_| ())
        }))
    }

    fn read_rules<'a>(
        &'a self,
        netns: &'a Netns,
        family: Family,
    ) -> BoxFuture<'a, Result<String, PrivError>> {
        let owned_ns = netns.clone();
        Box::pin(in_netns(netns, move || {
            run_tool(&owned_ns, family.save_bin(), &["-t", "filter"], None)
        }))
    }

    fn read_routes<'a>(&'a self, netns: &'a Netns) -> BoxFuture<'a, Result<Vec<Route>, PrivError>> {
        let owned_ns = netns.clone();
        Box::pin(in_netns(netns, move || {
            let read = |p: &str| {
                std::fs::read_to_string(p).map_err(|e| PrivError::Routes {
                    netns: owned_ns.to_string(),
                    reason: format!("{p}: {e}"),
                })
            };
            // thread-self: this thread's namespace, not the process's.
            let mut routes = parse_routes_v4(&read("/proc/thread-self/net/route")?);
            // A kernel without IPv6 has no ipv6_route: no IPv6 routes, not an error.
            if let Ok(v6) = std::fs::read_to_string("/proc/thread-self/net/ipv6_route") {
                routes.extend(parse_routes_v6(&v6));
            }
            Ok(routes)
        }))
    }

    fn inspect_container<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ContainerFacts, PrivError>> {
        Box::pin(async move {
            self.docker
                .inspect_container(id, None)
                .await
                .map(facts_of)
                .map_err(|e| docker_error("inspect", id, e))
        })
    }

    fn containers_labelled<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, PrivError>> {
        Box::pin(async move {
            let list = self
                .docker
                .list_containers(Some(
                    bollard::query_parameters::ListContainersOptionsBuilder::new()
                        .all(true)
                        .filters(&std::collections::HashMap::from([(
                            "label",
                            vec![key.to_owned()],
                        )]))
                        .build(),
                ))
                .await
                .map_err(|e| PrivError::Docker {
                    op: "list",
                    id: format!("label={key}"),
                    reason: e.to_string(),
                })?;
            Ok(list.into_iter().filter_map(|c| c.id).collect())
        })
    }

    fn stop_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), PrivError>> {
        Box::pin(async move {
            let opts = bollard::query_parameters::StopContainerOptionsBuilder::new()
                .t(2)
                .build();
            match self.docker.stop_container(id, Some(opts)).await {
                // 304: already stopped.
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 304, ..
                }) => Ok(()),
                Err(e) => Err(docker_error("stop", id, e)),
            }
        })
    }

    fn set_pids_limit<'a>(
        &'a self,
        id: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<(), PrivError>> {
        Box::pin(async move {
            self.docker
                .update_container(
                    id,
                    bollard::models::ContainerUpdateBody {
                        pids_limit: Some(limit),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| docker_error("update", id, e))
        })
    }

    fn daemon_security_options(&self) -> BoxFuture<'_, Result<Vec<String>, PrivError>> {
        Box::pin(async move {
            let info = self.docker.info().await.map_err(|e| PrivError::Docker {
                op: "info",
                id: "-".into(),
                reason: e.to_string(),
            })?;
            Ok(info.security_options.unwrap_or_default())
        })
    }

    fn container_memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u64, PrivError>> {
        Box::pin(async move {
            use futures_util::StreamExt;
            let opts = bollard::query_parameters::StatsOptionsBuilder::new()
                .stream(false)
                .one_shot(true)
                .build();
            let stats = self
                .docker
                .stats(id, Some(opts))
                .next()
                .await
                .ok_or_else(|| PrivError::NoSuchContainer { id: id.into() })?
                .map_err(|e| docker_error("stats", id, e))?;
            let memory = stats.memory_stats.unwrap_or_default();
            let usage = memory.usage.unwrap_or(0);
            let cache = memory
                .stats
                .as_ref()
                .and_then(|s| {
                    s.get("total_inactive_file")
                        .or_else(|| s.get("inactive_file"))
                })
                .copied()
                .unwrap_or(0);
            Ok(usage.saturating_sub(cache))
        })
    }
}

/// A 404 is the container being gone; anything else keeps the engine's words.
fn docker_error(op: &'static str, id: &str, e: bollard::errors::Error) -> PrivError {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => PrivError::NoSuchContainer { id: id.into() },
        e => PrivError::Docker {
            op,
            id: id.into(),
            reason: e.to_string(),
        },
    }
}

fn facts_of(c: bollard::models::ContainerInspectResponse) -> ContainerFacts {
    let hc = c.host_config.unwrap_or_default();
    let config = c.config.unwrap_or_default();
    let state = c.state.unwrap_or_default();
    ContainerFacts {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        running: state.running.unwrap_or(false),
        pid: state.pid.unwrap_or(0),
        user: config.user.unwrap_or_default(),
        privileged: hc.privileged.unwrap_or(false),
        cap_add: hc.cap_add.unwrap_or_default(),
        cap_drop: hc.cap_drop.unwrap_or_default(),
        security_opt: hc.security_opt.unwrap_or_default(),
        readonly_rootfs: hc.readonly_rootfs.unwrap_or(false),
        pids_limit: hc.pids_limit,
        memory_limit: hc.memory.unwrap_or(0),
        mounts: c
            .mounts
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                (
                    m.typ.map(|t| t.to_string()).unwrap_or_default(),
                    m.source.unwrap_or_default(),
                    !m.rw.unwrap_or(true),
                )
            })
            .collect(),
        devices: hc.devices.map(|d| d.len()).unwrap_or(0),
        network_mode: hc.network_mode.unwrap_or_default(),
        pid_mode: hc.pid_mode.unwrap_or_default(),
        ipc_mode: hc.ipc_mode.unwrap_or_default(),
        uts_mode: hc.uts_mode.unwrap_or_default(),
        userns_mode: hc.userns_mode.unwrap_or_default(),
        addresses: c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(net, e)| e.ip_address.filter(|ip| !ip.is_empty()).map(|ip| (net, ip)))
            .collect(),
        env_template: config.env.unwrap_or_default().iter().find_map(|e| {
            e.strip_prefix(berth_wire::ecs::ENV_TEMPLATE)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        }),
    }
}

/// `/proc/net/route`: hex, little-endian addresses; flag 0x0200 is `RTF_REJECT`.
fn parse_routes_v4(text: &str) -> Vec<Route> {
    let addr = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| std::net::Ipv4Addr::from(v.swap_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let dest = addr(f[1])?;
            let gateway = addr(f[2])?;
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let mask = addr(f[7])?;
            Some(Route {
                destination: format!("{dest}/{}", u32::from(mask).count_ones()),
                gateway: (!gateway.is_unspecified()).then(|| gateway.to_string()),
                device: f[0].to_owned(),
                reject: flags & 0x0200 != 0,
            })
        })
        .collect()
}

/// `/proc/net/ipv6_route`: dest, plen, src, plen, next hop, metric, refs, use, flags, dev.
fn parse_routes_v6(text: &str) -> Vec<Route> {
    let addr = |hex: &str| {
        u128::from_str_radix(hex, 16)
            .ok()
            .map(std::net::Ipv6Addr::from)
    };
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let dest = addr(f[0])?;
            let plen = u8::from_str_radix(f[1], 16).ok()?;
            let hop = addr(f[4])?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            Some(Route {
                destination: format!("{dest}/{plen}"),
                gateway: (!hop.is_unspecified()).then(|| hop.to_string()),
                device: f[9].to_owned(),
                reject: flags & 0x0200 != 0,
            })
        })
        .collect()
}

// === impl RecordingPrivileged ===

/// One call made to [`RecordingPrivileged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Apply { netns: Netns, family: Family },
    Read { netns: Netns, family: Family },
    Routes { netns: Netns },
    Inspect { id: String },
    List { key: String },
    Stop { id: String },
    PidsLimit { id: String, limit: i64 },
}

#[derive(Default)]
struct Recorded {
    calls: Vec<Call>,
    /// What "iptables-save" would print per namespace and family.
    tables: BTreeMap<(Netns, Family), String>,
    containers: BTreeMap<String, ContainerFacts>,
    routes: BTreeMap<Netns, Vec<Route>>,
    /// Namespaces whose apply fails (a namespace that vanished, a broken iptables).
    failing: std::collections::BTreeSet<Netns>,
    security_options: Vec<String>,
    /// Bytes each container uses, by id or name.
    memory: BTreeMap<String, u64>,
}

/// A fake that records every call and keeps a model of the rules it was given, for
/// unit tests of the policy logic. Applying a ruleset stores the lines iptables-save
/// would then print: the declared chains replace earlier ones, `-I`/`-A` lines of
/// built-in chains are added (as iptables would: `-I` at the top).
#[derive(Clone, Default)]
pub struct RecordingPrivileged {
    inner: Arc<Mutex<Recorded>>,
}

impl RecordingPrivileged {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Replaces what `read_rules` returns (to simulate tampering or a restart).
    pub fn set_table(&self, netns: &Netns, family: Family, text: &str) {
        self.lock()
            .tables
            .insert((netns.clone(), family), text.to_owned());
    }

    pub fn table(&self, netns: &Netns, family: Family) -> String {
        self.lock()
            .tables
            .get(&(netns.clone(), family))
            .cloned()
            .unwrap_or_default()
    }

    pub fn add_container(&self, facts: ContainerFacts) {
        self.lock().containers.insert(facts.id.clone(), facts);
    }

    pub fn container(&self, id: &str) -> Option<ContainerFacts> {
        self.lock().containers.get(id).cloned()
    }

    pub fn set_routes(&self, netns: &Netns, routes: Vec<Route>) {
        self.lock().routes.insert(netns.clone(), routes);
    }

    pub fn set_memory(&self, id: &str, bytes: u64) {
        self.lock().memory.insert(id.to_owned(), bytes);
    }

    pub fn set_security_options(&self, options: &[&str]) {
        self.lock().security_options = options.iter().map(|o| (*o).to_owned()).collect();
    }

    pub fn fail_apply_in(&self, netns: &Netns) {
        self.lock().failing.insert(netns.clone());
    }
}

/// The fake's model of `iptables-restore --noflush` followed by `iptables-save`.
fn restore_noflush(before: &str, rules: &str) -> String {
    let mut chains: Vec<String> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    for l in before.lines() {
        if let Some(c) = l.strip_prefix(':') {
            chains.push(c.split_whitespace().next().unwrap_or("").to_owned());
        } else if l.starts_with("-A ") {
            lines.push(l.to_owned());
        }
    }
    for l in rules.lines() {
        if let Some(c) = l.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap_or("").to_owned();
            lines.retain(|r| !r.starts_with(&format!("-A {name} ")));
            if !chains.contains(&name) {
                chains.push(name);
            }
        } else if let Some(rest) = l.strip_prefix("-A ") {
            lines.push(format!("-A {rest}"));
        } else if let Some(rest) = l.strip_prefix("-I ") {
            let mut parts = rest.splitn(3, ' ');
            let chain = parts.next().unwrap_or("");
            let _position = parts.next();
            let spec = parts.next().unwrap_or("");
            let at = lines
                .iter()
                .position(|r| r.starts_with(&format!("-A {chain} ")))
                .unwrap_or(lines.len());
            lines.insert(at, format!("-A {chain} {spec}"));
        }
    }
    let mut out = String::from("*filter\n");
    for c in chains {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

impl Privileged for RecordingPrivileged {
    fn apply_rules<'a>(
        &'a self,
        netns: &'a Netns,
        family: Family,
        rules: &'a str,
    ) -> BoxFuture<'a, Result<(), PrivError>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(Call::Apply {
                netns: netns.clone(),
                family,
            });
            if r.failing.contains(netns) {
                return Err(PrivError::EnterNetns {
                    netns: netns.to_string(),
                    reason: "No such file or directory (recorded fake)".into(),
                });
            }
            let key = (netns.clone(), family);
            let before = r.tables.get(&key).cloned().unwrap_or_default();
            r.tables.insert(key, restore_noflush(&before, rules));
            Ok(())
        })
    }

    fn read_rules<'a>(
        &'a self,
        netns: &'a Netns,
        family: Family,
    ) -> BoxFuture<'a, Result<String, PrivError>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(Call::Read {
                netns: netns.clone(),
                family,
            });
            Ok(r.tables
                .get(&(netns.clone(), family))
                .cloned()
                .unwrap_or_else(|| "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n".into()))
        })
    }

    fn read_routes<'a>(&'a self, netns: &'a Netns) -> BoxFuture<'a, Result<Vec<Route>, PrivError>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(Call::Routes {
                netns: netns.clone(),
            });
            Ok(r.routes.get(netns).cloned().unwrap_or_default())
        })
    }

    fn inspect_container<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ContainerFacts, PrivError>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(Call::Inspect { id: id.into() });
            r.containers
                .get(id)
                .cloned()
                .ok_or_else(|| PrivError::NoSuchContainer { id: id.into() })
        })
    }

    fn containers_labelled<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, PrivError>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(Call::List { key: key.into() });
            Ok(r.containers
                .values()
                .filter(|c| match key.split_once('=') {
                    Some((k, v)) => c.labels.get(k).map(String::as_str) == Some(v),
                    None => c.labels.contains_key(key),
                })
                .map(|c| c.id.clone())
                .collect())
        })
    }

    fn stop_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), PrivError>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(Call::Stop { id: id.into() });
            match r.containers.get_mut(id) {
                Some(c) => {
                    c.running = false;
                    c.pid = 0;
                    Ok(())
                }
                None => Err(PrivError::NoSuchContainer { id: id.into() }),
            }
        })
    }

    fn set_pids_limit<'a>(
        &'a self,
        id: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<(), PrivError>> {
        Box::pin(async move {
            let mut r = self.lock();
            r.calls.push(Call::PidsLimit {
                id: id.into(),
                limit,
            });
            match r.containers.get_mut(id) {
                Some(c) => {
                    c.pids_limit = Some(limit);
                    Ok(())
                }
                None => Err(PrivError::NoSuchContainer { id: id.into() }),
            }
        })
    }

    fn daemon_security_options(&self) -> BoxFuture<'_, Result<Vec<String>, PrivError>> {
        Box::pin(async move { Ok(self.lock().security_options.clone()) })
    }

    fn container_memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u64, PrivError>> {
        Box::pin(async move {
            self.lock()
                .memory
                .get(id)
                .copied()
                .ok_or_else(|| PrivError::NoSuchContainer { id: id.into() })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_routes_parse_with_prefix_gateway_and_reject() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                    *\tFEA9FEA9\t00000000\t0201\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        let r = parse_routes_v4(text);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].destination, "0.0.0.0/0");
        assert_eq!(r[0].gateway.as_deref(), Some("172.18.0.1"));
        assert_eq!(r[1].destination, "172.18.0.0/16");
        assert_eq!(r[1].gateway, None);
        assert_eq!(r[2].destination, "169.254.169.254/32");
        assert!(r[2].reject && !r[0].reject);
    }

    #[test]
    fn ipv6_routes_parse() {
        let text = "fd000ec2000000000000000000000254 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 00200200       lo\n";
        let r = parse_routes_v6(text);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].destination, "fd00:ec2::254/128");
        assert!(r[0].reject);
        assert_eq!(r[0].device, "lo");
    }

    #[test]
    fn the_fake_models_noflush_restore() {
        let first = restore_noflush(
            "",
            "*filter\n:BERTH - [0:0]\n-I OUTPUT 1 -j BERTH\n-A BERTH -j ACCEPT\nCOMMIT\n",
        );
        assert!(first.contains("-A OUTPUT -j BERTH\n"));
        let second = restore_noflush(
            &first,
            "*filter\n:BERTH - [0:0]\n-A BERTH -j DROP\nCOMMIT\n",
        );
        assert!(second.contains("-A OUTPUT -j BERTH\n"), "{second}");
        assert!(second.contains("-A BERTH -j DROP\n"));
        assert!(
            !second.contains("-A BERTH -j ACCEPT\n"),
            "declared chain is emptied"
        );
    }
}

//! `scheduler dev`: the whole system on one machine with one command.
//!
//! Builds what it needs (when run through cargo), builds the workspace and proxy
//! images from our own binaries, starts hostd (docker runtime) as a child process and
//! the scheduler (in-memory state) in this process, fills the warm pool while saying
//! so, and prints how to use it. Ctrl-C stops both; hostd removes every container and
//! the network it made.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{Config, Scheduler, store::Store};

/// Options of `scheduler dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub listen: SocketAddr,
    pub hostd_listen: SocketAddr,
    pub pool_size: usize,
    /// Seccomp profile for workspace containers; `None` keeps Docker's default.
    pub seccomp_profile: Option<PathBuf>,
    /// Templates' policies for claims.
    pub templates: crate::templates::Templates,
    /// The checkpoint store (a directory, or `s3://…`), the scheduler's and hostd's.
    pub checkpoint_store: String,
}

/// `scheduler dev`'s checkpoint directory: `$XDG_DATA_HOME/berth/checkpoints`, else
/// `~/.local/share/berth/checkpoints` (kept across runs: a conversation resumed
/// tomorrow gets its files back).
pub fn default_checkpoint_dir() -> String {
    let base = std::env::var("XDG_DATA_HOME")
        .ok()
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| {
            format!(
                "{}/.local/share",
                std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())
            )
        });
    format!("{base}/berth/checkpoints")
}

/// Why the local system could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot find our own binaries next to {0}")]
    NoBinDir(PathBuf),
    #[error("`cargo build` of the other binaries failed (exit {0})")]
    Build(i32),
    #[error("missing prerequisite: {0}")]
    Prerequisite(String),
    #[error("cannot build images: {0}")]
    Image(#[from] berth_hostd::image::ImageError),
    #[error("cannot listen on {addr}: {source} (is another Berth running? use --listen)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start hostd ({path}): {source}")]
    SpawnHostd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hostd exited early ({0}); see its log lines above")]
    HostdExited(String),
    #[error("scheduler failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the local system until Ctrl-C.
pub async fn run(opts: DevOptions) -> Result<(), DevError> {
    let exe = std::env::current_exe().map_err(|_| DevError::NoBinDir(PathBuf::from("?")))?;
    let bin_dir = exe
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| DevError::NoBinDir(exe.clone()))?;
    build_siblings(&bin_dir)?;
    ensure_busybox()?;

    say("building images from our binaries (rebuilt only when a binary changes)…");
    let started = Instant::now();
    let image_dir = image_bin_dir(&bin_dir);
    let agent = image_dir.join("workspace-agent");
    let proxy = image_dir.join("credential-proxy");
    let (ws_image, proxy_image) = tokio::task::spawn_blocking(move || {
        let ws = berth_hostd::image::ensure_image(&berth_hostd::image::workspace_spec(&agent))?;
        let px = berth_hostd::image::ensure_image(&berth_hostd::image::proxy_spec(&proxy))?;
        Ok::<_, berth_hostd::image::ImageError>((ws, px))
    })
    .await
    .map_err(|e| DevError::HostdExited(e.to_string()))??;
    say(&format!(
        "images ready in {:.1}s: {ws_image}, {proxy_image}",
        started.elapsed().as_secs_f64()
    ));

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| DevError::Listen {
            addr: opts.listen,
            source,
        })?;
    // The store is checked before hostd starts with it.
    let checkpoints = berth_checkpoint::Store::open(&opts.checkpoint_store)
        .map_err(|e| DevError::Prerequisite(e.to_string()))?;
    say(&format!("checkpoints in {}", checkpoints.url()));
    let host_token = hex::encode(rand::random::<[u8; 24]>());
    let hostd_path = bin_dir.join("hostd");
    let mut hostd = tokio::process::Command::new(&hostd_path);
    hostd
        .arg("--listen")
        .arg(opts.hostd_listen.to_string())
        .args(["--host-id", "local", "--instance-type", "local"])
        .arg("--scheduler-url")
        .arg(format!("http://{}", opts.listen))
        .arg("--workspace-image")
        .arg(&ws_image)
        .arg("--proxy-image")
        .arg(&proxy_image)
        .arg("--cleanup-on-exit")
        .arg("--checkpoint-store")
        .arg(&opts.checkpoint_store)
        .env("BERTH_HOST_TOKEN", &host_token)
        .env(
            "BERTH_LOG",
            std::env::var("BERTH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true);
    if let Some(p) = &opts.seccomp_profile {
        hostd.arg("--seccomp-profile").arg(p);
    }
    let mut hostd = hostd.spawn().map_err(|source| DevError::SpawnHostd {
        path: hostd_path.clone(),
        source,
    })?;

    let config = Config {
        pools: [("default".to_owned(), opts.pool_size)].into(),
        host_token,
        templates: opts.templates.clone(),
        checkpoints: Some(checkpoints),
        ..Config::default()
    };
    let scheduler = Scheduler::new(config, Store::memory());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(crate::run(scheduler.clone(), listener, async move {
        let _ = stop_rx.changed().await;
    }));

    say(&format!(
        "hostd on http://{} (docker runtime), scheduler on http://{} (in-memory state)",
        opts.hostd_listen, opts.listen
    ));
    let outcome = tokio::select! {
        r = report_progress(&scheduler, opts.pool_size) => r,
        status = hostd.wait() => Err(DevError::HostdExited(format!("{status:?}"))),
        _ = crate_shutdown_signal() => Ok(false),
    };
    let keep_running = match outcome {
        Ok(full) => full,
        Err(e) => {
            let _ = stop_tx.send(true);
            return Err(e);
        }
    };
    if keep_running {
        print_banner(opts.listen, opts.hostd_listen);
        tokio::select! {
            _ = crate_shutdown_signal() => {}
            status = hostd.wait() => {
                let _ = stop_tx.send(true);
                return Err(DevError::HostdExited(format!("{status:?}")));
            }
        }
    }
    say("stopping: removing every workspace container and network…");
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let Some(pid) = hostd.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(Duration::from_secs(60), hostd.wait()).await {
        Ok(_) => say("stopped; nothing left behind."),
        Err(_) => {
            say("hostd did not stop in 60 s; killed it. Leftovers carry the label berth.managed=1.")
        }
    }
    Ok(())
}

/// When started through `cargo run`, builds hostd with the same profile, and the
/// agent and the proxy with the `image` profile (small in memory: one of each sits in
/// every warm slot), so one command is enough on a fresh clone.
fn build_siblings(bin_dir: &Path) -> Result<(), DevError> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    say("building hostd…");
    let mut hostd = std::process::Command::new(&cargo);
    hostd.args(["build", "--bin", "hostd"]);
    if bin_dir.ends_with("release") {
        hostd.arg("--release");
    }
    run_cargo(&mut hostd)?;
    say("building workspace-agent and credential-proxy for the images (profile `image`)…");
    run_cargo(std::process::Command::new(&cargo).args([
        "build",
        "--profile",
        "image",
        "--bin",
        "workspace-agent",
        "--bin",
        "credential-proxy",
    ]))
}

fn run_cargo(cmd: &mut std::process::Command) -> Result<(), DevError> {
    let status = cmd.status().map_err(|_| DevError::Build(-1))?;
    if !status.success() {
        return Err(DevError::Build(status.code().unwrap_or(-1)));
    }
    Ok(())
}

/// Where the binaries for the images are: `target/image/` when built with the
/// `image` profile, else next to this binary.
fn image_bin_dir(bin_dir: &Path) -> PathBuf {
    let image = bin_dir.parent().map(|t| t.join("image"));
    match image {
        Some(dir)
            if dir.join("workspace-agent").exists() && dir.join("credential-proxy").exists() =>
        {
            dir
        }
        _ => bin_dir.to_path_buf(),
    }
}

/// The workspace image needs Debian's static busybox for its shell and coreutils.
/// Installs it when missing and we may (root, apt), so that one command is enough on
/// a fresh Debian machine; otherwise says exactly what to install.
fn ensure_busybox() -> Result<(), DevError> {
    let is_static = |p: &str| {
        std::process::Command::new("ldd")
            .arg(p)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(false)
    };
    let bb = berth_hostd::image::BUSYBOX;
    if Path::new(bb).exists() && is_static(bb) {
        return Ok(());
    }
    let can_apt = nix::unistd::getuid().is_root() && Path::new("/usr/bin/apt-get").exists();
    if !can_apt {
        return Err(DevError::Prerequisite(
            "the workspace image needs a static busybox: apt-get install busybox-static".into(),
        ));
    }
    say("installing busybox-static (apt) for the workspace image's shell…");
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let ok = apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "busybox-static"]);
    if ok && is_static(bb) {
        Ok(())
    } else {
        Err(DevError::Prerequisite(
            "could not install busybox-static; run: apt-get update && apt-get install busybox-static"
                .into(),
        ))
    }
}

/// Prints the pool's progress until it is full; false if it never fills in time.
async fn report_progress(scheduler: &Scheduler, target: usize) -> Result<bool, DevError> {
    let started = Instant::now();
    let mut last = usize::MAX;
    loop {
        let ready = scheduler
            .store()
            .pool_sizes()
            .await
            .ok()
            .and_then(|s| s.get("default").copied())
            .unwrap_or(0);
        if ready != last {
            say(&format!(
                "warm pool `default`: {ready}/{target} ready ({:.1}s)",
                started.elapsed().as_secs_f64()
            ));
            last = ready;
        }
        if ready >= target {
            return Ok(true);
        }
        if started.elapsed() > Duration::from_secs(180) {
            say("the pool did not fill in 180 s; serving anyway (cold starts will be used)");
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_banner(api: SocketAddr, hostd: SocketAddr) {
    println!(
        r#"
Berth is running.
  scheduler API + fleet page : http://{api}/
  hostd status page          : http://{hostd}/

Try it:
  curl -s -X POST http://{api}/v1/workspaces \
       -H 'content-type: application/json' -d '{{"conversation_id": "c1"}}'
  # then, with agent_url and token from that answer:
  curl -sN -X POST "$AGENT_URL/v1/exec" -H "authorization: Bearer $TOKEN" \
       -H 'content-type: application/json' -d '{{"cmd": ["echo", "hello"]}}'
  curl -s -X DELETE http://{api}/v1/workspaces/$WORKSPACE_ID

Ctrl-C stops everything and removes every container and network it made.
"#
    );
}

fn say(msg: &str) {
    println!("berth: {msg}");
}

async fn crate_shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
}

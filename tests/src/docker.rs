//! Docker helpers for tests: run labels, leftover sweeping, and our images.
//!
//! Every container and network a test run makes carries
//! `berth.test-run=<pid>-<start time>`. A label whose process is gone (or whose pid
//! now belongs to another process) marks a crashed run's leftovers, which
//! [`sweep_leftovers`] removes. The CLI is used here rather than bollard so that
//! cleanup also works from `Drop`, outside any async runtime.

use std::process::Command;
use std::sync::OnceLock;

pub use berth_wire::labels::TEST_RUN;

/// This process's run id: pid and kernel start time, so a reused pid never matches.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}-{}", start_time(pid).unwrap_or_default())
    })
}

/// Field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it start past ')'.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether a run id names a process that is still running.
pub fn run_is_alive(id: &str) -> bool {
    let Some((pid, start)) = id.split_once('-') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    start_time(pid).as_deref() == Some(start)
}

fn docker(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes containers and networks of test runs whose process is gone. Returns how
/// many objects were removed.
pub fn sweep_leftovers() -> usize {
    let mut removed = 0;
    let label = format!("label={TEST_RUN}");
    let fmt = format!("{{{{.ID}}}} {{{{.Label \"{TEST_RUN}\"}}}}");
    for line in docker(&["ps", "-a", "--filter", &label, "--format", &fmt]).lines() {
        if let Some((id, run)) = line.split_once(' ')
            && !run_is_alive(run)
        {
            docker(&["rm", "-f", "-v", id]);
            removed += 1;
        }
    }
    let fmt = format!("{{{{.ID}}}} {{{{.Label \"{TEST_RUN}\"}}}}");
    for line in docker(&["network", "ls", "--filter", &label, "--format", &fmt]).lines() {
        if let Some((id, run)) = line.split_once(' ')
            && !run_is_alive(run)
        {
            docker(&["network", "rm", id]);
            removed += 1;
        }
    }
    removed
}

/// Removes every container, then every network, carrying `key=value`.
pub fn remove_labelled(key: &str, value: &str) {
    let filter = format!("label={key}={value}");
    let ids = docker(&["ps", "-aq", "--filter", &filter]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids);
        docker(&args);
    }
    let nets = docker(&["network", "ls", "-q", "--filter", &filter]);
    for id in nets.split_whitespace() {
        docker(&["network", "rm", id]);
    }
}

/// Containers (ids) carrying `key=value`, running or not.
pub fn containers_labelled(key: &str, value: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label={key}={value}")])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A bollard client on the local engine, API version negotiated.
pub async fn connect() -> bollard::Docker {
    bollard::Docker::connect_with_local_defaults()
        .expect("docker socket")
        .negotiate_version()
        .await
        .expect("docker engine reachable")
}

/// The workspace and proxy images, built once per test process from the binaries in
/// target/<profile> (`cargo build --bins`, which tests/run.sh does first).
pub fn images() -> &'static (String, String) {
    static IMAGES: OnceLock<(String, String)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        sweep_leftovers();
        let dir = crate::bin_dir();
        let agent = dir.join("workspace-agent");
        let proxy = dir.join("credential-proxy");
        for b in [&agent, &proxy] {
            assert!(
                b.exists(),
                "{} is missing: run `cargo build --bins` first (tests/run.sh does)",
                b.display()
            );
        }
        let ws = berth_hostd::image::ensure_image(&berth_hostd::image::workspace_spec(&agent))
            .expect("workspace image");
        let px = berth_hostd::image::ensure_image(&berth_hostd::image::proxy_spec(&proxy))
            .expect("proxy image");
        (ws, px)
    })
}

/// A Docker network made for one test (labelled with the test run, so a crashed
/// run's is swept), removed on drop.
pub struct TestNetwork {
    pub name: String,
    /// Its gateway: this machine's own address on it.
    pub gateway: String,
}

impl TestNetwork {
    /// Makes the network (it exists until dropped).
    pub fn create() -> Self {
        let name = format!(
            "berth-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let label = format!("{}={}", TEST_RUN, run_id());
        let made = std::process::Command::new("docker")
            .args(["network", "create", "--label", &label, &name])
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let out = std::process::Command::new("docker")
            .args([
                "network",
                "inspect",
                &name,
                "-f",
                "{{(index .IPAM.Config 0).Gateway}}",
            ])
            .output()
            .unwrap();
        let gateway = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            gateway.parse::<std::net::IpAddr>().is_ok(),
            "gateway {gateway:?}"
        );
        Self { name, gateway }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

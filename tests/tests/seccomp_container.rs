//! Threat 15, the seccomp part: inside a real container started the way hostd starts a
//! workspace (`seccomp=workspace.json`, every capability dropped, no-new-privileges,
//! read-only root), `seccomp-probe` tries every call the profile refuses — `unshare -U`,
//! keyctl, bpf, io_uring, userfaultfd, perf_event_open, ptrace, mount, AF_ALG and
//! AF_VSOCK sockets, clone3 (ENOSYS)... — and the ordinary work a developer needs
//! (file I/O, fork/exec, threads, loopback sockets). Every refusal must carry the
//! profile's errno and every piece of work must succeed.
//!
//! The same probe under Docker's default profile is the control: there some of those
//! calls reach the kernel, which proves the refusals above come from our profile and
//! not from dropped capabilities.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use berth_hostd::image::{ImageSpec, ensure_image};
use berth_tests::docker::{TEST_RUN, remove_labelled, run_id, sweep_leftovers};
use serde_json::Value;

const PROBE_IN_IMAGE: &str = "/usr/local/bin/seccomp-probe";

fn workspace_profile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../seccomp/workspace.json")
}

/// The probe image: the binary and the libraries it links, nothing else.
fn probe_image() -> String {
    let probe = berth_tests::bin_dir().join("seccomp-probe");
    assert!(
        probe.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run.sh does)",
        probe.display()
    );
    ensure_image(&ImageSpec {
        repo: "berth/seccomp-probe".into(),
        files: vec![(probe, PROBE_IN_IMAGE.into())],
        with_busybox: false,
        dirs: vec!["/tmp".into()],
        user: "1000:1000".into(),
        entrypoint: vec![PROBE_IN_IMAGE.into()],
    })
    .expect("probe image builds")
}

/// Removes the probe's containers however the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_labelled("berth.seccomp-probe", &self.0);
    }
}

/// Runs the probe in a hardened container; `seccomp` is a profile path or `None` for
/// Docker's default. Returns the exit code and the parsed JSON report.
fn run_probe(seccomp: Option<&Path>, tag: &str) -> (i32, Value) {
    sweep_leftovers();
    let image = probe_image();
    let label = format!("{}-{tag}", run_id());
    let _cleanup = Cleanup(label.clone());
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--rm", "--label", "berth.test=1"])
        .args(["--label", &format!("{TEST_RUN}={}", run_id())])
        .args(["--label", &format!("berth.seccomp-probe={label}")])
        .args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
        .args(["--read-only", "--tmpfs", "/tmp", "--network", "none"])
        .args(["--pids-limit", "64", "--memory", "256m"]);
    if let Some(profile) = seccomp {
        cmd.arg("--security-opt")
            .arg(format!("seccomp={}", profile.display()));
    }
    let mut child = cmd
        .arg(&image)
        .args(["--scratch", "/tmp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker run starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("docker run is waitable").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the probe container did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("docker run output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "probe printed no report ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn refused<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["refused"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("the probe did not try {name}"))
}

/// `Some(errno)` when the call failed, `None` when it succeeded.
fn errno_of(report: &Value, name: &str) -> Option<i64> {
    let outcome = &refused(report, name)["outcome"];
    assert!(
        outcome["killed_by_signal"].is_null(),
        "{name} killed the probe: {outcome}"
    );
    outcome["errno"].as_i64()
}

#[test]
fn workspace_profile_refuses_the_dangerous_calls_in_a_real_container() {
    let (code, report) = run_probe(Some(&workspace_profile()), "workspace");

    let status = &report["status"];
    assert_eq!(
        status["seccomp"], "2",
        "the container runs in seccomp filter mode"
    );
    assert_eq!(status["no_new_privs"], "1");
    assert_eq!(status["cap_eff"], "0000000000000000", "no capabilities");

    let all = report["refused"].as_array().expect("refused list");
    assert!(all.len() >= 40, "only {} calls probed", all.len());
    for r in all {
        let Some(outcome) = r["outcome"].as_object() else {
            continue; // the syscall does not exist on this architecture
        };
        assert_eq!(
            (outcome["ret"].as_i64(), outcome["errno"].as_i64()),
            (Some(-1), r["expected_errno"].as_i64()),
            "{} must be refused with errno {}: {r}",
            r["name"],
            r["expected_errno"]
        );
    }
    let (eperm, enosys, eprotonosupport) = (Some(1), Some(38), Some(93));
    for name in [
        "unshare(CLONE_NEWUSER)",
        "clone(CLONE_NEWUSER)",
        "keyctl(GET_KEYRING_ID, session)",
        "add_key(user, process keyring)",
        "bpf(invalid command)",
        "userfaultfd(invalid flags)",
        "perf_event_open(NULL attr)",
        "ptrace(PEEKDATA, no such pid)",
        "process_vm_readv(self, nothing)",
        "mount(bad fstype pointer)",
        "socket(AF_ALG)",
        "socket(AF_VSOCK)",
        "personality(ADDR_NO_RANDOMIZE)",
    ] {
        assert_eq!(errno_of(&report, name), eperm, "{name}");
    }
    assert_eq!(errno_of(&report, "clone3(NULL, 0)"), enosys);
    assert_eq!(errno_of(&report, "io_uring_setup(1, bad params)"), enosys);
    assert_eq!(
        errno_of(&report, "socket(AF_NETLINK, NETLINK_AUDIT)"),
        eprotonosupport
    );

    let work = report["work"].as_array().expect("work list");
    for w in work {
        assert_eq!(
            w["ok"], true,
            "{} failed in the container: {}",
            w["name"], w["detail"]
        );
    }
    for needed in [
        "file I/O in the scratch directory",
        "fork + execve",
        "spawn a process with pipes (posix_spawn)",
        "threads",
        "TCP over 127.0.0.1",
        "unix sockets: pair and listener",
    ] {
        assert!(
            work.iter().any(|w| w["name"] == needed),
            "the probe did no {needed}"
        );
    }
    assert_eq!(code, 0, "the probe reports no deviation");
}

#[test]
fn docker_default_profile_lets_through_what_ours_refuses() {
    let (_, report) = run_probe(None, "default");
    assert_eq!(report["status"]["seccomp"], "2");
    assert_eq!(report["status"]["cap_eff"], "0000000000000000");
    // Every Docker release's default allows these to a capless container, so here the
    // kernel answers: our refusals of them come from workspace.json, not from caps.
    for (name, ours) in [
        ("ptrace(PEEKDATA, no such pid)", 1),
        ("socket(AF_ALG)", 1),
        ("socketpair(AF_INET)", 1),
        ("personality(UNAME26)", 1),
        ("socket(AF_NETLINK, NETLINK_AUDIT)", 93),
    ] {
        assert_ne!(
            errno_of(&report, name),
            Some(ours),
            "{name} is refused even under Docker's default profile"
        );
    }
}

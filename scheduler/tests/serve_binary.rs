//! The `scheduler serve` binary itself: it will not serve an open API by accident,
//! and SIGTERM (ECS stopping its task) ends it cleanly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn serve(extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scheduler"));
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--host-token",
        "host-token-0123456789",
    ])
    .args(extra)
    .env_remove("BERTH_API_TOKEN")
    .env_remove("BERTH_INSECURE_NO_AUTH")
    .env("BERTH_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

#[test]
fn without_a_backend_token_it_refuses_to_start_and_says_how() {
    let out = serve(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BERTH_API_TOKEN"), "{err}");
    let short = serve(&["--api-token", "short"]).output().unwrap();
    assert_eq!(short.status.code(), Some(64));
    // The operator's token is required too, and must not be the backend's.
    let no_op = serve(&["--api-token", "backend-token-0123456789"])
        .output()
        .unwrap();
    assert_eq!(no_op.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&no_op.stderr).contains("BERTH_OPERATOR_TOKEN"));
    let same = serve(&[
        "--api-token",
        "backend-token-0123456789",
        "--operator-token",
        "backend-token-0123456789",
    ])
    .output()
    .unwrap();
    assert_eq!(same.status.code(), Some(64));
}

#[test]
fn insecure_mode_warns_and_sigterm_exits_cleanly() {
    let mut child = serve(&["--insecure-no-auth"]).spawn().unwrap();
    // Give it time to start (it binds at once; the reconcilers tick every 500 ms).
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(800));
    assert!(child.try_wait().unwrap().is_none(), "it serves");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(status.success(), "exit {status:?}: {logs}");
    assert!(logs.contains("WITHOUT a backend token"), "{logs}");
    assert!(logs.contains("SIGTERM: draining"), "{logs}");
}

//! hostd keeps working with its own filter on: a forked child starts a tokio runtime
//! like hostd's, installs the filter on all threads, then does what hostd's loops do —
//! an HTTP round trip over a unix socket (Docker's API), a TCP server and client (the
//! status endpoint, outbound calls), DNS, spawning processes (iptables), reading /proc,
//! entering a network namespace — and reports each step. Separate children check that
//! the filter really is installed: a forbidden call kills the process (enforce mode),
//! is only logged (audit mode), and clone3 answers ENOSYS.
#![allow(unsafe_code)]

mod common;

use std::{path::Path, time::Duration};

use berth_seccomp::hostd::{self, HostdFilterMode};
use common::{ChildFailure, in_child, is_root, scratch_dir};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
};

type Steps = Vec<(String, Result<String, String>)>;

const SIGSYS: i32 = 31;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime starts")
}

async fn http_over_unix(dir: &Path) -> Result<String, String> {
    let path = dir.join("docker.sock");
    let listener = UnixListener::bind(&path).map_err(|e| format!("bind: {e}"))?;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut req = vec![0u8; 1024];
        let n = s.read(&mut req).await?;
        let body = if req[..n].starts_with(b"GET /_ping") {
            "OK"
        } else {
            "??"
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await
    });
    let mut c = UnixStream::connect(&path)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    c.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut resp = String::new();
    c.read_to_string(&mut resp)
        .await
        .map_err(|e| format!("recv: {e}"))?;
    server
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if resp.ends_with("\r\n\r\nOK") {
        Ok("GET /_ping -> 200 OK".into())
    } else {
        Err(format!("unexpected response {resp:?}"))
    }
}

async fn tcp_server_and_client() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await?;
        s.write_all(&buf[..n]).await
    });
    let mut c = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    c.write_all(b"GET /status")
        .await
        .map_err(|e| e.to_string())?;
    let mut echo = [0u8; 11];
    c.read_exact(&mut echo).await.map_err(|e| e.to_string())?;
    server
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(format!("echo via {addr}"))
}

async fn spawn(program: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("spawn {program}: {e}"))?;
    if out.status.success() {
        Ok(format!(
            "{program} {args:?}: {} bytes out",
            out.stdout.len()
        ))
    } else {
        Err(format!(
            "{program} {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn enter_own_netns() -> Result<String, String> {
    let f = std::fs::File::open("/proc/self/ns/net").map_err(|e| format!("open: {e}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: setns on a descriptor we hold open; entering our own network namespace
    // changes nothing but proves the call is allowed.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok("setns into /proc/self/ns/net".into())
    } else {
        Err(format!("setns: {}", std::io::Error::last_os_error()))
    }
}

fn hostd_workload(mode: HostdFilterMode, dir: std::path::PathBuf) -> Steps {
    let rt = runtime();
    rt.block_on(async move {
        let mut steps: Steps = Vec::new();
        let mut step = |name: &str, r: Result<String, String>| steps.push((name.to_owned(), r));
        step(
            "install filter on all threads",
            hostd::apply_hostd_filter_in(mode)
                .map(|()| "installed".into())
                .map_err(|e| e.to_string()),
        );
        step("HTTP over a unix socket", http_over_unix(&dir).await);
        step("TCP server and client", tcp_server_and_client().await);
        step(
            "DNS lookup (getaddrinfo on the blocking pool)",
            tokio::net::lookup_host("localhost:80")
                .await
                .map(|a| format!("{} addresses", a.count()))
                .map_err(|e| e.to_string()),
        );
        step(
            "spawn a child process",
            spawn("/bin/sh", &["-c", "exit 0"]).await,
        );
        if is_root() && Path::new("/usr/sbin/iptables").exists() {
            step(
                "iptables -S",
                spawn("/usr/sbin/iptables", &["-w", "-S"]).await,
            );
            step(
                "ip6tables -S",
                spawn("/usr/sbin/ip6tables", &["-w", "-S"]).await,
            );
        }
        let status = tokio::fs::read_to_string("/proc/self/status")
            .await
            .map_err(|e| e.to_string());
        step(
            "read /proc/self/status",
            status.and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Seccomp:"))
                    .map(|l| l.split_whitespace().last().unwrap_or("").to_owned())
                    .ok_or_else(|| "no Seccomp line".to_owned())
            }),
        );
        if is_root() {
            step(
                "setns in a dedicated thread",
                tokio::task::spawn_blocking(enter_own_netns)
                    .await
                    .unwrap_or_else(|e| Err(e.to_string())),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        step("timers", Ok("slept 20ms".into()));
        eprintln!("hostd workload: logging to stderr still works");
        steps
    })
}

fn assert_all_ok(steps: &Steps) {
    for (name, result) in steps {
        assert!(result.is_ok(), "{name}: {result:?}");
    }
}

#[test]
fn hostd_main_loops_work_with_the_filter_on() {
    let dir = scratch_dir("hostd");
    let moved = dir.clone();
    let result = in_child(move || hostd_workload(HostdFilterMode::Enforce, moved));
    let _ = std::fs::remove_dir_all(&dir);
    let steps = match result {
        Ok(steps) => steps,
        Err(ChildFailure::Signal(SIGSYS)) => panic!(
            "hostd's filter killed the workload (SIGSYS): a syscall is missing from \
             seccomp/hostd.json; rerun with HostdFilterMode::Audit and read the audit log"
        ),
        Err(e) => panic!("workload child failed: {e:?}"),
    };
    for (name, result) in &steps {
        eprintln!("{name}: {result:?}");
    }
    assert_all_ok(&steps);
    let seccomp = steps
        .iter()
        .find(|(n, _)| n == "read /proc/self/status")
        .unwrap();
    assert_eq!(
        seccomp.1,
        Ok("2".to_owned()),
        "Seccomp: 2 in /proc/self/status"
    );
    if is_root() {
        assert!(
            steps
                .iter()
                .any(|(n, _)| n == "setns in a dedicated thread")
        );
    }
}

fn keyctl_after_filter(mode: HostdFilterMode) -> Result<(i64, Option<i32>), ChildFailure> {
    in_child(move || {
        hostd::apply_hostd_filter_in(mode).expect("filter installs");
        // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) only reads.
        let ret = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
        (ret, std::io::Error::last_os_error().raw_os_error())
    })
}

#[test]
fn a_call_outside_the_list_kills_hostd() {
    match keyctl_after_filter(HostdFilterMode::Enforce) {
        Err(ChildFailure::Signal(sig)) => assert_eq!(sig, SIGSYS, "killed by seccomp"),
        other => panic!("keyctl should have killed the process, got {other:?}"),
    }
}

#[test]
fn audit_mode_logs_instead_of_killing() {
    let (ret, errno) = keyctl_after_filter(HostdFilterMode::Audit).expect("audit mode lets it run");
    assert!(
        ret >= 0 || errno != Some(libc::EPERM),
        "keyctl reached the kernel: {ret} {errno:?}"
    );
}

#[test]
fn clone3_answers_enosys_so_glibc_falls_back() {
    let errno = in_child(|| {
        hostd::apply_hostd_filter().expect("filter installs");
        // SAFETY: clone3 with a null argument block creates nothing in any case.
        let rc = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
        (rc, std::io::Error::last_os_error().raw_os_error())
    })
    .expect("child survives clone3");
    assert_eq!(errno, (-1, Some(libc::ENOSYS)));
}

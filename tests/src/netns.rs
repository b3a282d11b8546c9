//! Network namespaces the tests make, with no route out.
//!
//! Each is named `bt-<run id>-<n>` (the run id of [`crate::docker::run_id`]), so a
//! crashed run's namespaces are found and deleted by the next run
//! ([`sweep_leftovers`]); [`TestNetns`] deletes its own on drop. Inside, a test may
//! put the metadata addresses on its loopback and answer on them with
//! [`TestNetns::listen`]: traffic to them then never leaves the namespace, which has
//! no interface but loopback.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

/// A namespace that exists until dropped.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    /// Makes a namespace with loopback up and nothing else.
    pub fn new() -> Self {
        let name = format!(
            "bt-{}-{}",
            crate::docker::run_id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = ip(&["netns", "add", &name]);
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        let ns = Self { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace file, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs a command inside; returns its output.
    pub fn exec(&self, argv: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("ip netns exec")
    }

    /// Runs a command inside and panics if it fails; returns its stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Puts `addrs` (IPv4 `/32` or IPv6 `/128`) on the namespace's loopback, so that
    /// listeners can answer on them without any route leaving the namespace.
    pub fn add_local_addresses(&self, addrs: &[&str]) {
        for a in addrs {
            if a.contains(':') {
                self.exec_ok(&["ip", "-6", "addr", "add", &format!("{a}/128"), "dev", "lo"]);
            } else {
                self.exec_ok(&["ip", "addr", "add", &format!("{a}/32"), "dev", "lo"]);
            }
        }
    }

    /// Whether a TCP connection from `uid` inside to `addr:port` is accepted within
    /// two seconds (one attempt). The client binds to loopback (127.0.0.1 or ::1):
    /// in a real task the metadata service's replies arrive from outside, so the
    /// fake listener's replies must not be addressed to the metadata address itself,
    /// where the namespace's own OUTPUT rules would judge them.
    pub fn connects_as(&self, uid: u32, addr: &str, port: u16) -> bool {
        let source = if addr.contains(':') {
            "::1"
        } else {
            "127.0.0.1"
        };
        let script = format!(
            "import os,socket,sys\nos.setgroups([]); os.setgid({uid}); os.setuid({uid})\n\
             try:\n    socket.create_connection(('{addr}', {port}), timeout=2, source_address=('{source}', 0)).close()\nexcept OSError as e:\n    print(e, file=sys.stderr); sys.exit(1)\n"
        );
        self.exec(&["/usr/bin/python3", "-c", &script])
            .status
            .success()
    }

    /// A TCP listener inside on `addr:port` that accepts and closes connections until
    /// `limit` passes; returns the thread, which yields how many it accepted.
    pub fn listen(&self, addr: &str, port: u16, limit: Duration) -> std::thread::JoinHandle<usize> {
        let script = format!(
            "import socket,time\ns=socket.socket(socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('{addr}', {port}))\ns.listen(16)\n\
             s.settimeout(0.2)\nend=time.time()+{secs}\nn=0\nprint('listening', flush=True)\n\
             while time.time()<end:\n    try:\n        c,_=s.accept(); n+=1; c.close()\n    except OSError:\n        pass\nprint(n)\n",
            secs = limit.as_secs_f64()
        );
        let name = self.name.clone();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "/usr/bin/python3",
                "-u",
                "-c",
                &script,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start listener");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut first).expect("listener output");
        assert_eq!(
            first.trim(),
            "listening",
            "listener on {addr}:{port} did not start"
        );
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
            let _ = child.wait();
            rest.trim().parse().unwrap_or(0)
        })
    }
}

impl Default for TestNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Deletes namespaces of test runs whose process is gone; returns how many.
pub fn sweep_leftovers() -> usize {
    let list = String::from_utf8_lossy(&ip(&["netns", "list"]).stdout).into_owned();
    let mut removed = 0;
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("bt-") else {
            continue;
        };
        // bt-<pid>-<start>-<n>
        let run = rest.rsplit_once('-').map(|(run, _)| run).unwrap_or("");
        if !crate::docker::run_is_alive(run) {
            let _ = ip(&["netns", "del", name]);
            removed += 1;
        }
    }
    removed
}

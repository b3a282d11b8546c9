//! The probe: calls a workspace must not make, and work it must still be able to do.
//!
//! A profile nobody has run is a guess. This module makes each refused call for real,
//! with arguments chosen so that a call the filter lets through is harmless *and*
//! answers differently from the profile's errno (a bad pointer gives `EFAULT`, an
//! invalid flag `EINVAL`, a missing path `ENOENT`) — so "refused by seccomp" can be
//! told apart from "refused by the kernel" wherever the kernel would not refuse on its
//! own. Each refused call runs in a forked child, so a call that unexpectedly succeeds
//! (a new user namespace, an odd personality) cannot change the probe itself.
//!
//! The same checks run in three places: `seccomp-probe` inside a real container started
//! with `workspace.json`; a forked test process that installed the translated filter;
//! and (unfiltered, as root) the control run that proves the arguments reach the kernel.
#![allow(unsafe_code)]

use std::{
    ffi::{CStr, CString},
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    os::unix::{ffi::OsStrExt, net::UnixStream},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::syscalls::Arch;

const EPERM: i32 = libc::EPERM;
const ENOSYS: i32 = libc::ENOSYS;
const EPROTONOSUPPORT: i32 = libc::EPROTONOSUPPORT;

/// An argument of a probed call.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Int(u64),
    /// A NUL-terminated string.
    Str(&'static CStr),
    Null,
    /// An address no process maps (1): the kernel answers `EFAULT` if it reads it.
    BadPtr,
    /// A writable 64-byte buffer (socketpair's fds and the like).
    Buf,
    /// The calling process's pid (a target the kernel lets a process act on itself).
    OwnPid,
}

/// One call the workspace profile must refuse.
#[derive(Debug, Clone, Copy)]
pub struct RefusedCall {
    /// What is tried, for people: `unshare(CLONE_NEWUSER)`.
    pub name: &'static str,
    pub syscall: &'static str,
    pub args: [Arg; 6],
    /// The errno `workspace.json` answers with.
    pub errno: i32,
    /// As root without a filter, the kernel is known to answer something other than
    /// `errno` (so the control run can assert the call really reached it). False where
    /// a sysctl (`kexec_load_disabled`, `modules_disabled`) may make the kernel say EPERM.
    pub control: bool,
}

/// What a refused call returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The raw return value (-1 on error).
    pub ret: i64,
    pub errno: Option<i32>,
    /// Set when the process running the call died of a signal (e.g. `SIGSYS`).
    pub killed_by_signal: Option<i32>,
}

/// A refused call's line in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedResult {
    pub name: String,
    pub syscall: String,
    pub expected_errno: i32,
    /// `None` when this architecture has no such syscall (e.g. `modify_ldt` on arm64).
    pub outcome: Option<Outcome>,
}

/// An ordinary piece of work's line in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The probe's findings, printed as JSON by `seccomp-probe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub arch: String,
    /// `Seccomp`, `NoNewPrivs` and `CapEff` from `/proc/self/status`.
    pub status: ProcStatus,
    pub refused: Vec<RefusedResult>,
    pub work: Vec<WorkResult>,
}

/// The lines of `/proc/self/status` that show the hardening.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcStatus {
    pub seccomp: String,
    pub seccomp_filters: String,
    pub no_new_privs: String,
    pub cap_eff: String,
}

/// Where the ordinary work happens.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// A writable directory for file I/O (`/tmp` in a container).
    pub scratch: PathBuf,
    /// A binary that exits with status N when run as `<binary> --exit-with N`: the
    /// probe itself (`/proc/self/exe`) unless the caller is not the probe binary.
    pub exec_target: PathBuf,
}

/// Every refused call the probe tries, in order.
// One call per line reads as the table it is.
#[rustfmt::skip]
pub fn refused_calls() -> Vec<RefusedCall> {
    use Arg::{BadPtr, Buf, Int, Null, OwnPid, Str};
    const NO: Arg = Arg::Int(0);
    const NOWHERE: Arg = Arg::Str(c"/nonexistent-berth-probe");
    const MINUS_ONE: Arg = Arg::Int(u64::MAX);
    let call = |name, syscall, args, errno, control| RefusedCall { name, syscall, args, errno, control };
    let int = |v: i32| Int(v as u64);
    let sigchld = libc::SIGCHLD as u64;
    vec![
        call("unshare(CLONE_NEWUSER)", "unshare", [int(libc::CLONE_NEWUSER), NO, NO, NO, NO, NO], EPERM, true),
        call("unshare(CLONE_NEWNS)", "unshare", [int(libc::CLONE_NEWNS), NO, NO, NO, NO, NO], EPERM, true),
        call("clone(CLONE_NEWUSER)", "clone", [Int(libc::CLONE_NEWUSER as u64 | sigchld), NO, NO, NO, NO, NO], EPERM, true),
        call("clone(CLONE_NEWNET)", "clone", [Int(libc::CLONE_NEWNET as u64 | sigchld), NO, NO, NO, NO, NO], EPERM, true),
        call("clone3(NULL, 0)", "clone3", [Null, NO, NO, NO, NO, NO], ENOSYS, true),
        call("setns(-1, CLONE_NEWNET)", "setns", [MINUS_ONE, int(libc::CLONE_NEWNET), NO, NO, NO, NO], EPERM, true),
        call("keyctl(GET_KEYRING_ID, session)", "keyctl", [Int(0), int(-3), NO, NO, NO, NO], EPERM, true),
        call("add_key(user, process keyring)", "add_key", [Str(c"user"), Str(c"berth-probe"), Str(c"x"), Int(1), int(-2), NO], EPERM, true),
        call("request_key(user)", "request_key", [Str(c"user"), Str(c"berth-probe-absent"), Null, Int(0), NO, NO], EPERM, true),
        call("bpf(invalid command)", "bpf", [Int(0xffff), Null, Int(0), NO, NO, NO], EPERM, true),
        call("perf_event_open(NULL attr)", "perf_event_open", [Null, Int(0), MINUS_ONE, MINUS_ONE, Int(0), NO], EPERM, true),
        call("userfaultfd(invalid flags)", "userfaultfd", [Int(1 | 2), NO, NO, NO, NO, NO], EPERM, true),
        call("io_uring_setup(1, bad params)", "io_uring_setup", [Int(1), BadPtr, NO, NO, NO, NO], ENOSYS, true),
        call("io_uring_enter(-1)", "io_uring_enter", [MINUS_ONE, Int(0), Int(0), Int(0), Null, Int(0)], ENOSYS, true),
        call("io_uring_register(-1)", "io_uring_register", [MINUS_ONE, Int(0), Null, Int(0), NO, NO], ENOSYS, true),
        call("ptrace(PEEKDATA, no such pid)", "ptrace", [Int(libc::PTRACE_PEEKDATA as u64), Int(0x7fff_fff0), Null, Null, NO, NO], EPERM, true),
        call("process_vm_readv(self, nothing)", "process_vm_readv", [OwnPid, Null, Int(0), Null, Int(0), Int(0)], EPERM, true),
        call("process_vm_writev(self, nothing)", "process_vm_writev", [OwnPid, Null, Int(0), Null, Int(0), Int(0)], EPERM, true),
        call("kcmp(self, self, KCMP_FILE, 0, 0)", "kcmp", [OwnPid, OwnPid, Int(0), Int(0), Int(0), NO], EPERM, true),
        call("pidfd_getfd(-1)", "pidfd_getfd", [MINUS_ONE, Int(0), Int(0), NO, NO, NO], EPERM, true),
        call("mount(bad fstype pointer)", "mount", [Null, NOWHERE, BadPtr, Int(0), Null, NO], EPERM, true),
        call("umount2(invalid flags)", "umount2", [NOWHERE, Int(0x8000_0000), NO, NO, NO, NO], EPERM, true),
        call("pivot_root(missing paths)", "pivot_root", [NOWHERE, NOWHERE, NO, NO, NO, NO], EPERM, true),
        call("chroot(missing path)", "chroot", [NOWHERE, NO, NO, NO, NO, NO], EPERM, true),
        call("fsopen(bad name pointer)", "fsopen", [BadPtr, Int(0), NO, NO, NO, NO], EPERM, true),
        call("open_by_handle_at(-1, bad handle)", "open_by_handle_at", [MINUS_ONE, BadPtr, Int(0), NO, NO, NO], EPERM, true),
        call("socket(AF_ALG)", "socket", [int(libc::AF_ALG), int(libc::SOCK_SEQPACKET), Int(0), NO, NO, NO], EPERM, true),
        call("socket(AF_VSOCK)", "socket", [int(libc::AF_VSOCK), int(libc::SOCK_STREAM), Int(0), NO, NO, NO], EPERM, true),
        call("socket(AF_PACKET)", "socket", [int(libc::AF_PACKET), int(libc::SOCK_RAW), Int(0), NO, NO, NO], EPERM, true),
        call("socket(AF_NETLINK, NETLINK_AUDIT)", "socket", [int(libc::AF_NETLINK), int(libc::SOCK_RAW), int(libc::NETLINK_AUDIT), NO, NO, NO], EPROTONOSUPPORT, true),
        call("socketpair(AF_INET)", "socketpair", [int(libc::AF_INET), int(libc::SOCK_STREAM), Int(0), Buf, NO, NO], EPERM, true),
        call("personality(ADDR_NO_RANDOMIZE)", "personality", [int(libc::ADDR_NO_RANDOMIZE), NO, NO, NO, NO, NO], EPERM, true),
        call("personality(UNAME26)", "personality", [Int(0x0002_0000), NO, NO, NO, NO, NO], EPERM, true),
        call("memfd_secret(0)", "memfd_secret", [Int(0), NO, NO, NO, NO, NO], EPERM, true),
        call("modify_ldt(read, 0 bytes)", "modify_ldt", [Int(0), Null, Int(0), NO, NO, NO], EPERM, true),
        call("iopl(0)", "iopl", [Int(0), NO, NO, NO, NO, NO], EPERM, true),
        call("syslog(SIZE_BUFFER)", "syslog", [Int(10), Null, Int(0), NO, NO, NO], EPERM, true),
        call("settimeofday(NULL, NULL)", "settimeofday", [Null, Null, NO, NO, NO, NO], EPERM, true),
        call("reboot(bad magic)", "reboot", [Int(0), Int(0), Int(0), Null, NO, NO], EPERM, true),
        call("kexec_load(invalid flags)", "kexec_load", [Int(0), Int(0), Null, Int(0x8000), NO, NO], EPERM, false),
        call("finit_module(-1)", "finit_module", [MINUS_ONE, Str(c""), Int(0), NO, NO, NO], EPERM, false),
        call("delete_module(absent)", "delete_module", [Str(c"berth_probe_absent"), int(libc::O_NONBLOCK), NO, NO, NO, NO], EPERM, false),
    ]
}

// === impl RefusedCall ===

impl RefusedCall {
    /// The integer view of the arguments, as a BPF filter sees them (pointers as 0).
    pub fn model_args(&self) -> [u64; 6] {
        self.args.map(|a| match a {
            Arg::Int(v) => v,
            Arg::BadPtr => 1,
            Arg::Str(_) | Arg::Null | Arg::Buf | Arg::OwnPid => 0,
        })
    }

    /// Makes the call in a forked child and reports what it returned; `None` if this
    /// architecture has no such syscall.
    pub fn run(&self) -> Option<Outcome> {
        let nr = Arch::native()?.number(self.syscall)?;
        let mut buf = [0u64; 8];
        let mut args = self.args.map(|a| match a {
            Arg::Int(v) => v as libc::c_long,
            Arg::Str(s) => s.as_ptr() as libc::c_long,
            Arg::Null => 0,
            Arg::BadPtr => 1,
            Arg::Buf => buf.as_mut_ptr() as libc::c_long,
            // Filled in by the child, which is the process the call acts on.
            Arg::OwnPid => 0,
        });
        let own_pid: Vec<usize> = (0..6)
            .filter(|&i| matches!(self.args[i], Arg::OwnPid))
            .collect();
        let creates_process = matches!(self.syscall, "clone" | "clone3");
        Some(in_child(|| {
            for &i in &own_pid {
                // SAFETY: getpid has no preconditions and is async-signal-safe.
                args[i] = libc::c_long::from(unsafe { libc::getpid() });
            }
            // SAFETY: a raw syscall with integer arguments or pointers to live buffers
            // and static strings (or deliberately invalid ones the kernel checks); the
            // child that runs it only reports the result and exits.
            let ret =
                unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if creates_process && ret == 0 {
                // We are a process the call should never have created: leave at once.
                // SAFETY: _exit is async-signal-safe and ends only this process.
                unsafe { libc::_exit(0) };
            }
            if creates_process && ret > 0 {
                // SAFETY: reaping our own child; a null status pointer is allowed.
                unsafe { libc::waitpid(ret as libc::pid_t, std::ptr::null_mut(), 0) };
            }
            (ret, if ret == -1 { errno } else { 0 })
        }))
    }
}

/// Runs `f` in a forked child and returns its `(ret, errno)`, or the signal that killed
/// the child. Only async-signal-safe work may happen in `f` (the parent may have
/// threads); the child leaves with `_exit`, never returning into the caller.
fn in_child(f: impl FnOnce() -> (i64, i32)) -> Outcome {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return failed_outcome();
    }
    let [read_fd, write_fd] = fds;
    // SAFETY: fork duplicates the process; the child below only makes raw syscalls,
    // writes to the pipe and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let (ret, errno) = f();
        let mut msg = [0u8; 12];
        msg[..8].copy_from_slice(&ret.to_ne_bytes());
        msg[8..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: writing our own stack buffer to the pipe, then ending the child.
        unsafe {
            libc::write(write_fd, msg.as_ptr().cast(), msg.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing the write end we own in the parent.
    unsafe { libc::close(write_fd) };
    if pid < 0 {
        // SAFETY: closing the read end we own.
        unsafe { libc::close(read_fd) };
        return failed_outcome();
    }
    let mut msg = [0u8; 12];
    let mut got = 0;
    while got < msg.len() {
        // SAFETY: reading into the unfilled tail of our buffer.
        let n = unsafe { libc::read(read_fd, msg[got..].as_mut_ptr().cast(), msg.len() - got) };
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    let mut status = 0;
    // SAFETY: closing our read end, then reaping the child we forked.
    unsafe {
        libc::close(read_fd);
        libc::waitpid(pid, &mut status, 0);
    }
    if libc::WIFSIGNALED(status) {
        return Outcome {
            ret: -1,
            errno: None,
            killed_by_signal: Some(libc::WTERMSIG(status)),
        };
    }
    if got < msg.len() {
        return failed_outcome();
    }
    let ret = i64::from_ne_bytes(msg[..8].try_into().unwrap_or([0; 8]));
    let errno = i32::from_ne_bytes(msg[8..].try_into().unwrap_or([0; 4]));
    Outcome {
        ret,
        errno: (ret == -1).then_some(errno),
        killed_by_signal: None,
    }
}

fn failed_outcome() -> Outcome {
    Outcome {
        ret: -1,
        errno: None,
        killed_by_signal: None,
    }
}

// === impl Outcome / RefusedResult ===

impl RefusedResult {
    /// Refused with exactly the profile's errno (or the syscall does not exist here).
    pub fn as_expected(&self) -> bool {
        match &self.outcome {
            None => true,
            Some(o) => o.ret == -1 && o.errno == Some(self.expected_errno),
        }
    }
}

// === impl Report ===

impl Report {
    /// Every refused call refused as expected and every piece of work done.
    pub fn all_as_expected(&self) -> bool {
        self.refused.iter().all(RefusedResult::as_expected) && self.work.iter().all(|w| w.ok)
    }

    /// One line per deviation, for assertion messages.
    pub fn deviations(&self) -> Vec<String> {
        let refused = self.refused.iter().filter(|r| !r.as_expected()).map(|r| {
            format!(
                "{} should fail with errno {} but gave {:?}",
                r.name, r.expected_errno, r.outcome
            )
        });
        let work = self
            .work
            .iter()
            .filter(|w| !w.ok)
            .map(|w| format!("{} failed: {}", w.name, w.detail));
        refused.chain(work).collect()
    }
}

/// Runs every refused call (in forked children) and every piece of ordinary work.
pub fn run(config: &ProbeConfig) -> Report {
    let refused = refused_calls()
        .iter()
        .map(|c| RefusedResult {
            name: c.name.to_owned(),
            syscall: c.syscall.to_owned(),
            expected_errno: c.errno,
            outcome: c.run(),
        })
        .collect();
    Report {
        arch: std::env::consts::ARCH.to_owned(),
        status: proc_status(),
        refused,
        work: ordinary_work(config),
    }
}

/// Reads the hardening lines of `/proc/self/status`.
pub fn proc_status() -> ProcStatus {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    ProcStatus {
        seccomp: field("Seccomp:"),
        seccomp_filters: field("Seccomp_filters:"),
        no_new_privs: field("NoNewPrivs:"),
        cap_eff: field("CapEff:"),
    }
}

/// The work a developer workload does, each step reported separately.
pub fn ordinary_work(config: &ProbeConfig) -> Vec<WorkResult> {
    type Step = fn(&ProbeConfig) -> Result<String, String>;
    let steps: [(&str, Step); 13] = [
        ("getpid, uname, clock, getrandom", basics),
        ("file I/O in the scratch directory", file_io),
        ("fork + execve", fork_exec),
        ("spawn a process with pipes (posix_spawn)", spawn_with_pipes),
        ("threads", threads),
        ("TCP over 127.0.0.1", tcp_loopback),
        ("UDP over 127.0.0.1", udp_loopback),
        ("TCP over ::1 (if the container has IPv6)", tcp6_loopback),
        ("unix sockets: pair and listener", unix_sockets),
        ("netlink route socket", netlink_route),
        ("memfd_create", memfd),
        ("anonymous memory made executable (JITs)", jit_memory),
        ("personality query and PER_LINUX", personality_safe),
    ];
    steps
        .iter()
        .map(|(name, step)| {
            let (ok, detail) = match step(config) {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            WorkResult {
                name: (*name).to_owned(),
                ok,
                detail,
            }
        })
        .collect()
}

fn err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn basics(_: &ProbeConfig) -> Result<String, String> {
    let pid = std::process::id();
    let mut uts = std::mem::MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: uname fills the struct we own.
    if unsafe { libc::uname(uts.as_mut_ptr()) } != 0 {
        return Err(format!("uname: {}", std::io::Error::last_os_error()));
    }
    let _ = std::time::SystemTime::now();
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom fills the buffer we own, up to its length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 16 {
        return Err(format!("getrandom: {}", std::io::Error::last_os_error()));
    }
    Ok(format!("pid {pid}"))
}

fn file_io(config: &ProbeConfig) -> Result<String, String> {
    let dir = config
        .scratch
        .join(format!("berth-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err("mkdir"))?;
    let result = (|| {
        let path = dir.join("data");
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut f = std::fs::File::create(&path).map_err(err("create"))?;
        f.write_all(&data).map_err(err("write"))?;
        f.sync_all().map_err(err("fsync"))?;
        drop(f);
        let moved = dir.join("moved");
        std::fs::rename(&path, &moved).map_err(err("rename"))?;
        std::os::unix::fs::symlink(&moved, dir.join("link")).map_err(err("symlink"))?;
        let mut back = Vec::new();
        std::fs::File::open(dir.join("link"))
            .and_then(|mut f| f.read_to_end(&mut back))
            .map_err(err("read back"))?;
        if back != data {
            return Err("read back different bytes".to_owned());
        }
        let meta = std::fs::metadata(&moved).map_err(err("stat"))?;
        std::fs::set_permissions(&moved, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(err("chmod"))?;
        let listed = std::fs::read_dir(&dir).map_err(err("readdir"))?.count();
        Ok(format!("{} bytes, {listed} entries", meta.len()))
    })();
    std::fs::remove_dir_all(&dir).map_err(err("rm -r"))?;
    result
}

fn fork_exec(config: &ProbeConfig) -> Result<String, String> {
    let path = CString::new(config.exec_target.as_os_str().as_bytes())
        .map_err(|_| "exec target has a NUL byte".to_owned())?;
    let argv = [
        path.as_ptr(),
        c"--exit-with".as_ptr(),
        c"7".as_ptr(),
        std::ptr::null(),
    ];
    // SAFETY: the child only calls execv and _exit, both async-signal-safe, with
    // pointers prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    let mut status = 0;
    // SAFETY: reaping the child we forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 7) => Ok("child exec'd and exited 7".to_owned()),
        _ => Err(format!("child ended with wait status {status:#x}")),
    }
}

fn spawn_with_pipes(config: &ProbeConfig) -> Result<String, String> {
    let out = std::process::Command::new(&config.exec_target)
        .args(["--exit-with", "9"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(err("spawn"))?;
    match out.status.code() {
        Some(9) => Ok("exited 9".to_owned()),
        other => Err(format!("exited {other:?}")),
    }
}

fn threads(_: &ProbeConfig) -> Result<String, String> {
    let handles: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || (0..100_000u64).map(|i| i * t).sum::<u64>()))
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "a thread panicked".to_owned())?;
    }
    let expected: u64 = (0..4u64).map(|t| t * 4_999_950_000).sum();
    if total == expected {
        Ok("4 threads joined".to_owned())
    } else {
        Err(format!("sum {total} != {expected}"))
    }
}

fn tcp_loopback(_: &ProbeConfig) -> Result<String, String> {
    tcp_round_trip("127.0.0.1:0")
}

fn tcp6_loopback(_: &ProbeConfig) -> Result<String, String> {
    match tcp_round_trip("[::1]:0") {
        // bind (not socket) failing means IPv6 is off in the container, not seccomp.
        Err(e) if e.starts_with("bind") && e.contains("os error 99") => {
            Ok("skipped: ::1 not configured".to_owned())
        }
        other => other,
    }
}

fn tcp_round_trip(addr: &str) -> Result<String, String> {
    let listener = TcpListener::bind(addr).map_err(err("bind"))?;
    let local = listener.local_addr().map_err(err("local_addr"))?;
    let mut client = TcpStream::connect(local).map_err(err("connect"))?;
    let (mut server, _) = listener.accept().map_err(err("accept"))?;
    client.write_all(b"ping").map_err(err("send"))?;
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).map_err(err("recv"))?;
    server.write_all(b"pong").map_err(err("reply"))?;
    client.read_exact(&mut buf).map_err(err("read reply"))?;
    if &buf == b"pong" {
        Ok(format!("round trip via {local}"))
    } else {
        Err("wrong reply".to_owned())
    }
}

fn udp_loopback(_: &ProbeConfig) -> Result<String, String> {
    let a = UdpSocket::bind("127.0.0.1:0").map_err(err("bind"))?;
    let b = UdpSocket::bind("127.0.0.1:0").map_err(err("bind"))?;
    a.send_to(b"hi", b.local_addr().map_err(err("local_addr"))?)
        .map_err(err("send_to"))?;
    let mut buf = [0u8; 2];
    let (n, _) = b.recv_from(&mut buf).map_err(err("recv_from"))?;
    if n == 2 {
        Ok("datagram delivered".to_owned())
    } else {
        Err("short datagram".to_owned())
    }
}

fn unix_sockets(config: &ProbeConfig) -> Result<String, String> {
    let (mut a, mut b) = UnixStream::pair().map_err(err("socketpair"))?;
    a.write_all(b"x").map_err(err("write"))?;
    let mut buf = [0u8; 1];
    b.read_exact(&mut buf).map_err(err("read"))?;
    let path = config
        .scratch
        .join(format!("berth-probe-{}.sock", std::process::id()));
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(err("bind"))?;
    let result = UnixStream::connect(&path)
        .and_then(|_| listener.accept().map(|_| ()))
        .map_err(err("connect/accept"));
    let _ = std::fs::remove_file(&path);
    result.map(|()| "pair and path socket work".to_owned())
}

fn netlink_route(_: &ProbeConfig) -> Result<String, String> {
    // SAFETY: creating a socket we close right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: closing the descriptor we just opened.
    unsafe { libc::close(fd) };
    Ok("opened".to_owned())
}

fn memfd(_: &ProbeConfig) -> Result<String, String> {
    // SAFETY: memfd_create with a static name; the descriptor is closed below.
    let fd = unsafe { libc::memfd_create(c"berth-probe".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: closing the descriptor we just opened.
    unsafe { libc::close(fd) };
    Ok("opened".to_owned())
}

fn jit_memory(_: &ProbeConfig) -> Result<String, String> {
    const LEN: usize = 4096;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: changing the protection of the mapping we own.
    let rc = unsafe { libc::mprotect(p, LEN, libc::PROT_READ | libc::PROT_EXEC) };
    let e = std::io::Error::last_os_error();
    // SAFETY: unmapping the mapping we own.
    unsafe { libc::munmap(p, LEN) };
    if rc == 0 {
        Ok("mmap rw then mprotect rx".to_owned())
    } else {
        Err(format!("mprotect: {e}"))
    }
}

fn personality_safe(_: &ProbeConfig) -> Result<String, String> {
    // SAFETY: 0xffffffff only queries; setting PER_LINUX (0) keeps the default persona.
    let current = unsafe { libc::personality(0xffff_ffff) };
    if current < 0 {
        return Err(format!("query: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::personality(0) } < 0 {
        return Err(format!("PER_LINUX: {}", std::io::Error::last_os_error()));
    }
    Ok(format!("persona {current:#x}"))
}

/// The default exec target: this very binary.
pub fn self_exe() -> PathBuf {
    Path::new("/proc/self/exe").to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Verdict;

    #[test]
    fn every_refused_call_matches_the_profile() {
        let resolved = crate::workspace_resolved().unwrap();
        for call in refused_calls() {
            let verdict = resolved.evaluate(call.syscall, call.model_args());
            assert_eq!(
                verdict,
                Verdict::Errno(call.errno as u32),
                "{}: the probe expects errno {}",
                call.name,
                call.errno
            );
        }
    }

    #[test]
    fn every_refused_call_names_a_syscall() {
        for call in refused_calls() {
            assert!(crate::syscalls::is_known(call.syscall), "{}", call.syscall);
        }
    }
}

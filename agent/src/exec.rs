//! Running commands: validation, spawning, supervision, and `POST /v1/exec`.
//!
//! Each command runs in its own process group (a pty session's leader makes its
//! own), so that a timeout, or a client that goes away, kills everything the
//! command started with one `killpg`. When the command's own process exits, what
//! is left of its group is killed too, so the stream always ends; a job that must
//! outlive its command detaches with `setsid`.
//!
//! Output flows through a bounded channel of [`STREAM_BOUND`] events of at most
//! [`CHUNK`] bytes: when the client reads slowly the channel fills, the pipe
//! readers stop reading, the pipes fill, and the command blocks on write — memory
//! stays bounded (about 1 MiB per stream) whatever the command prints. A client
//! that disconnects closes the channel, which the supervisor notices at once even
//! when the command prints nothing, and the group is killed.
//!
//! A `cmd` whose program does not exist is refused before anything starts
//! (`422 command_not_found`); a `shell` command reports 127 through its shell, as
//! a terminal would.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, header},
    response::Response,
};
use berth_wire::{ExecEvent, ExecRequest, PtySize};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::{Child, ChildStdin},
    sync::{mpsc, watch},
};

use crate::{
    AgentState, Claim,
    error::AgentError,
    procs::Registration,
    pty::{self, PtyMaster},
};

/// Events buffered between the command and a slow client (each at most [`CHUNK`] bytes).
pub(crate) const STREAM_BOUND: usize = 16;
/// Bytes read from a pipe at a time.
const CHUNK: usize = 64 * 1024;
/// After the command's process exits, output still arriving is read until the
/// pipes stay quiet this long (a detached job may hold them open for ever).
const DRAIN_IDLE: Duration = Duration::from_millis(200);
/// The longest `timeout_ms` accepted: a week.
const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Commands get this `oom_score_adj`, so the kernel's OOM killer picks them before
/// the agent when the workspace runs out of memory.
const COMMAND_OOM_SCORE_ADJ: &str = "500";

/// A validated command, ready to start.
#[derive(Debug, Clone)]
pub(crate) struct CommandSpec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub stdin: Option<String>,
    pub max_output: Option<u64>,
    pub pty: Option<PtySize>,
}

/// A command that has started.
pub(crate) struct Started {
    pub child: Child,
    pub pid: u32,
    pub group: GroupGuard,
    pub registration: Registration,
    pub io: CommandIo,
}

/// How the agent talks to a started command.
pub(crate) enum CommandIo {
    Pipes {
        stdin: Option<ChildStdin>,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    },
    Pty(Arc<PtyMaster>),
}

/// Kills a command's whole process group when told to, or when dropped. For a pty
/// command it kills the whole session: a shell with job control runs each job in a
/// group of its own.
pub(crate) struct GroupGuard {
    pid: u32,
    session: bool,
}

/// The `max_output_bytes` budget shared by a command's output readers.
struct OutputBudget {
    limit: Option<u64>,
    used: AtomicU64,
    truncated: AtomicBool,
}

/// Where a command's output comes from.
enum OutputSource {
    Pipe(Box<dyn AsyncRead + Unpin + Send>),
    Pty(Arc<PtyMaster>),
}

/// `POST /v1/exec`: start the command and stream its events as NDJSON.
pub(crate) async fn exec(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, AgentError> {
    let claim = state.authorize(&headers)?;
    let req: ExecRequest = state.read_json(&headers, body).await?;
    let spec = validate(&state, &claim, req, false)?;
    let mut started = spawn(&state, &spec, spec.stdin.is_some())?;
    if let (Some(input), CommandIo::Pipes { stdin, .. }) = (spec.stdin.clone(), &mut started.io)
        && let Some(mut pipe) = stdin.take()
    {
        tokio::spawn(async move {
            // Dropping the pipe afterwards closes the command's stdin.
            let _ = pipe.write_all(input.as_bytes()).await;
        });
    }
    let (tx, rx) = mpsc::channel::<ExecEvent>(STREAM_BOUND);
    tokio::spawn(supervise(started, spec, tx));
    let attached = state.inner.procs.attach();
    let stream = futures_util::stream::unfold((rx, attached), |(mut rx, attached)| async move {
        let event = rx.recv().await?;
        Some((Ok::<Bytes, std::io::Error>(line(&event)), (rx, attached)))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty())))
}

/// Checks a request and turns it into a [`CommandSpec`]. `pty` is only allowed on
/// WebSocket sessions, where there is a way to send input and resize.
pub(crate) fn validate(
    state: &AgentState,
    claim: &Claim,
    req: ExecRequest,
    allow_pty: bool,
) -> Result<CommandSpec, AgentError> {
    let invalid = |field: &'static str, reason: &str| AgentError::InvalidField {
        field,
        reason: reason.to_owned(),
    };
    let argv = match (req.cmd, req.shell) {
        (Some(cmd), None) if cmd.is_empty() => {
            return Err(invalid("cmd", "argv must not be empty"));
        }
        (Some(cmd), None) if cmd[0].is_empty() => {
            return Err(invalid("cmd", "the program (argv[0]) must not be empty"));
        }
        (Some(cmd), None) => cmd,
        (None, Some(shell)) if shell.trim().is_empty() => {
            return Err(invalid("shell", "must not be empty"));
        }
        (None, Some(shell)) => vec!["/bin/sh".into(), "-c".into(), shell],
        (Some(_), Some(_)) => return Err(invalid("cmd", "give only one of `cmd` and `shell`")),
        (None, None) => return Err(invalid("cmd", "give one of `cmd` and `shell`")),
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("cmd", "arguments must not contain NUL bytes"));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(AgentError::InvalidField {
                field: "env",
                reason: format!("{k:?} is not a variable name (empty, or holds '=' or NUL)"),
            });
        }
        if v.contains('\0') {
            return Err(AgentError::InvalidField {
                field: "env",
                reason: format!("the value of {k} contains a NUL byte"),
            });
        }
    }
    let timeout = match req.timeout_ms {
        Some(0) => return Err(invalid("timeout_ms", "must be at least 1")),
        Some(ms) if ms > MAX_TIMEOUT_MS => {
            return Err(AgentError::InvalidField {
                field: "timeout_ms",
                reason: format!("must be at most {MAX_TIMEOUT_MS} (a week)"),
            });
        }
        ms => ms.map(Duration::from_millis),
    };
    let root = &state.inner.config.root;
    let cwd = match req.cwd.as_deref() {
        None => root.clone(),
        Some("") => return Err(invalid("cwd", "must not be empty")),
        Some(c) if c.contains('\0') => return Err(invalid("cwd", "must not contain NUL bytes")),
        Some(c) => root.join(c), // an absolute `c` replaces the root
    };
    if !cwd.is_dir() {
        return Err(AgentError::InvalidField {
            field: "cwd",
            reason: format!("{} is not a directory", cwd.display()),
        });
    }
    if let Some(p) = req.pty {
        if !allow_pty {
            return Err(invalid(
                "pty",
                "a pty needs an interactive session: use GET /v1/exec/ws",
            ));
        }
        if p.rows == 0 || p.cols == 0 {
            return Err(invalid("pty", "rows and cols must be at least 1"));
        }
    }
    let mut env = claim.env.clone();
    env.extend(req.env);
    Ok(CommandSpec {
        argv,
        cwd,
        env,
        timeout,
        stdin: req.stdin,
        max_output: req.max_output_bytes,
        pty: req.pty,
    })
}

/// Starts a command in its own process group (or pty session) and records it.
pub(crate) fn spawn(
    state: &AgentState,
    spec: &CommandSpec,
    stdin_piped: bool,
) -> Result<Started, AgentError> {
    let program = &spec.argv[0];
    let mut command = tokio::process::Command::new(program);
    command
        .args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &state.inner.config.root)
        .envs(&state.inner.config.base_env)
        .envs(&spec.env)
        .kill_on_drop(true);
    let master = match spec.pty {
        Some(size) => {
            let (master, slave) = pty::open(size).map_err(|e| spawn_error(program, &e))?;
            let clone = |fd: &std::os::fd::OwnedFd| {
                fd.try_clone()
                    .map(Stdio::from)
                    .map_err(|e| spawn_error(program, &e))
            };
            command
                .stdin(clone(&slave)?)
                .stdout(clone(&slave)?)
                .stderr(Stdio::from(slave));
            if !spec.env.contains_key("TERM") {
                command.env("TERM", "xterm-256color");
            }
            pty::set_controlling_terminal(&mut command);
            Some(Arc::new(master))
        }
        None => {
            command
                .process_group(0)
                .stdin(if stdin_piped {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };

    let procs = &state.inner.procs;
    // Hold the table from spawn until the pid is recorded: the orphan reaper takes
    // the same lock, so it can never reap this child before tokio does.
    let mut table = procs.lock();
    let limit = state.inner.config.max_commands;
    if table.len() >= limit {
        return Err(AgentError::TooManyCommands { limit });
    }
    let mut child = command.spawn().map_err(|e| spawn_error(program, &e))?;
    let pid = child.id().unwrap_or_default();
    let registration = procs.register(&mut table, pid, &spec.argv, spec.pty.is_some());
    drop(table);
    drop(command); // closes the parent's copies of the pty slave
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), COMMAND_OOM_SCORE_ADJ);
    tracing::info!(pid, argv0 = %program, pty = spec.pty.is_some(), "command started");

    let io = match master {
        Some(m) => CommandIo::Pty(m),
        None => CommandIo::Pipes {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        },
    };
    Ok(Started {
        child,
        pid,
        group: GroupGuard {
            pid,
            session: spec.pty.is_some(),
        },
        registration,
        io,
    })
}

fn spawn_error(program: &str, e: &std::io::Error) -> AgentError {
    let program = program.to_owned();
    match e.kind() {
        std::io::ErrorKind::NotFound => AgentError::CommandNotFound { program },
        std::io::ErrorKind::PermissionDenied => AgentError::CommandNotExecutable { program },
        _ => AgentError::Spawn {
            program,
            reason: e.to_string(),
        },
    }
}

/// Streams a started command's life into `tx`: `started`, output, `exit`. Kills the
/// group on timeout, when the receiver goes away, and when the leader has exited.
pub(crate) async fn supervise(started: Started, spec: CommandSpec, tx: mpsc::Sender<ExecEvent>) {
    let Started {
        mut child,
        pid,
        group,
        registration,
        io,
    } = started;
    let start = Instant::now();
    if tx.send(ExecEvent::Started { pid }).await.is_err() {
        return; // client gone: the guard kills the group
    }
    let budget = Arc::new(OutputBudget {
        limit: spec.max_output,
        used: AtomicU64::new(0),
        truncated: AtomicBool::new(false),
    });
    let (exited_tx, exited_rx) = watch::channel(false);
    let mut pumps = Vec::new();
    let mut start_pump = |source: OutputSource, stderr: bool| {
        pumps.push(tokio::spawn(pump(
            source,
            tx.clone(),
            stderr,
            budget.clone(),
            exited_rx.clone(),
        )));
    };
    match io {
        CommandIo::Pipes { stdout, stderr, .. } => {
            if let Some(out) = stdout {
                start_pump(OutputSource::Pipe(Box::new(out)), false);
            }
            if let Some(err) = stderr {
                start_pump(OutputSource::Pipe(Box::new(err)), true);
            }
        }
        CommandIo::Pty(master) => start_pump(OutputSource::Pty(master), false),
    }

    let wait = async {
        match spec.timeout {
            Some(t) => match tokio::time::timeout(t, child.wait()).await {
                Ok(status) => (status, false),
                Err(_) => {
                    group.kill();
                    (child.wait().await, true)
                }
            },
            None => (child.wait().await, false),
        }
    };
    let (status, timed_out) = tokio::select! {
        done = wait => done,
        () = tx.closed() => {
            tracing::info!(pid, "client went away; killing the command's group");
            group.kill();
            let _ = child.wait().await;
            return;
        }
    };
    // The leader has exited; anything it left behind in its group goes too.
    group.kill();
    drop(registration);
    let _ = exited_tx.send(true);
    for p in pumps {
        if !p.await.unwrap_or(false) {
            return; // client gone mid-stream
        }
    }
    let (code, signal) = match &status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            (s.code(), s.signal())
        }
        Err(_) => (None, None),
    };
    let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(pid, ?code, ?signal, timed_out, duration_ms, "command ended");
    let _ = tx
        .send(ExecEvent::Exit {
            code,
            signal,
            duration_ms,
            timed_out,
            truncated: budget.truncated.load(Ordering::Relaxed),
        })
        .await;
}

// === impl GroupGuard ===

impl GroupGuard {
    pub(crate) fn kill(&self) {
        let Ok(pgid) = i32::try_from(self.pid) else {
            return;
        };
        if pgid <= 1 {
            return;
        }
        let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        if self.session {
            for pid in crate::procs::session_members(self.pid) {
                if let Ok(raw) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
                }
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

// === impl OutputBudget ===

impl OutputBudget {
    /// How many of `n` new bytes may still be forwarded.
    fn take(&self, n: usize) -> usize {
        let Some(limit) = self.limit else { return n };
        let n64 = n as u64;
        let before = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_add(n64).min(limit))
            })
            .unwrap_or(limit);
        usize::try_from(limit.saturating_sub(before).min(n64)).unwrap_or(n)
    }
}

// === impl OutputSource ===

impl OutputSource {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            OutputSource::Pipe(p) => p.read(buf).await,
            OutputSource::Pty(m) => m.read(buf).await,
        }
    }
}

/// Copies one output source into events until EOF, or until it has been quiet for
/// [`DRAIN_IDLE`] after the command exited. Returns false when the client went away.
async fn pump(
    mut source: OutputSource,
    tx: mpsc::Sender<ExecEvent>,
    stderr: bool,
    budget: Arc<OutputBudget>,
    mut exited: watch::Receiver<bool>,
) -> bool {
    let mut buf = vec![0u8; CHUNK];
    // Bytes of a UTF-8 character split across two reads wait here for the rest.
    let mut pending: Vec<u8> = Vec::new();
    let mut dropping = false;
    loop {
        let quiet = async {
            let _ = exited.wait_for(|e| *e).await;
            tokio::time::sleep(DRAIN_IDLE).await;
        };
        let n = tokio::select! {
            r = source.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            () = quiet => break,
        };
        if dropping {
            continue; // keep reading so the command never blocks on a full pipe
        }
        let allowed = budget.take(n);
        pending.extend_from_slice(&buf[..allowed]);
        if allowed < n {
            dropping = true;
        }
        let (data, base64) = split_utf8(&mut pending, dropping);
        if !data.is_empty() && tx.send(event(data, base64, stderr)).await.is_err() {
            return false;
        }
        if dropping {
            pending.clear();
            if !budget.truncated.swap(true, Ordering::Relaxed) {
                let limit_bytes = budget.limit.unwrap_or(0);
                if tx.send(ExecEvent::Truncated { limit_bytes }).await.is_err() {
                    return false;
                }
            }
        }
    }
    if !pending.is_empty() && !dropping {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(&pending);
        if tx.send(event(data, true, stderr)).await.is_err() {
            return false;
        }
    }
    true
}

/// Takes the longest valid UTF-8 prefix out of `pending` (keeping an incomplete
/// trailing character for the next read, unless `last`), or all of it as base64 if
/// it is not text.
fn split_utf8(pending: &mut Vec<u8>, last: bool) -> (String, bool) {
    match std::str::from_utf8(pending) {
        Ok(s) => {
            let s = s.to_owned();
            pending.clear();
            (s, false)
        }
        Err(e) if e.error_len().is_none() && (last || pending.len() - e.valid_up_to() < 4) => {
            // An incomplete character at the end: keep it for the next read (or,
            // when output is being cut, drop it with the rest).
            let rest = pending.split_off(e.valid_up_to());
            let text = String::from_utf8(std::mem::replace(pending, rest)).unwrap_or_default();
            (text, false)
        }
        Err(_) => {
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD.encode(&pending);
            pending.clear();
            (data, true)
        }
    }
}

fn event(data: String, base64: bool, stderr: bool) -> ExecEvent {
    if stderr {
        ExecEvent::Stderr { data, base64 }
    } else {
        ExecEvent::Stdout { data, base64 }
    }
}

/// One NDJSON line.
pub(crate) fn line(event: &ExecEvent) -> Bytes {
    let mut v = serde_json::to_vec(event).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_incomplete_char_for_next_read() {
        let mut p = "héllo".as_bytes().to_vec();
        p.truncate(2); // 'h' + first byte of 'é'
        let (text, b64) = split_utf8(&mut p, false);
        assert_eq!((text.as_str(), b64), ("h", false));
        assert_eq!(p, vec![0xc3]);
        p.extend_from_slice(&[0xa9, b'l']);
        assert_eq!(split_utf8(&mut p, false), ("él".to_owned(), false));
        assert!(p.is_empty());
    }

    #[test]
    fn split_encodes_binary_as_base64() {
        let mut p = vec![0xff, 0x00, 0x41];
        assert_eq!(split_utf8(&mut p, false), ("/wBB".to_owned(), true));
    }

    #[test]
    fn budget_cuts_at_the_limit_once() {
        let b = OutputBudget {
            limit: Some(10),
            used: AtomicU64::new(0),
            truncated: AtomicBool::new(false),
        };
        assert_eq!(b.take(4), 4);
        assert_eq!(b.take(8), 6);
        assert_eq!(b.take(8), 0);
        let unlimited = OutputBudget {
            limit: None,
            used: AtomicU64::new(0),
            truncated: AtomicBool::new(false),
        };
        assert_eq!(unlimited.take(1 << 20), 1 << 20);
    }
}

//! `POST /v1/exec`: run one command and stream its life as newline-delimited JSON.
//!
//! Each command runs in its own process group so that a timeout, or a client that
//! goes away, kills everything the command started. Output flows through a bounded
//! channel of [`STREAM_BOUND`] events: when the client reads slowly the channel fills,
//! the pipe readers stop reading, the pipes fill, and the command blocks on write —
//! memory stays bounded whatever the command prints.

use std::{process::Stdio, time::Instant};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, header},
    response::Response,
};
use berth_wire::{ExecEvent, ExecRequest};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};

use crate::{AgentError, AgentState, parse_json};

/// Events buffered between the command and a slow client (each at most [`CHUNK`] bytes).
const STREAM_BOUND: usize = 16;
/// Bytes read from a pipe at a time.
const CHUNK: usize = 64 * 1024;

pub(crate) async fn exec(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AgentError> {
    let claim = state.authorize(&headers)?;
    let req: ExecRequest = parse_json(&body)?;
    let argv = match (req.cmd, req.shell) {
        (Some(cmd), None) if !cmd.is_empty() => cmd,
        (Some(_), None) => {
            return Err(AgentError::InvalidField {
                field: "cmd",
                reason: "argv must not be empty".into(),
            });
        }
        (None, Some(shell)) => vec!["/bin/sh".into(), "-c".into(), shell],
        _ => {
            return Err(AgentError::InvalidField {
                field: "cmd",
                reason: "give exactly one of `cmd` and `shell`".into(),
            });
        }
    };
    let cwd = req
        .cwd
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| state.inner.root.clone());
    if !cwd.is_dir() {
        return Err(AgentError::InvalidField {
            field: "cwd",
            reason: format!("{} is not a directory", cwd.display()),
        });
    }

    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&cwd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &state.inner.root)
        .envs(&claim.env)
        .envs(&req.env)
        .process_group(0)
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| AgentError::Spawn(format!("{}: {e}", argv[0])))?;
    let pid = child.id().unwrap_or_default();
    let guard = GroupGuard(pid);
    tracing::info!(pid, argv0 = %argv[0], "exec started");

    if let (Some(input), Some(mut stdin)) = (req.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
    }

    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BOUND);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let timeout = req.timeout_ms.map(std::time::Duration::from_millis);
    tokio::spawn(async move {
        let started = Instant::now();
        if tx.send(line(&ExecEvent::Started { pid })).await.is_err() {
            return; // client gone: the guard kills the group
        }
        let out = tokio::spawn(pump(stdout, tx.clone(), false));
        let err = tokio::spawn(pump(stderr, tx.clone(), true));
        let (status, timed_out) = match timeout {
            Some(t) => match tokio::time::timeout(t, child.wait()).await {
                Ok(status) => (status, false),
                Err(_) => {
                    guard.kill();
                    (child.wait().await, true)
                }
            },
            None => (child.wait().await, false),
        };
        // The leader has exited; anything it left behind in its group goes too,
        // so that the pipes close and the readers finish.
        guard.kill();
        let (out_ok, err_ok) = (out.await.unwrap_or(false), err.await.unwrap_or(false));
        if !(out_ok && err_ok) {
            return;
        }
        let (code, signal) = match &status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                (s.code(), s.signal())
            }
            Err(_) => (None, None),
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let _ = tx
            .send(line(&ExecEvent::Exit {
                code,
                signal,
                duration_ms,
                timed_out,
            }))
            .await;
    });

    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty())))
}

/// Kills a command's whole process group when told to, or when dropped.
struct GroupGuard(u32);

impl GroupGuard {
    fn kill(&self) {
        if let Ok(pgid) = i32::try_from(self.0)
            && pgid > 0
        {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies one pipe into events. Returns false when the client went away.
async fn pump(pipe: Option<impl AsyncRead + Unpin>, tx: mpsc::Sender<Bytes>, stderr: bool) -> bool {
    let Some(mut pipe) = pipe else { return true };
    let mut buf = vec![0u8; CHUNK];
    // Bytes of a UTF-8 character split across two reads wait here for the rest.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let (data, base64) = split_utf8(&mut pending);
        if data.is_empty() {
            continue;
        }
        if tx.send(line(&event(data, base64, stderr))).await.is_err() {
            return false;
        }
    }
    if !pending.is_empty() {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(&pending);
        if tx.send(line(&event(data, true, stderr))).await.is_err() {
            return false;
        }
    }
    true
}

/// Takes the longest valid UTF-8 prefix out of `pending` (keeping an incomplete
/// trailing character for the next read), or all of it as base64 if it is not text.
fn split_utf8(pending: &mut Vec<u8>) -> (String, bool) {
    match std::str::from_utf8(pending) {
        Ok(s) => {
            let s = s.to_owned();
            pending.clear();
            (s, false)
        }
        Err(e) if e.error_len().is_none() && pending.len() - e.valid_up_to() < 4 => {
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

fn line(event: &ExecEvent) -> Bytes {
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
        let (text, b64) = split_utf8(&mut p);
        assert_eq!((text.as_str(), b64), ("h", false));
        assert_eq!(p, vec![0xc3]);
        p.extend_from_slice(&[0xa9, b'l']);
        assert_eq!(split_utf8(&mut p), ("él".to_owned(), false));
        assert!(p.is_empty());
    }

    #[test]
    fn split_encodes_binary_as_base64() {
        let mut p = vec![0xff, 0x00, 0x41];
        assert_eq!(split_utf8(&mut p), ("/wBB".to_owned(), true));
    }
}

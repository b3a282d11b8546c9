//! The commands the agent started, the zombies it must reap, and what it reports
//! as activity.
//!
//! Background: in a workspace container the agent is PID 1, so every process whose
//! parent dies — a command's background job, the survivors of a killed process
//! group, a fork bomb's children — is re-parented to it. Unreaped, each stays a
//! zombie and counts against the container's pids limit until the workspace can
//! start nothing. tokio waits only for the children it spawned, so the
//! [`reap_orphans`] task reaps the others: on every `SIGCHLD` it looks in `/proc`
//! for zombie children that are not in the [`ProcessTable`] and waits for exactly
//! those pids. Spawning holds the table's lock until the new pid is recorded, and
//! so does the reaper while it reaps, so it can never steal the exit status of a
//! command tokio is waiting for. Outside a container (not PID 1) the agent makes
//! itself a child subreaper so the same holds.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use berth_wire::{Activity, ProcessInfo, ProcessList, SignalRequest};
use nix::{
    sys::{
        signal::{Signal, kill, killpg},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};

use crate::{AgentState, error::AgentError};

/// Commands the agent started and that have not ended yet, by pid.
#[derive(Default)]
pub(crate) struct ProcessTable {
    running: Mutex<BTreeMap<u32, ProcessInfo>>,
    attached: AtomicU64,
    last_request_ms: AtomicU64,
}

/// Removes a command from the table when its supervisor is done with it.
pub(crate) struct Registration {
    table: Arc<ProcessTable>,
    pid: u32,
}

/// Counts one attached stream for as long as it lives.
pub(crate) struct Attached(Arc<ProcessTable>);

// === impl ProcessTable ===

impl ProcessTable {
    /// Locks the table; spawn while holding it so the reaper cannot race the spawn.
    pub(crate) fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, ProcessInfo>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a command spawned under `guard`.
    pub(crate) fn register(
        self: &Arc<Self>,
        guard: &mut MutexGuard<'_, BTreeMap<u32, ProcessInfo>>,
        pid: u32,
        argv: &[String],
        pty: bool,
    ) -> Registration {
        guard.insert(
            pid,
            ProcessInfo {
                pid,
                argv: argv.to_vec(),
                started_at_ms: unix_ms(),
                pty,
            },
        );
        Registration {
            table: self.clone(),
            pid,
        }
    }

    pub(crate) fn attach(self: &Arc<Self>) -> Attached {
        self.attached.fetch_add(1, Ordering::Relaxed);
        Attached(self.clone())
    }

    pub(crate) fn touch(&self) {
        self.last_request_ms.store(unix_ms(), Ordering::Relaxed);
    }

    pub(crate) fn activity(&self) -> Activity {
        let last = self.last_request_ms.load(Ordering::Relaxed);
        Activity {
            attached_streams: self.attached.load(Ordering::Relaxed),
            running_commands: self.lock().len() as u64,
            processes: live_processes(),
            last_request_ms: (last > 0).then_some(last),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.lock().remove(&self.pid);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.attached.fetch_sub(1, Ordering::Relaxed);
    }
}

// === routes ===

/// `GET /v1/processes`: commands the agent started that are still running.
pub(crate) async fn list(
    State(state): State<AgentState>,
    headers: HeaderMap,
) -> Result<axum::Json<ProcessList>, AgentError> {
    state.authorize(&headers)?;
    let processes = state.inner.procs.lock().values().cloned().collect();
    Ok(axum::Json(ProcessList { processes }))
}

/// `POST /v1/processes/{pid}/signal {signal, group?}`.
pub(crate) async fn signal(
    State(state): State<AgentState>,
    headers: HeaderMap,
    Path(pid): Path<String>,
    body: axum::body::Body,
) -> Result<Response, AgentError> {
    state.authorize(&headers)?;
    let pid: u32 = pid.parse().map_err(|_| AgentError::InvalidField {
        field: "pid",
        reason: format!("{pid:?} is not a process id"),
    })?;
    let req: SignalRequest = state.read_json(&headers, body).await?;
    let sig = parse_signal(&req.signal)?;
    // Only pids in the table: never a process the agent did not start.
    let table = state.inner.procs.lock();
    if !table.contains_key(&pid) {
        return Err(AgentError::ProcessNotFound { pid });
    }
    send_signal(pid, sig, req.group).map_err(|_| AgentError::ProcessNotFound { pid })?;
    drop(table);
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"pid": pid, "signal": sig.as_str(), "group": req.group})),
    )
        .into_response())
}

// === helpers ===

/// Sends `sig` to a command's process group (its pgid is its pid) or to it alone.
pub(crate) fn send_signal(pid: u32, sig: Signal, group: bool) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::ESRCH)?;
    if pid <= 1 {
        return Err(nix::Error::ESRCH);
    }
    if group {
        killpg(Pid::from_raw(pid), sig)
    } else {
        kill(Pid::from_raw(pid), sig)
    }
}

/// Parses `"SIGINT"`, `"INT"`, `"int"` or `"2"`.
pub(crate) fn parse_signal(raw: &str) -> Result<Signal, AgentError> {
    let bad = || AgentError::InvalidField {
        field: "signal",
        reason: format!("{raw:?} is not a signal name such as SIGTERM or a number"),
    };
    if let Ok(n) = raw.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = raw.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// State and parent of a process, from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(char, u32)> {
    let (state, ppid, _) = stat_fields(pid)?;
    Some((state, ppid))
}

/// State, parent and session of a process, from `/proc/<pid>/stat`.
fn stat_fields(pid: u32) -> Option<(char, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it
    // start past the last ')': state, ppid, pgrp, session, …
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let session = fields.nth(1)?.parse().ok()?;
    Some((state, ppid, session))
}

/// Live processes of the session `sid` (a pty command's session).
pub(crate) fn session_members(sid: u32) -> Vec<u32> {
    proc_pids()
        .filter(|&p| matches!(stat_fields(p), Some((s, _, session)) if session == sid && s != 'Z'))
        .collect()
}

fn proc_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

/// Live (non-zombie) processes other than the agent. In a workspace container that
/// is everything the workspace runs; elsewhere it counts the agent's descendants.
fn live_processes() -> u64 {
    let me = std::process::id();
    if me == 1 {
        proc_pids()
            .filter(|&p| p != me)
            .filter(|&p| matches!(stat_of(p), Some((s, _)) if s != 'Z'))
            .count() as u64
    } else {
        // Not PID 1: count descendants by walking parents (small trees only).
        let parents: BTreeMap<u32, (char, u32)> =
            proc_pids().filter_map(|p| Some((p, stat_of(p)?))).collect();
        parents
            .iter()
            .filter(|(_, (s, _))| *s != 'Z')
            .filter(|&(&p, _)| {
                let mut cur = p;
                for _ in 0..64 {
                    match parents.get(&cur) {
                        Some(&(_, pp)) if pp == me => return true,
                        Some(&(_, pp)) if pp > 1 => cur = pp,
                        _ => return false,
                    }
                }
                false
            })
            .count() as u64
    }
}

/// Reaps zombie children that tokio is not waiting for, on every `SIGCHLD` (and
/// every few seconds, in case signals were coalesced). Runs for the agent's life.
pub(crate) async fn reap_orphans(table: Arc<ProcessTable>) {
    if std::process::id() != 1 {
        // Orphans of our commands then come to us rather than to the real init.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper");
        }
    }
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGCHLD stream; reaping on a timer only");
            None
        }
    };
    loop {
        match sigchld.as_mut() {
            Some(s) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), s.recv()).await;
            }
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
        let reaped = reap_once(&table);
        if reaped > 0 {
            tracing::debug!(reaped, "reaped orphaned processes");
        }
        // A fork bomb sends a storm of SIGCHLD; one scan per 20 ms is plenty.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One pass: waits for each zombie child not in the table. Returns how many.
pub(crate) fn reap_once(table: &ProcessTable) -> usize {
    let me = std::process::id();
    let ours = table.lock();
    let mut reaped = 0;
    for pid in proc_pids() {
        if ours.contains_key(&pid) {
            continue;
        }
        if let Some(('Z', ppid)) = stat_of(pid)
            && ppid == me
            && let Ok(raw) = i32::try_from(pid)
            && waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)).is_ok()
        {
            reaped += 1;
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_short_name_and_number() {
        assert_eq!(parse_signal("SIGINT").unwrap(), Signal::SIGINT);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("999").is_err());
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn stat_parses_names_with_parentheses() {
        let (state, ppid) = stat_of(std::process::id()).unwrap();
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(ppid > 0);
    }
}

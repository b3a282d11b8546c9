//! `GET /v1/exec/ws`: interactive sessions over a WebSocket.
//!
//! The client's first text message is an [`ExecRequest`] (with `pty: {rows, cols}`
//! to run on a pseudo-terminal); the agent answers with the same events as
//! `POST /v1/exec`, one JSON text message each. After that the client sends
//! [`SessionMessage`]s — `stdin`, `close_stdin`, `resize`, `signal` — or binary
//! frames, which are raw stdin bytes. A refused message gets an `error` event and
//! the session goes on; a refused start gets an `error` event and a close. When
//! the command exits the agent sends `exit` and closes; when the client goes away
//! the command's process group is killed.
//!
//! Input has its own bounded channel to a writer task, so a command that does not
//! read its stdin never stops its output from flowing: while that channel is full
//! the agent simply stops reading the socket.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{
        State,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
        },
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use berth_wire::{ExecEvent, ExecRequest, SessionMessage};
use bytes::Bytes;
use tokio::{io::AsyncWriteExt, process::ChildStdin, sync::mpsc};

use crate::{
    AgentState, Claim,
    error::AgentError,
    exec::{self, CommandIo, STREAM_BOUND},
    procs,
    pty::PtyMaster,
};

/// How long a client has to send the first message after the upgrade.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Stdin messages buffered towards a command that is not reading.
const STDIN_BOUND: usize = 16;

/// What the writer task does with the command's input.
enum Input {
    Data(Bytes),
    Close,
}

/// Where input goes.
enum InputSink {
    Pipe(Option<ChildStdin>),
    Pty(Arc<PtyMaster>),
}

/// `GET /v1/exec/ws`: authorizes, then upgrades.
pub(crate) async fn upgrade(
    State(state): State<AgentState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AgentError> {
    let claim = state.authorize(&headers)?;
    let ws = ws.map_err(|e| AgentError::WebSocketRequired(e.body_text()))?;
    let limit = usize::try_from(state.inner.config.max_request_bytes).unwrap_or(usize::MAX);
    Ok(ws
        .max_message_size(limit)
        .on_upgrade(move |socket| session(state, claim, socket))
        .into_response())
}

async fn session(state: AgentState, claim: Claim, mut socket: WebSocket) {
    let _attached = state.inner.procs.attach();
    let spec = match tokio::time::timeout(START_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<ExecRequest>(&text)
            .map_err(|e| AgentError::InvalidJson(e.to_string()))
            .and_then(|req| exec::validate(&state, &claim, req, true)),
        Ok(Some(Ok(_))) => Err(AgentError::InvalidField {
            field: "message",
            reason: "the first message must be a JSON text message (an exec request)".into(),
        }),
        Ok(_) => return, // closed before starting
        Err(_) => Err(AgentError::InvalidField {
            field: "message",
            reason: format!("no exec request within {} s", START_TIMEOUT.as_secs()),
        }),
    };
    let started = spec.and_then(|spec| {
        let started = exec::spawn(&state, &spec, true)?;
        Ok((spec, started))
    });
    let (spec, mut started) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = send(&mut socket, &error_event(&e)).await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1008,
                    reason: "refused".into(),
                })))
                .await;
            return;
        }
    };
    let pid = started.pid;
    let (sink, pty) = match &mut started.io {
        CommandIo::Pipes { stdin, .. } => (InputSink::Pipe(stdin.take()), None),
        CommandIo::Pty(m) => (InputSink::Pty(m.clone()), Some(m.clone())),
    };
    let (input_tx, input_rx) = mpsc::channel::<Input>(STDIN_BOUND);
    tokio::spawn(write_input(sink, input_rx));
    if let Some(data) = spec.stdin.clone() {
        let _ = input_tx.try_send(Input::Data(Bytes::from(data)));
    }
    let (tx, mut rx) = mpsc::channel::<ExecEvent>(STREAM_BOUND);
    tokio::spawn(exec::supervise(started, spec, tx));

    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                let done = matches!(event, ExecEvent::Exit { .. });
                if send(&mut socket, &event).await.is_err() {
                    break;
                }
                if done {
                    let _ = socket.send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "exited".into(),
                    }))).await;
                    break;
                }
            }
            msg = socket.recv(), if input_tx.capacity() > 0 => {
                let reply = match msg {
                    Some(Ok(Message::Text(text))) => {
                        handle(&text, pid, pty.as_deref(), &input_tx)
                    }
                    Some(Ok(Message::Binary(data))) => {
                        let _ = input_tx.try_send(Input::Data(data));
                        Ok(())
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    // Closed or broken: dropping `rx` makes the supervisor kill the group.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                };
                if let Err(e) = reply
                    && send(&mut socket, &error_event(&e)).await.is_err()
                {
                    break;
                }
            }
        }
    }
}

/// Acts on one client message.
fn handle(
    text: &str,
    pid: u32,
    pty: Option<&PtyMaster>,
    input: &mpsc::Sender<Input>,
) -> Result<(), AgentError> {
    let msg: SessionMessage =
        serde_json::from_str(text).map_err(|e| AgentError::InvalidJson(e.to_string()))?;
    match msg {
        SessionMessage::Stdin { data, base64 } => {
            let bytes = if base64 {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(data.as_bytes())
                    .map_err(|e| AgentError::InvalidField {
                        field: "data",
                        reason: format!("not base64: {e}"),
                    })?
            } else {
                data.into_bytes()
            };
            let _ = input.try_send(Input::Data(Bytes::from(bytes)));
        }
        SessionMessage::CloseStdin => {
            let _ = input.try_send(Input::Close);
        }
        SessionMessage::Resize { rows, cols } => {
            let master = pty.ok_or_else(|| AgentError::InvalidField {
                field: "type",
                reason: "resize needs a session started with `pty`".into(),
            })?;
            if rows == 0 || cols == 0 {
                return Err(AgentError::InvalidField {
                    field: "rows",
                    reason: "rows and cols must be at least 1".into(),
                });
            }
            master
                .resize(berth_wire::PtySize { rows, cols })
                .map_err(|e| AgentError::Spawn {
                    program: "resize".into(),
                    reason: e.to_string(),
                })?;
        }
        SessionMessage::Signal { signal } => {
            let sig = procs::parse_signal(&signal)?;
            // On a terminal, the foreground job is what a user means (a shell's
            // child running in its own group); otherwise the command's group.
            let target = pty.and_then(|m| m.foreground_group()).unwrap_or(pid);
            procs::send_signal(target, sig, true)
                .or_else(|_| procs::send_signal(pid, sig, true))
                .map_err(|_| AgentError::ProcessNotFound { pid })?;
        }
    }
    Ok(())
}

/// Feeds the command's input from the channel until it closes.
async fn write_input(sink: InputSink, mut rx: mpsc::Receiver<Input>) {
    match sink {
        InputSink::Pipe(mut stdin) => {
            while let Some(input) = rx.recv().await {
                match (input, stdin.as_mut()) {
                    (Input::Data(d), Some(pipe)) => {
                        if pipe.write_all(&d).await.is_err() {
                            stdin = None;
                        }
                    }
                    (Input::Close, _) => stdin = None,
                    (Input::Data(_), None) => {}
                }
            }
        }
        InputSink::Pty(master) => {
            while let Some(input) = rx.recv().await {
                let data = match input {
                    Input::Data(d) => d,
                    Input::Close => Bytes::from_static(b"\x04"), // ^D: end of file
                };
                if master.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
    }
}

fn error_event(e: &AgentError) -> ExecEvent {
    let body = e.body();
    ExecEvent::Error {
        code: body.error.code,
        message: body.error.message,
    }
}

async fn send(socket: &mut WebSocket, event: &ExecEvent) -> Result<(), axum::Error> {
    let text = serde_json::to_string(event).unwrap_or_default();
    socket.send(Message::Text(text.into())).await
}

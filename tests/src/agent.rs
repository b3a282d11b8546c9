//! A client for the workspace-agent, for tests and benchmarks: acquire a real
//! workspace from a [`LocalBerth`], run commands through its agent and collect
//! their events, use the files API, and find the workspace's container so that
//! `docker exec` can be compared with it.

use std::time::Duration;

use base64::Engine;
use berth_wire::{ExecEvent, Workspace};
use serde_json::{Value, json};

use crate::system::LocalBerth;

/// One workspace's agent, with its token.
#[derive(Clone)]
pub struct AgentClient {
    /// e.g. `http://172.18.0.5:9000`.
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    pub workspace: Workspace,
}

/// Everything one command produced.
#[derive(Debug, Default)]
pub struct ExecOutcome {
    pub events: Vec<ExecEvent>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub truncated: bool,
    /// An `exit` event arrived.
    pub exited: bool,
}

impl ExecOutcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Folds one event in, decoding base64 output.
    pub fn push(&mut self, event: ExecEvent) {
        let decode = |data: &str, b64: bool| {
            if b64 {
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .expect("agent sent bad base64")
            } else {
                data.as_bytes().to_vec()
            }
        };
        match &event {
            ExecEvent::Stdout { data, base64 } => self.stdout.extend(decode(data, *base64)),
            ExecEvent::Stderr { data, base64 } => self.stderr.extend(decode(data, *base64)),
            ExecEvent::Exit {
                code,
                signal,
                timed_out,
                truncated,
                ..
            } => {
                self.code = *code;
                self.signal = *signal;
                self.timed_out = *timed_out;
                self.truncated = *truncated;
                self.exited = true;
            }
            _ => {}
        }
        self.events.push(event);
    }
}

/// Acquires a workspace for `conversation` from the scheduler and returns a client
/// for its agent. The pool should hold a ready slot (see [`LocalBerth::wait_pool`]).
pub async fn acquire(berth: &LocalBerth, conversation: &str) -> AgentClient {
    let resp = berth
        .http
        .post(format!("{}/v1/workspaces", berth.api))
        .json(&json!({"conversation_id": conversation}))
        .send()
        .await
        .expect("scheduler reachable");
    assert_eq!(resp.status(), 200, "acquire {conversation}");
    let workspace: Workspace = resp.json().await.expect("workspace JSON");
    AgentClient::for_workspace(workspace)
}

impl AgentClient {
    /// A client for a workspace the scheduler handed out.
    pub fn for_workspace(workspace: Workspace) -> Self {
        AgentClient {
            url: workspace.agent_url.clone(),
            token: workspace.token.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .pool_max_idle_per_host(16)
                .build()
                .expect("http client"),
            workspace,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// POST /v1/exec, returning the raw response.
    pub async fn exec_raw(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/exec"))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("agent reachable")
    }

    /// Runs one command to its end and collects what it produced.
    pub async fn exec(&self, body: Value) -> ExecOutcome {
        let resp = self.exec_raw(&body).await;
        let status = resp.status();
        if status != 200 {
            let text = resp.text().await.unwrap_or_default();
            panic!("exec {body} answered {status}: {text}");
        }
        let mut out = ExecOutcome::default();
        let mut buf: Vec<u8> = Vec::new();
        // Bytes of `buf` already known to hold no newline (lines can be long).
        let mut scanned = 0;
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await.expect("stream") {
            buf.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(nl) = buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + nl;
                let line = &buf[start..end];
                let event: ExecEvent = serde_json::from_slice(line).unwrap_or_else(|e| {
                    panic!("bad line {:?}: {e}", String::from_utf8_lossy(line))
                });
                out.push(event);
                start = end + 1;
                scanned = start;
            }
            buf.drain(..start);
            scanned = buf.len();
        }
        assert!(buf.is_empty(), "stream ended mid-line");
        out
    }

    /// Runs a shell command line to its end.
    pub async fn sh(&self, line: &str) -> ExecOutcome {
        self.exec(json!({"shell": line})).await
    }

    /// A request with the bearer token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// PUT /v1/files?path=…
    pub async fn put_file(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.request(
            reqwest::Method::PUT,
            &format!("/v1/files?path={}", encode(path)),
        )
        .body(body)
        .send()
        .await
        .expect("agent reachable")
    }

    /// GET /v1/files?path=…
    pub async fn get_file(&self, path: &str) -> reqwest::Response {
        self.request(
            reqwest::Method::GET,
            &format!("/v1/files?path={}", encode(path)),
        )
        .send()
        .await
        .expect("agent reachable")
    }

    /// The workspace's container name (`berth-<slot>-ws`), read from the agent's
    /// own environment (it is PID 1 of the container).
    pub async fn container(&self) -> String {
        let out = self
            .sh("tr '\\0' '\\n' < /proc/1/environ | grep ^BERTH_SLOT_ID=")
            .await;
        let slot = out
            .stdout_text()
            .trim()
            .strip_prefix("BERTH_SLOT_ID=")
            .unwrap_or_else(|| panic!("no slot id in the agent's env: {out:?}"))
            .to_owned();
        format!("berth-{slot}-ws")
    }
}

/// The error code of a JSON error response.
pub async fn error_code(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code, body)
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

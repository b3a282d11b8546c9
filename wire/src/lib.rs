//! Wire types shared by Berth's components.
//!
//! Every type that crosses a process boundary lives here, so that the scheduler,
//! hostd, the workspace-agent and the credential-proxy agree on one definition of
//! each message. Nothing here does I/O.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

pub mod checkpoint;
pub mod settings;
pub use settings::{
    ClaimBinding, CredentialAuth, CredentialRoute, EgressRule, EgressUpdate, EgressView, HeldClaim,
    ProxyPolicy, Refusal, SlotClaim, WorkspaceFile,
};

/// Default TCP ports of the four services.
pub mod ports {
    /// The scheduler's HTTP API.
    pub const SCHEDULER: u16 = 7700;
    /// hostd's status and slot API.
    pub const HOSTD: u16 = 7701;
    /// The workspace-agent inside every workspace.
    pub const AGENT: u16 = 9000;
    /// The credential-proxy sidecar inside every workspace task.
    pub const PROXY: u16 = 8080;
    /// The proxy's admin channel (hostd pushes a claim's policy here). hostd's
    /// egress lock refuses it to the workspace's uid, and every call must carry the
    /// slot's claim secret.
    pub const PROXY_ADMIN: u16 = 8081;
}

/// The uids of a workspace task's two containers. hostd's egress rules tell them
/// apart by these (netfilter's owner match), so they must never be the same: only
/// the proxy's uid may reach the outside.
pub mod uids {
    /// The workspace container (the agent and every command it runs).
    pub const WORKSPACE: u32 = 1000;
    /// The credential-proxy container; a uid of its own, used by nothing else.
    pub const PROXY: u32 = 2000;
}

/// Docker labels every Berth container and network carries, so that state can be
/// rebuilt from the engine and leftovers found after a crash.
pub mod labels {
    /// Present (value `1`) on everything Berth creates.
    pub const MANAGED: &str = "berth.managed";
    /// The host (hostd instance) that owns the object.
    pub const HOST: &str = "berth.host";
    /// The warm slot a container belongs to.
    pub const SLOT: &str = "berth.slot";
    /// `workspace` or `proxy`.
    pub const ROLE: &str = "berth.role";
    /// The template the slot was made from.
    pub const TEMPLATE: &str = "berth.template";
    /// Set by test runs: the run id, so a crashed run's leftovers can be removed.
    pub const TEST_RUN: &str = "berth.test-run";
}

/// What the scheduler (RunTask), ECS (Docker labels) and hostd (adoption) agree on
/// about a workspace task.
pub mod ecs {
    /// The task definition's two containers (`terraform/modules/workspace`).
    pub const WORKSPACE_CONTAINER: &str = "workspace-agent";
    pub const PROXY_CONTAINER: &str = "credential-proxy";
    /// Docker labels the ECS agent puts on every container of a task.
    pub const LABEL_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
    pub const LABEL_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
    pub const LABEL_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
    pub const LABEL_CLUSTER: &str = "com.amazonaws.ecs.cluster";
    /// Tags the scheduler puts on every task it starts.
    pub const TAG_TEMPLATE: &str = "berth:template";
    /// The instance the placement constraint named (absent for scale-out starts).
    pub const TAG_HOST: &str = "berth:host";
    /// The RunTask call the task came from (up to 10 tasks share one).
    pub const TAG_BATCH: &str = "berth:batch";
    pub const TAG_SCHEDULER: &str = "berth:scheduler";
    /// Environment the scheduler sets on the workspace container (overrides).
    pub const ENV_TEMPLATE: &str = "BERTH_TEMPLATE";
    pub const ENV_CLAIM_SECRET_SHA256: &str = "BERTH_CLAIM_SECRET_SHA256";
    /// Set on the proxy container: where its admin channel listens.
    pub const ENV_PROXY_ADMIN_LISTEN: &str = "BERTH_PROXY_ADMIN_LISTEN";

    /// A task's id, the last segment of its ARN; it is the slot's id.
    pub fn task_id(arn: &str) -> &str {
        arn.rsplit('/').next().unwrap_or(arn)
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A stable, machine-readable error body. Every error any Berth service returns
/// over HTTP has this shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable code, e.g. `workspace_not_found`; clients switch on this.
    pub code: String,
    /// Human-readable explanation; may change between versions.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.to_owned(),
                message: message.into(),
                field: None,
            },
        }
    }

    pub fn with_field(mut self, field: &str) -> Self {
        self.error.field = Some(field.to_owned());
        self
    }
}

/// Compares two secrets in time that depends only on their lengths, so a caller
/// cannot learn a token byte by byte from response times.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token host `host_id` presents, derived from the fleet's host secret:
/// hex(HMAC-SHA256(secret, host_id)). The scheduler derives it for the host id a
/// request names, so a host's token is good for that host only; a report posted for
/// another host id with it is refused.
pub fn host_token(fleet_secret: &str, host_id: &str) -> String {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut key = [0u8; BLOCK];
    if fleet_secret.len() > BLOCK {
        key[..32].copy_from_slice(&Sha256::digest(fleet_secret.as_bytes()));
    } else {
        key[..fleet_secret.len()].copy_from_slice(fleet_secret.as_bytes());
    }
    let pad = |byte: u8| key.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(host_id.as_bytes())
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Escapes text for HTML element content and double-quoted attributes.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

// === scheduler API ===

/// `POST /v1/workspaces`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateWorkspace {
    /// 1 to 256 characters, no control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 256,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
        )
    )]
    pub conversation_id: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Environment for every command the workspace runs, pushed to its agent at
    /// claim (any warm slot serves it); never stored. See the scheduler's
    /// `validate::env` for the limits.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Destinations the workspace may reach through its proxy (HTTPS tunnels);
    /// the template's default when absent.
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
    /// Credential routes, added to the template's own.
    #[serde(default)]
    pub credentials: Vec<CredentialRoute>,
    /// Small files placed in the workspace before it is handed out (after a
    /// restore, so they win over a checkpoint's copy).
    #[serde(default)]
    pub files: Vec<WorkspaceFile>,
    /// Whether a new workspace for the conversation gets its latest checkpoint
    /// (default true, when the scheduler has a checkpoint store and the template
    /// restores); `false` hands out an empty one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<bool>,
    /// What a restore that fails (archive missing, corrupt, refused) does: `fail`
    /// the create (default: the files are not silently dropped) or hand out an
    /// `empty` workspace, saying why in `restore_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_restore_error: Option<OnRestoreError>,
}

/// What a create does when its checkpoint cannot be restored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OnRestoreError {
    #[default]
    Fail,
    Empty,
}

/// Whether a workspace came from a warm pool or was started for the request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Source {
    Warm,
    Cold,
}

/// Whether a workspace can be used.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WorkspaceState {
    #[default]
    Ready,
    /// Its host died: the next `POST /v1/workspaces` for the conversation hands out
    /// a new one (`replaced` names this one).
    Lost,
}

/// A workspace as the backend sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Workspace {
    pub id: String,
    pub conversation_id: String,
    /// Base URL of the workspace-agent, e.g. `http://172.18.0.5:9000`.
    pub agent_url: String,
    /// Bearer token for the agent; bound at claim time, never reused.
    pub token: String,
    pub host_id: String,
    pub template: String,
    pub source: Source,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Set when this response replaced a workspace that was lost with its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    #[serde(default)]
    pub state: WorkspaceState,
    /// The checkpoint this workspace's files were restored from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// Why the conversation's checkpoint was not restored, when the create allowed
    /// an empty workspace instead (`on_restore_error: empty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_error: Option<ErrorDetail>,
}

// === hostd API ===

/// What hostd reports about its host on every heartbeat and on `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostReport {
    pub host_id: String,
    /// `docker` or `ecs`.
    pub runtime: String,
    /// Base URL of this hostd's API, as the scheduler should call it.
    pub hostd_url: String,
    pub instance_type: String,
    /// awsvpc tasks the host can run (ENI-trunk branches); docker runtime: slot limit.
    pub branch_limit: u32,
    pub branches_used: u32,
    /// Where `branch_limit` came from (`eni-trunking table`, `configured`, …).
    #[serde(default)]
    pub branch_limit_source: String,
    /// The machine's memory.
    pub memory_total_mib: u64,
    /// Memory kept for the system (the OS, Docker, the ECS agent, hostd); placement
    /// may use `memory_total_mib - memory_system_mib`.
    #[serde(default)]
    pub memory_system_mib: u64,
    /// Sum of the slots' reservations: what placement counts.
    pub memory_reserved_mib: u64,
    /// Sum of the slots' limits: what they may grow to (the overcommit is this over
    /// `memory_total_mib - memory_system_mib`).
    #[serde(default)]
    pub memory_limit_total_mib: u64,
    pub draining: bool,
    /// Every host check in [`HostReport::checks`] passes.
    pub compliant: bool,
    pub slots: Vec<SlotInfo>,
    /// Unix milliseconds when the report was made.
    pub reported_at_ms: u64,
    /// The host's policy checks, each with its last result.
    #[serde(default)]
    pub checks: Vec<PolicyCheck>,
}

/// One of hostd's policy checks and its last result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyCheck {
    /// Stable name, e.g. `host_rules_v4`; `docs/OPERATIONS.md` explains each.
    pub name: String,
    pub ok: bool,
    /// What was found: the reason when failing, what was verified when passing.
    pub detail: String,
    /// Unix milliseconds of the last run.
    pub checked_at_ms: u64,
}

/// Something hostd did or found that on-call should see (`/status` keeps the last 50).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostEvent {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Stable kind, e.g. `rules_reapplied`, `container_stopped`, `slot_withdrawn`.
    pub kind: String,
    /// The slot or container concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub message: String,
}

/// `POST /v1/slots` on hostd: start one warm slot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateSlot {
    pub slot_id: String,
    pub template: String,
}

/// Lifecycle of a warm slot on a host.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SlotState {
    Starting,
    Ready,
    Unhealthy,
    /// Its lock-down could not be proven; never handed out (see `SlotInfo::reason`).
    Withdrawn,
}

/// One slot (workspace task: agent + proxy) as hostd knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlotInfo {
    pub slot_id: String,
    pub template: String,
    pub host_id: String,
    pub agent_url: String,
    pub state: SlotState,
    /// Memory reserved for the slot (both containers): what placement counts.
    pub memory_mib: u64,
    /// Memory the slot's containers may grow to, together.
    #[serde(default)]
    pub memory_limit_mib: u64,
    /// What its two containers used together when hostd measured the slot idle,
    /// soon after it became ready; a reservation below it under-counts the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_idle_mib: Option<u64>,
    /// Why the slot is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix milliseconds of the last time its egress rules were read back and matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_verified_at_ms: Option<u64>,
    /// Unix milliseconds when hostd first saw the slot.
    #[serde(default)]
    pub created_at_ms: u64,
    /// The slot's claim secret: only in hostd's answer to the `POST /v1/slots` that
    /// made it (the scheduler keeps it with the warm slot), never in a report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_secret: Option<String>,
}

// === workspace-agent API ===

/// `POST /v1/claim` on the agent: bind the workspace to one conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub workspace_id: String,
    pub token: String,
    /// The slot's claim secret, which hostd gave the scheduler when it made the
    /// slot; the agent holds only its SHA-256 and refuses a claim without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_secret: Option<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Written under the workspace root before the claim is answered.
    #[serde(default)]
    pub files: Vec<WorkspaceFile>,
}

/// `POST /v1/exec` on the agent, and the first message of a `GET /v1/exec/ws` session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// argv; exactly one of `cmd` and `shell` is given.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// A shell command line run with `/bin/sh -c`.
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory: absolute, or relative to the workspace root.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command's whole process group after this long (`timed_out` in `exit`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Written to the command's stdin, which is then closed.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Forward at most this many bytes of stdout + stderr; the rest is read and
    /// dropped, and a `truncated` event says so.
    #[serde(default)]
    pub max_output_bytes: Option<u64>,
    /// WebSocket sessions only: run the command on a pseudo-terminal of this size.
    #[serde(default)]
    pub pty: Option<PtySize>,
}

/// Rows and columns of a pseudo-terminal.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// One line of the agent's exec stream (newline-delimited JSON), or one text
/// message of a WebSocket session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    Stdout {
        data: String,
        #[serde(default, skip_serializing_if = "is_false")]
        base64: bool,
    },
    Stderr {
        data: String,
        #[serde(default, skip_serializing_if = "is_false")]
        base64: bool,
    },
    /// Output reached the request's `max_output_bytes`; later output is dropped.
    Truncated {
        limit_bytes: u64,
    },
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
        duration_ms: u64,
        #[serde(default)]
        timed_out: bool,
        /// Some output was dropped because of `max_output_bytes`.
        #[serde(default, skip_serializing_if = "is_false")]
        truncated: bool,
    },
    /// WebSocket sessions only: the session could not start or a message was refused.
    Error {
        code: String,
        message: String,
    },
}

/// A client's message in a WebSocket exec session (after the first, which is an
/// [`ExecRequest`]). Binary frames are raw stdin bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SessionMessage {
    Stdin {
        data: String,
        #[serde(default)]
        base64: bool,
    },
    /// Close stdin (on a pty: send end-of-file, `^D`).
    CloseStdin,
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Signal the command's process group, e.g. `"SIGINT"`, `"INT"` or `"2"`.
    Signal {
        signal: String,
    },
}

/// `POST /v1/processes/{pid}/signal`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// `"SIGTERM"`, `"TERM"` or `"15"`.
    pub signal: String,
    /// Signal the whole process group (default) or only the command's own process.
    #[serde(default = "default_true")]
    pub group: bool,
}

fn default_true() -> bool {
    true
}

/// One command the agent started and that is still running (`GET /v1/processes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub argv: Vec<String>,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub pty: bool,
}

/// `GET /v1/processes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// What the agent is doing, for reapers that must not kill running work.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Activity {
    /// Exec streams and WebSocket sessions with a client attached.
    pub attached_streams: u64,
    /// Commands the agent started that are still running.
    pub running_commands: u64,
    /// Every live process in the workspace except the agent (includes detached ones).
    pub processes: u64,
    /// Unix milliseconds of the last authenticated request, if any.
    pub last_request_ms: Option<u64>,
}

/// `GET /health` on the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentHealth {
    pub status: String,
    pub workspace_id: Option<String>,
    pub activity: Activity,
}

/// Kind of a directory entry in [`FileEntry`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of `GET /v1/files/list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits, e.g. `0o644` (420).
    pub mode: u32,
    /// Unix milliseconds.
    pub modified_ms: i64,
}

/// `GET /v1/files/list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// More entries exist than the agent's listing limit.
    #[serde(default)]
    pub truncated: bool,
}

/// `POST /v1/files/mkdir`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    pub path: String,
    /// Create missing parents, and succeed if the directory exists.
    #[serde(default)]
    pub parents: bool,
    /// Octal permission bits as a string, e.g. `"755"`.
    #[serde(default)]
    pub mode: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_events_are_tagged_lines() {
        let line = serde_json::to_string(&ExecEvent::Exit {
            code: Some(0),
            signal: None,
            duration_ms: 3,
            timed_out: false,
            truncated: false,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"exit","code":0,"signal":null,"duration_ms":3,"timed_out":false}"#
        );
        let back: ExecEvent = serde_json::from_str(r#"{"event":"stdout","data":"hi\n"}"#).unwrap();
        assert_eq!(
            back,
            ExecEvent::Stdout {
                data: "hi\n".into(),
                base64: false
            }
        );
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
        assert!(secrets_equal(b"", b""));
    }

    #[test]
    fn host_tokens_are_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            host_token("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A secret longer than the block is hashed first, not cut.
        let long = "k".repeat(100);
        assert_ne!(host_token(&long, "h1"), host_token(&long[..64], "h1"));
        assert_ne!(host_token("secret", "h1"), host_token("secret", "h2"));
    }

    #[test]
    fn html_escape_covers_markup_and_quotes() {
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn create_workspace_rejects_unknown_fields() {
        let err = serde_json::from_str::<CreateWorkspace>(r#"{"conversation_id":"c","tmpl":"x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `tmpl`"), "{err}");
    }
}

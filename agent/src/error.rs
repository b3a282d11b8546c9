//! Every way a request to the agent can fail.
//!
//! Each variant carries what the caller got wrong (the field, the path, the limit),
//! maps to exactly one HTTP status and one stable `code`, and renders as Berth's
//! common JSON error body. There is no catch-all: an I/O failure names the
//! operation and the path, and its OS detail goes to the log, not to the client.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use berth_wire::ErrorBody;

/// Every way a request to the agent can fail.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The body is not JSON of the route's shape (includes unknown fields).
    #[error("request body is not valid JSON for this route: {0}")]
    InvalidJson(String),
    /// The body is larger than the agent accepts for this route.
    #[error("request body exceeds the {limit_name} limit of {limit} bytes")]
    BodyTooLarge {
        limit_name: &'static str,
        limit: u64,
    },
    /// A field is present and well-formed JSON but its value is refused.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// Missing, malformed or wrong bearer token, or the workspace is not claimed.
    #[error("missing, malformed or wrong bearer token")]
    Unauthorized,
    /// `POST /v1/claim` without the slot's claim secret, or with a wrong one.
    #[error("the claim does not carry this slot's claim secret")]
    ClaimRefused,
    /// `POST /v1/claim` after the workspace was claimed.
    #[error("workspace is already claimed")]
    AlreadyClaimed,
    /// The program of `cmd` does not exist (a `shell` command reports 127 itself).
    #[error("command not found: {program}")]
    CommandNotFound { program: String },
    /// The program of `cmd` exists but cannot be executed.
    #[error("command cannot be executed: {program}: permission denied")]
    CommandNotExecutable { program: String },
    /// The kernel refused to start the process (e.g. the pids limit is reached).
    #[error("cannot start {program}: {reason}")]
    Spawn { program: String, reason: String },
    /// Too many commands are running at once.
    #[error("{limit} commands are already running (max_commands)")]
    TooManyCommands { limit: usize },
    /// A path that is empty, holds NUL, or is not UTF-8.
    #[error("path {path:?} is invalid: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// A path that leads outside the workspace root (`..`, absolute, or a symlink).
    #[error("path {path:?} leads outside the workspace root")]
    PathEscape { path: String },
    #[error("no such file or directory: {path:?}")]
    FileNotFound { path: String },
    #[error("{path:?} is a directory")]
    IsADirectory { path: String },
    #[error("{path:?} is not a directory")]
    NotADirectory { path: String },
    #[error("{path:?} is not a regular file")]
    NotAFile { path: String },
    #[error("{path:?} already exists")]
    AlreadyExists { path: String },
    #[error("directory {path:?} is not empty (pass recursive=true)")]
    DirectoryNotEmpty { path: String },
    /// An upload larger than `max_file_bytes`.
    #[error("file exceeds the max_file_bytes limit of {limit} bytes")]
    FileTooLarge { limit: u64 },
    /// The workspace's file system is full (tmpfs size).
    #[error("no space left in the workspace while writing {path:?}")]
    NoSpace { path: String },
    /// Any other OS failure of a file operation.
    #[error("{op} failed for {path:?}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: nix::Error,
    },
    /// A pid the agent did not start, or whose command has ended.
    #[error("no running command with pid {pid}")]
    ProcessNotFound { pid: u32 },
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("no such route")]
    RouteNotFound,
    /// The workspace holds more than a checkpoint may (the template's limits), or
    /// an archive unpacks to more.
    #[error("more than {limit} {what} (the template's checkpoint limit), at {at:?}")]
    ArchiveTooLarge {
        what: &'static str,
        limit: u64,
        at: String,
    },
    /// An archive entry a restore does not accept (it would escape the root, or is
    /// not a file, directory or symlink). Nothing of the archive is kept.
    #[error("archive entry {entry:?} refused: {reason}")]
    ArchiveRefused { entry: String, reason: String },
    /// The archive cannot be decoded (not zstd, not tar, cut short).
    #[error("the archive cannot be decoded: {0}")]
    ArchiveCorrupt(String),
    /// The archive read is not the one its manifest describes.
    #[error("the archive's SHA-256 is {actual}, its manifest says {expected}")]
    ChecksumMismatch { expected: String, actual: String },
    /// Making the archive failed (the reason is the OS's).
    #[error("the archive could not be made: {0}")]
    ArchiveFailed(String),
    /// A restore is running; a second one, or a claim, waits for it.
    #[error("a restore into this workspace is in progress")]
    RestoreInProgress,
    /// `GET /v1/exec/ws` without a WebSocket upgrade.
    #[error("this route needs a WebSocket upgrade: {0}")]
    WebSocketRequired(String),
}

impl AgentError {
    /// The one status and stable code of each variant.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use AgentError as E;
        match self {
            E::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            E::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            E::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            E::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            E::AlreadyClaimed => (StatusCode::CONFLICT, "already_claimed"),
            E::ClaimRefused => (StatusCode::FORBIDDEN, "claim_refused"),
            E::CommandNotFound { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "command_not_found"),
            E::CommandNotExecutable { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "command_not_executable")
            }
            E::Spawn { .. } => (StatusCode::SERVICE_UNAVAILABLE, "spawn_failed"),
            E::TooManyCommands { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_commands"),
            E::InvalidPath { .. } => (StatusCode::BAD_REQUEST, "invalid_path"),
            E::PathEscape { .. } => (StatusCode::FORBIDDEN, "path_escape"),
            E::FileNotFound { .. } => (StatusCode::NOT_FOUND, "file_not_found"),
            E::IsADirectory { .. } => (StatusCode::CONFLICT, "is_a_directory"),
            E::NotADirectory { .. } => (StatusCode::CONFLICT, "not_a_directory"),
            E::NotAFile { .. } => (StatusCode::CONFLICT, "not_a_file"),
            E::AlreadyExists { .. } => (StatusCode::CONFLICT, "already_exists"),
            E::DirectoryNotEmpty { .. } => (StatusCode::CONFLICT, "directory_not_empty"),
            E::FileTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large"),
            E::NoSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            E::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "io_error"),
            E::ProcessNotFound { .. } => (StatusCode::NOT_FOUND, "process_not_found"),
            E::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            E::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            E::WebSocketRequired(_) => (StatusCode::BAD_REQUEST, "websocket_required"),
            E::ArchiveTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "archive_too_large"),
            E::ArchiveRefused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "archive_refused"),
            E::ArchiveCorrupt(_) => (StatusCode::UNPROCESSABLE_ENTITY, "archive_corrupt"),
            E::ChecksumMismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "checksum_mismatch"),
            E::ArchiveFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "archive_failed"),
            E::RestoreInProgress => (StatusCode::CONFLICT, "restore_in_progress"),
        }
    }

    /// The JSON body clients see.
    pub fn body(&self) -> ErrorBody {
        let (_, code) = self.status_and_code();
        let body = ErrorBody::new(code, self.to_string());
        match self {
            AgentError::InvalidField { field, .. } => body.with_field(field),
            AgentError::InvalidPath { .. } | AgentError::PathEscape { .. } => {
                body.with_field("path")
            }
            _ => body,
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, source = ?std::error::Error::source(&self), "request failed");
        } else {
            tracing::debug!(code, error = %self, "request refused");
        }
        (status, axum::Json(self.body())).into_response()
    }
}

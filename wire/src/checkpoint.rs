//! Checkpoints: a workspace's `/workspace` as one archive in an object store.
//!
//! The agent makes and unpacks the archive (a tar stream compressed with zstd: file
//! modes, mtimes, directories and symlinks as links; nothing is ever followed);
//! hostd carries it between the agent and the store, which only hostd (and the
//! scheduler, for listing and deleting) can reach; the scheduler decides when.
//! Every checkpoint is whole (no parent chain to replay), so a restore is one
//! object read in one pass.

use serde::{Deserialize, Serialize};

/// The limits an archive is made and unpacked under (a template's `checkpoint`
/// table): the agent refuses, rather than truncates, beyond them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArchiveLimits {
    /// Sum of the files' sizes.
    pub max_bytes: u64,
    /// Files, directories and links.
    pub max_entries: u64,
    /// Unpacked bytes per archive byte, checked once 16 MiB are unpacked: an archive
    /// that inflates more than this is refused as a decompression bomb.
    pub max_ratio: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024 * 1024,
            max_entries: 1_000_000,
            max_ratio: 1_000,
        }
    }
}

/// Headers of the agent's `GET /v1/archive` answer: what its first walk of the tree
/// counted (the stream itself is the archive).
pub mod headers {
    pub const ENTRIES: &str = "x-berth-archive-entries";
    pub const BYTES: &str = "x-berth-archive-bytes";
    pub const SKIPPED: &str = "x-berth-archive-skipped";
}

/// The agent's answer to `PUT /v1/archive` (a restore).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreSummary {
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Bytes of the archive read.
    pub archive_bytes: u64,
    /// SHA-256 (hex) of the archive as read, which matched the expected one.
    pub sha256: String,
    pub duration_ms: u64,
}

/// Why a checkpoint was taken.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CheckpointReason {
    /// `POST /v1/workspaces/{id}/checkpoint` (the end of an agent turn).
    #[default]
    Api,
    /// `DELETE /v1/workspaces/{id}`, before the workspace went.
    Release,
    /// The idle reaper, before it reaped the workspace.
    Idle,
    /// The workspace's lifetime ran out.
    Expiry,
}

impl CheckpointReason {
    /// The name the API uses (`api`, `release`, `idle`, `expiry`).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointReason::Api => "api",
            CheckpointReason::Release => "release",
            CheckpointReason::Idle => "idle",
            CheckpointReason::Expiry => "expiry",
        }
    }
}

/// A checkpoint's manifest, stored beside its archive (`<id>.json` next to
/// `<id>.tar.zst`). It is written after the archive, so a manifest names a whole
/// archive; an archive without one is an interrupted upload and is never restored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    /// `ck-<unix ms, 13 digits>-<8 hex>`: sorts by creation time.
    pub id: String,
    /// The conversation's previous checkpoint, if any (every archive is whole; this
    /// is history, not a chain to replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub conversation_id: String,
    pub workspace_id: String,
    pub template: String,
    pub reason: CheckpointReason,
    /// Bytes of the compressed archive.
    pub size: u64,
    /// SHA-256 (hex) of the compressed archive.
    pub sha256: String,
    /// Files, directories and links in it, as the agent's walk counted them just
    /// before writing it (a tree that changes meanwhile may differ by those changes).
    pub entries: u64,
    /// Bytes of file content in it, counted the same way.
    pub bytes: u64,
    /// Entries left out: symlinks that point outside the workspace (a restore would
    /// refuse them), files the agent could not read, sockets, FIFOs and devices.
    #[serde(default)]
    pub skipped: u64,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// How long the archive took to make and store.
    pub duration_ms: u64,
}

/// `POST /v1/slots/{id}/checkpoint` on hostd.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    pub conversation_id: String,
    pub workspace_id: String,
    pub template: String,
    pub reason: CheckpointReason,
    pub limits: ArchiveLimits,
    /// Checkpoints of the conversation kept after this one is stored (older ones
    /// are deleted).
    pub keep: u32,
}

/// What hostd restores into a slot before it is claimed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    pub manifest: Manifest,
    pub limits: ArchiveLimits,
}

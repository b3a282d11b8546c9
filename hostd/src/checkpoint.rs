//! Checkpoints on the host: the slot's agent archives `/workspace`, hostd streams
//! the archive into the checkpoint store; a restore streams it back into a fresh
//! slot's agent before the slot is claimed.
//!
//! Background: the store's credentials (the instance role in a fleet) are hostd's,
//! never the workspace's, and the workspace cannot reach the store (its proxy
//! refuses what its allowlist does not name, and the store is not on it) nor hostd.
//! Nothing is held whole: the agent's stream goes to the store in multipart parts
//! (a few 8 MiB parts in memory) and back the same way, hashed on the way through; the
//! agent checks the SHA-256 of what it unpacks against the manifest's.

use std::time::{Duration, Instant};

use berth_wire::checkpoint::{CheckpointRequest, Manifest, RestoreSpec, RestoreSummary, headers};
use futures_util::TryStreamExt;

use crate::{ApiError, Hostd};

/// A client for archive streams: no limit on the whole transfer (a large workspace
/// takes what it takes), only on connecting and on silence.
fn streams() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .read_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default()
    })
}

fn limits_query(l: &berth_wire::checkpoint::ArchiveLimits) -> String {
    format!(
        "max_bytes={}&max_entries={}&max_ratio={}",
        l.max_bytes, l.max_entries, l.max_ratio
    )
}

impl Hostd {
    fn store(&self) -> Result<&berth_checkpoint::Store, ApiError> {
        self.config
            .checkpoints
            .as_ref()
            .ok_or(ApiError::NoCheckpointStore)
    }

    /// Archives claimed slot `slot_id`'s `/workspace` into the store as the
    /// conversation's newest checkpoint, then keeps only its newest `keep`.
    pub async fn checkpoint_slot(
        &self,
        slot_id: &str,
        req: CheckpointRequest,
    ) -> Result<Manifest, ApiError> {
        let store = self.store()?.clone();
        let started = Instant::now();
        let claim = self
            .held_claims()
            .into_iter()
            .find(|c| c.slot_id == slot_id)
            .ok_or_else(|| ApiError::SlotNotReady {
                slot_id: slot_id.to_owned(),
                state: "not claimed".into(),
            })?;
        if claim.workspace_id != req.workspace_id {
            return Err(ApiError::SlotNotReady {
                slot_id: slot_id.to_owned(),
                state: format!(
                    "claimed by {}, not {}",
                    claim.workspace_id, req.workspace_id
                ),
            });
        }
        let agent_url = self
            .slots()
            .get(slot_id)
            .map(|s| s.agent_url.clone())
            .ok_or_else(|| ApiError::UnknownSlot(slot_id.to_owned()))?;
        // One listing serves the parent now and the pruning after.
        let mut listing = store.listing(&req.conversation_id).await?;
        let parent = listing.complete.last().cloned();
        let resp = crate::claim::push(
            "agent",
            streams()
                .get(format!(
                    "{agent_url}/v1/archive?{}",
                    limits_query(&req.limits)
                ))
                .header(
                    berth_wire::settings::CLAIM_SECRET_HEADER,
                    claim.claim_secret.unwrap_or_default(),
                ),
        )
        .await?;
        let counted = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let now = berth_wire::now_ms();
        let manifest = Manifest {
            id: berth_checkpoint::new_id(now, rand::random()),
            parent,
            conversation_id: req.conversation_id.clone(),
            workspace_id: req.workspace_id.clone(),
            template: req.template.clone(),
            reason: req.reason,
            size: 0,
            sha256: String::new(),
            entries: counted(headers::ENTRIES),
            bytes: counted(headers::BYTES),
            skipped: counted(headers::SKIPPED),
            created_at_ms: now,
            duration_ms: 0,
        };
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        let manifest = store.upload(manifest, stream, started).await?;
        listing.add(&manifest.id);
        let pruned = store
            .prune_listed(&req.conversation_id, &listing, req.keep.max(1) as usize)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "old checkpoints not pruned; the next checkpoint tries again");
                0
            });
        self.journal().event(
            "checkpoint",
            Some(slot_id),
            format!(
                "{} of {}: {} entries, {} bytes stored in {} in {} ms ({}; {pruned} older deleted)",
                manifest.id,
                req.workspace_id,
                manifest.entries,
                manifest.size,
                store.url(),
                manifest.duration_ms,
                req.reason.as_str()
            ),
        );
        tracing::info!(slot_id, checkpoint = %manifest.id, size = manifest.size,
            entries = manifest.entries, ms = manifest.duration_ms, "checkpoint stored");
        Ok(manifest)
    }

    /// Streams `spec`'s archive from the store into the (unclaimed) slot's agent,
    /// which unpacks it under `/workspace` and checks its SHA-256.
    pub(crate) async fn restore_slot(
        &self,
        slot_id: &str,
        agent_url: &str,
        claim_secret: &str,
        spec: &RestoreSpec,
    ) -> Result<RestoreSummary, ApiError> {
        let store = self.store()?;
        let archive = store.download(&spec.manifest).await?;
        let resp = crate::claim::push(
            "agent",
            streams()
                .put(format!(
                    "{agent_url}/v1/archive?sha256={}&{}",
                    spec.manifest.sha256,
                    limits_query(&spec.limits)
                ))
                .header(berth_wire::settings::CLAIM_SECRET_HEADER, claim_secret)
                .header(reqwest::header::CONTENT_TYPE, "application/zstd")
                .body(reqwest::Body::wrap_stream(archive)),
        )
        .await?;
        let summary: RestoreSummary = crate::claim::answer("agent", resp).await?;
        self.journal().event(
            "restored",
            Some(slot_id),
            format!(
                "{} of conversation {}: {} entries, {} bytes in {} ms",
                spec.manifest.id,
                spec.manifest.conversation_id,
                summary.entries,
                summary.bytes,
                summary.duration_ms
            ),
        );
        Ok(summary)
    }
}

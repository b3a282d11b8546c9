//! Checkpoints, as the scheduler decides them: at the backend's call (the end of an
//! agent turn), before a release and before a reaper takes a workspace; restored
//! into a conversation's next workspace; deleted with the conversation.
//!
//! The archive itself never passes through here: the slot's hostd streams it from
//! the agent to the store and back. The scheduler reads the store only to find a
//! conversation's latest checkpoint (one listing of its prefix, for a create that
//! needs a new workspace) and to delete a conversation's checkpoints.

use berth_wire::checkpoint::{ArchiveLimits, CheckpointReason, CheckpointRequest, Manifest};

use super::*;

impl Scheduler {
    /// The template's checkpoint policy, when the scheduler has a store at all.
    pub(crate) fn checkpoint_policy(&self, template: &str) -> Option<templates::CheckpointPolicy> {
        self.inner.config.checkpoints.as_ref()?;
        Some(
            self.inner
                .config
                .templates
                .policy(template)
                .checkpoint
                .clone(),
        )
    }

    fn checkpoint_store(&self) -> Result<&berth_checkpoint::Store, ApiError> {
        self.inner
            .config
            .checkpoints
            .as_ref()
            .ok_or(ApiError::CheckpointsOff)
    }

    /// Archives workspace `id`'s files as its conversation's newest checkpoint.
    pub async fn checkpoint(
        &self,
        id: &str,
        reason: CheckpointReason,
    ) -> Result<Manifest, ApiError> {
        let record = self.workspace(id).await?;
        if record.status == WorkspaceStatus::Lost {
            return Err(ApiError::Lost(id.into()));
        }
        self.checkpoint_record(&record, reason).await
    }

    /// Archives `record`'s files through its hostd.
    pub(crate) async fn checkpoint_record(
        &self,
        record: &WorkspaceRecord,
        reason: CheckpointReason,
    ) -> Result<Manifest, ApiError> {
        self.checkpoint_store()?;
        let w = &record.workspace;
        let policy = self
            .inner
            .config
            .templates
            .policy(&w.template)
            .checkpoint
            .clone();
        let Some(url) = self.hostd_url(&w.host_id).await? else {
            return Err(ApiError::Slot {
                status: 502,
                code: "host_unknown".into(),
                message: format!("host {} is not in the fleet", w.host_id),
            });
        };
        let req = CheckpointRequest {
            conversation_id: w.conversation_id.clone(),
            workspace_id: w.id.clone(),
            template: w.template.clone(),
            reason,
            limits: policy.limits(),
            keep: policy.keep,
        };
        match self
            .inner
            .clients
            .checkpoint_slot(&url, &w.host_id, &record.slot_id, &req)
            .await
        {
            Ok(m) => {
                self.inner
                    .counters
                    .checkpoints
                    .fetch_add(1, Ordering::Relaxed);
                self.event(
                    "checkpoint",
                    &w.id,
                    format!(
                        "{} ({}): {} bytes in {} ms",
                        m.id,
                        reason.as_str(),
                        m.size,
                        m.duration_ms
                    ),
                );
                Ok(m)
            }
            Err(e) => {
                self.inner
                    .counters
                    .checkpoints_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.event(
                    "checkpoint_failed",
                    &w.id,
                    format!("{}: {e}", reason.as_str()),
                );
                Err(checkpoint_error(e))
            }
        }
    }

    /// What a new workspace for the conversation restores: its latest checkpoint,
    /// unless the request, the template or the missing store say not to.
    pub(crate) async fn restore_for(
        &self,
        req: &CreateWorkspace,
        template: &str,
    ) -> Result<Option<berth_wire::checkpoint::RestoreSpec>, ApiError> {
        if req.restore == Some(false) {
            return Ok(None);
        }
        let Some(policy) = self.checkpoint_policy(template).filter(|p| p.restore) else {
            return Ok(None);
        };
        let store = self.checkpoint_store()?;
        let latest = store
            .latest(&req.conversation_id)
            .await
            .map_err(|e| ApiError::CheckpointStore(e.to_string()))?;
        Ok(latest.map(|manifest| berth_wire::checkpoint::RestoreSpec {
            manifest,
            limits: policy.limits(),
        }))
    }

    /// The conversation's checkpoints, oldest first.
    pub async fn conversation_checkpoints(
        &self,
        conversation_id: &str,
    ) -> Result<Vec<Manifest>, ApiError> {
        self.checkpoint_store()?
            .list(conversation_id)
            .await
            .map_err(|e| ApiError::CheckpointStore(e.to_string()))
    }

    /// The user deleted the conversation: its live workspace is released (without
    /// a checkpoint) and every checkpoint of it deleted.
    pub async fn delete_conversation(
        &self,
        conversation_id: &str,
    ) -> Result<ConversationDeleted, ApiError> {
        let mut released = Vec::new();
        if let Some(r) = self
            .inner
            .store
            .workspace_for_conversation(conversation_id)
            .await?
            && let Some(gone) = self.inner.store.remove_workspace(&r.workspace.id).await?
        {
            if !gone.slot_id.is_empty() {
                self.discard_slot(
                    &gone.workspace.host_id,
                    &gone.slot_id,
                    "conversation deleted",
                )
                .await;
            }
            released.push(gone.workspace.id);
        }
        let checkpoints_deleted = match &self.inner.config.checkpoints {
            Some(store) => store
                .delete_conversation(conversation_id)
                .await
                .map_err(|e| ApiError::CheckpointStore(e.to_string()))?,
            None => 0,
        };
        tracing::info!(
            conversation_id,
            released = released.len(),
            checkpoints_deleted,
            "conversation deleted"
        );
        Ok(ConversationDeleted {
            conversation_id: conversation_id.to_owned(),
            released,
            checkpoints_deleted,
        })
    }
}

/// `DELETE /v1/conversations/{id}`'s answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ConversationDeleted {
    pub conversation_id: String,
    /// Workspaces of the conversation that were released.
    pub released: Vec<String>,
    pub checkpoints_deleted: usize,
}

/// A failed checkpoint or restore as the API says it: what the agent or the store
/// said passes through with its code.
pub(crate) fn checkpoint_error(e: clients::CallError) -> ApiError {
    match e {
        clients::CallError::Refused {
            status,
            code,
            message,
            ..
        } => ApiError::Checkpoint {
            status,
            code,
            message,
        },
        e => ApiError::Slot {
            status: 502,
            code: "unreachable".into(),
            message: e.to_string(),
        },
    }
}

/// The codes a failed checkpoint or restore keeps from the agent, hostd or the
/// store (anything else is `checkpoint_failed`); a claim that fails with one of
/// them failed because of its restore, not its slot.
pub(crate) const CODES: [&str; 10] = [
    "archive_too_large",
    "archive_refused",
    "archive_corrupt",
    "checksum_mismatch",
    "checkpoint_missing",
    "checkpoint_corrupt",
    "checkpoint_store_failed",
    "checkpoints_not_configured",
    "archive_failed",
    "no_space",
];

/// Whether a claim failed because of its restore.
pub(crate) fn is_restore_failure(code: &str) -> bool {
    CODES.contains(&code)
}

impl templates::CheckpointPolicy {
    /// The limits archives of the template are made and unpacked under.
    pub fn limits(&self) -> ArchiveLimits {
        ArchiveLimits {
            max_bytes: self.max_bytes,
            max_entries: self.max_entries,
            max_ratio: self.max_ratio,
        }
    }
}

//! Claims: binding a warm slot to one conversation, on the slot's own host.
//!
//! Background: the scheduler decides which slot serves a conversation; hostd, which
//! sits beside the slot in both runtimes, does the binding. It pushes the claim's
//! [`berth_wire::ProxyPolicy`] to the proxy's admin channel and the token, env and
//! files to the agent, at the same time, and answers only when both took it. Both
//! calls carry the slot's claim secret, which only the scheduler and hostd hold
//! (the containers have its SHA-256). Later calls for the slot (the egress
//! allowlist) bring the secret in [`berth_wire::settings::CLAIM_SECRET_HEADER`].
//!
//! hostd keeps each claim it made, in memory, until the slot goes: the workspace's
//! id, token and claim secret and the rest of its record ([`berth_wire::ClaimBinding`]).
//! If the scheduler's state is lost (Redis flushed, failover to an empty replica),
//! its leader reads them back from `GET /v1/inventory` (host token only) and
//! rebuilds every binding, so live conversations keep their workspaces. They are
//! what hostd pushed into the slot anyway; a hostd restart forgets them (a state
//! loss at the same time leaves those slots to the orphan reaper).

use std::sync::OnceLock;
use std::time::Duration;

use berth_wire::{ClaimRequest, EgressUpdate, EgressView, SlotClaim, SlotState, ports};

use crate::{ApiError, Hostd};

/// How long one push to a slot's agent or proxy may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(PUSH_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
}

/// The slot's address, from its agent URL (both containers share it).
fn slot_address(agent_url: &str) -> Option<String> {
    let rest = agent_url.strip_prefix("http://")?;
    let (host, _port) = rest.rsplit_once(':')?;
    (!host.is_empty()).then(|| host.to_owned())
}

impl Hostd {
    /// The admin URL of a ready slot's proxy.
    fn proxy_admin(&self, slot_id: &str) -> Result<(String, String), ApiError> {
        let slots = self.slots();
        let info = slots
            .get(slot_id)
            .ok_or_else(|| ApiError::UnknownSlot(slot_id.to_owned()))?;
        if info.state != SlotState::Ready {
            return Err(ApiError::SlotNotReady {
                slot_id: slot_id.to_owned(),
                state: format!("{:?}", info.state).to_lowercase(),
            });
        }
        let addr = slot_address(&info.agent_url)
            .ok_or_else(|| ApiError::UnknownSlot(slot_id.to_owned()))?;
        Ok((
            format!("http://{addr}:{}", ports::PROXY_ADMIN),
            info.agent_url.clone(),
        ))
    }

    /// Binds slot `slot_id`: the proxy's policy and the agent's claim, pushed at once.
    pub async fn claim_slot(&self, slot_id: &str, claim: SlotClaim) -> Result<(), ApiError> {
        let (admin, agent_url) = self.proxy_admin(slot_id)?;
        let secret = claim.claim_secret.clone().unwrap_or_default();
        let to_proxy = push(
            "proxy",
            http()
                .put(format!("{admin}/v1/policy"))
                .bearer_auth(&secret)
                .json(&claim.policy),
        );
        let agent_claim = ClaimRequest {
            workspace_id: claim.workspace_id.clone(),
            token: claim.token,
            claim_secret: claim.claim_secret,
            env: claim.env,
            files: claim.files,
        };
        // A checkpoint to restore goes in before the claim (the agent takes one
        // only while unclaimed), beside the proxy's policy push.
        let restore = claim.restore.clone();
        let to_agent = async {
            if let Some(spec) = &restore {
                self.restore_slot(slot_id, &agent_url, &secret, spec)
                    .await?;
            }
            push(
                "agent",
                http()
                    .post(format!("{agent_url}/v1/claim"))
                    .json(&agent_claim),
            )
            .await
        };
        let (proxy, agent) = tokio::join!(to_proxy, to_agent);
        proxy?;
        agent?;
        self.claims_lock().insert(
            slot_id.to_owned(),
            berth_wire::HeldClaim {
                slot_id: slot_id.to_owned(),
                workspace_id: claim.workspace_id.clone(),
                token: agent_claim.token,
                claim_secret: agent_claim.claim_secret,
                binding: claim.binding,
            },
        );
        tracing::info!(slot_id, workspace_id = %claim.workspace_id,
            routes = claim.policy.routes.len(), egress_rules = claim.policy.egress.len(),
            "slot claimed: policy on its proxy, env and files on its agent");
        Ok(())
    }

    fn claims_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, berth_wire::HeldClaim>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The claims of slots this host still runs (claims of slots gone are dropped).
    pub fn held_claims(&self) -> Vec<berth_wire::HeldClaim> {
        let live: std::collections::BTreeSet<String> = self.slots().keys().cloned().collect();
        let mut claims = self.claims_lock();
        claims.retain(|id, _| live.contains(id));
        claims.values().cloned().collect()
    }

    pub(crate) fn forget_claim(&self, slot_id: &str) {
        self.claims_lock().remove(slot_id);
    }

    /// The slot's egress allowlist and latest refusals, from its proxy.
    pub async fn slot_egress(&self, slot_id: &str, secret: &str) -> Result<EgressView, ApiError> {
        let (admin, _) = self.proxy_admin(slot_id)?;
        let resp = push(
            "proxy",
            http().get(format!("{admin}/v1/egress")).bearer_auth(secret),
        )
        .await?;
        answer("proxy", resp).await
    }

    /// Replaces the slot's egress allowlist on its proxy.
    pub async fn set_slot_egress(
        &self,
        slot_id: &str,
        secret: &str,
        update: &EgressUpdate,
    ) -> Result<EgressView, ApiError> {
        let (admin, _) = self.proxy_admin(slot_id)?;
        let resp = push(
            "proxy",
            http()
                .put(format!("{admin}/v1/egress"))
                .bearer_auth(secret)
                .json(update),
        )
        .await?;
        let view: EgressView = answer("proxy", resp).await?;
        self.journal().event(
            "egress_changed",
            Some(slot_id),
            format!("egress allowlist replaced: {} rules", view.egress.len()),
        );
        Ok(view)
    }
}

/// A push's JSON answer; one that is not what was asked for is `502 bad_answer`.
pub(crate) async fn answer<T: serde::de::DeserializeOwned>(
    what: &'static str,
    resp: reqwest::Response,
) -> Result<T, ApiError> {
    resp.json().await.map_err(|e| ApiError::Push {
        what,
        status: 502,
        code: "bad_answer".into(),
        message: e.to_string(),
        field: None,
    })
}

/// Sends one push, turning every failure into [`ApiError::Push`] with what the far
/// side said.
pub(crate) async fn push(
    what: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, ApiError> {
    let resp = req.send().await.map_err(|e| ApiError::Push {
        what,
        status: 502,
        code: "unreachable".into(),
        message: e.to_string(),
        field: None,
    })?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body: Option<berth_wire::ErrorBody> = resp.json().await.ok();
    let (code, message, field) = body
        .map(|b| (b.error.code, b.error.message, b.error.field))
        .unwrap_or_else(|| ("unknown".into(), "no error body".into(), None));
    Err(ApiError::Push {
        what,
        status,
        code,
        message,
        field,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_address_comes_from_its_agent_url() {
        assert_eq!(
            slot_address("http://172.18.0.5:9000").as_deref(),
            Some("172.18.0.5")
        );
        assert_eq!(
            slot_address("http://[fd00::5]:9000").as_deref(),
            Some("[fd00::5]")
        );
        assert_eq!(slot_address("https://x:9000"), None);
        assert_eq!(slot_address(""), None);
    }
}

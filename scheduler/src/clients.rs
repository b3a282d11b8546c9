//! HTTP clients for hostd's slot API: slots made and removed (the docker runtime),
//! claims and per-slot changes (both runtimes: hostd pushes them into the slot).

use std::time::Duration;

use berth_wire::{
    AgentHealth, CreateSlot, EgressUpdate, EgressView, ErrorBody, HeldClaim, HostReport, SlotClaim,
    SlotInfo,
};

/// Longest a checkpoint call to hostd may take (4 GiB at a modest 20 MiB/s).
pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a call to hostd or an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{what} at {url}: {source}")]
    Transport {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} at {url} answered {status}: {code}: {message}")]
    Refused {
        what: &'static str,
        url: String,
        status: u16,
        code: String,
        message: String,
    },
}

impl CallError {
    /// The stable code the far side answered, if it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Refused { code, .. } => Some(code),
            CallError::Transport { .. } => None,
        }
    }

    /// The HTTP status the far side answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Refused { status, .. } => Some(*status),
            CallError::Transport { .. } => None,
        }
    }
}

/// Talks to hostd and agents.
#[derive(Clone)]
pub struct Clients {
    http: reqwest::Client,
    /// The fleet's host secret; each call to a hostd presents that host's token.
    host_secret: String,
}

impl Clients {
    pub fn new(host_secret: String) -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                // Creating a cold slot waits for the agent: allow for a slow engine.
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            host_secret,
        }
    }

    /// Asks hostd to start a slot; returns once its agent is healthy.
    pub async fn create_slot(
        &self,
        hostd_url: &str,
        host_id: &str,
        req: &CreateSlot,
    ) -> Result<SlotInfo, CallError> {
        let url = format!("{hostd_url}/v1/slots");
        let resp = send(
            "hostd",
            &url,
            self.http
                .post(&url)
                .bearer_auth(berth_wire::host_token(&self.host_secret, host_id))
                .json(req),
        )
        .await?;
        decode("hostd", url, resp).await
    }

    pub async fn destroy_slot(
        &self,
        hostd_url: &str,
        host_id: &str,
        slot_id: &str,
    ) -> Result<(), CallError> {
        let url = format!("{hostd_url}/v1/slots/{slot_id}");
        let resp = send(
            "hostd",
            &url,
            self.http
                .delete(&url)
                .bearer_auth(berth_wire::host_token(&self.host_secret, host_id)),
        )
        .await?;
        decode::<serde_json::Value>("hostd", url, resp)
            .await
            .map(|_| ())
    }

    /// One slot as its hostd reports it; `None` if hostd does not (yet) know it.
    pub async fn slot(
        &self,
        hostd_url: &str,
        host_id: &str,
        slot_id: &str,
    ) -> Result<Option<SlotInfo>, CallError> {
        let url = format!("{hostd_url}/v1/slots/{slot_id}");
        let resp = send(
            "hostd",
            &url,
            self.http
                .get(&url)
                .timeout(Duration::from_secs(5))
                .bearer_auth(berth_wire::host_token(&self.host_secret, host_id)),
        )
        .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode("hostd", url, resp).await.map(Some)
    }

    /// An agent's open `/health`: which workspace it serves and what it is doing. Read
    /// here rather than the token-checked `/v1/activity`, which counts as a request
    /// and would keep every workspace it looks at busy.
    pub async fn agent_health(&self, agent_url: &str) -> Result<AgentHealth, CallError> {
        let url = format!("{agent_url}/health");
        let resp = send(
            "agent",
            &url,
            self.http.get(&url).timeout(Duration::from_secs(5)),
        )
        .await?;
        decode("agent", url, resp).await
    }

    /// The claims hostd holds for the slots it runs (the rebuild after a state loss).
    pub async fn held_claims(
        &self,
        hostd_url: &str,
        host_id: &str,
    ) -> Result<Vec<HeldClaim>, CallError> {
        let url = format!("{hostd_url}/v1/inventory");
        let resp = send(
            "hostd",
            &url,
            self.http
                .get(&url)
                .timeout(Duration::from_secs(10))
                .bearer_auth(berth_wire::host_token(&self.host_secret, host_id)),
        )
        .await?;
        decode("hostd", url, resp).await
    }

    /// hostd's `/status`: its report, with every slot it runs.
    pub async fn host_status(&self, hostd_url: &str) -> Result<HostReport, CallError> {
        let url = format!("{hostd_url}/status");
        let resp = send(
            "hostd",
            &url,
            self.http.get(&url).timeout(Duration::from_secs(5)),
        )
        .await?;
        decode("hostd", url, resp).await
    }

    /// Binds a slot to a workspace: hostd pushes the token, env and files to its
    /// agent and the policy to its proxy.
    pub async fn claim_slot(
        &self,
        hostd_url: &str,
        host_id: &str,
        slot_id: &str,
        req: &SlotClaim,
    ) -> Result<(), CallError> {
        let url = format!("{hostd_url}/v1/slots/{slot_id}/claim");
        let resp = send(
            "hostd",
            &url,
            self.http
                .post(&url)
                // A restore streams the checkpoint in first; the create's deadline
                // bounds it too.
                .timeout(if req.restore.is_some() {
                    CHECKPOINT_TIMEOUT
                } else {
                    Duration::from_secs(10)
                })
                .bearer_auth(berth_wire::host_token(&self.host_secret, host_id))
                .json(req),
        )
        .await?;
        decode::<serde_json::Value>("hostd", url, resp)
            .await
            .map(|_| ())
    }

    /// Asks the slot's hostd to archive its `/workspace` into the checkpoint store.
    pub async fn checkpoint_slot(
        &self,
        hostd_url: &str,
        host_id: &str,
        slot_id: &str,
        req: &berth_wire::checkpoint::CheckpointRequest,
    ) -> Result<berth_wire::checkpoint::Manifest, CallError> {
        let url = format!("{hostd_url}/v1/slots/{slot_id}/checkpoint");
        let resp = send(
            "hostd",
            &url,
            self.http
                .post(&url)
                // A large workspace takes what it takes; hostd bounds silence.
                .timeout(CHECKPOINT_TIMEOUT)
                .bearer_auth(berth_wire::host_token(&self.host_secret, host_id))
                .json(req),
        )
        .await?;
        decode("hostd", url, resp).await
    }

    /// A claimed slot's egress allowlist and latest refusals; with `update`, replaces
    /// the allowlist first.
    pub async fn slot_egress(
        &self,
        hostd_url: &str,
        host_id: &str,
        slot_id: &str,
        claim_secret: &str,
        update: Option<&EgressUpdate>,
    ) -> Result<EgressView, CallError> {
        let url = format!("{hostd_url}/v1/slots/{slot_id}/egress");
        let req = match update {
            Some(u) => self.http.put(&url).json(u),
            None => self.http.get(&url),
        };
        let resp = send(
            "hostd",
            &url,
            req.timeout(Duration::from_secs(10))
                .bearer_auth(berth_wire::host_token(&self.host_secret, host_id))
                .header(berth_wire::settings::CLAIM_SECRET_HEADER, claim_secret),
        )
        .await?;
        decode("hostd", url, resp).await
    }
}

/// Sends a request, naming the far side and the URL if it cannot be reached.
async fn send(
    what: &'static str,
    url: &str,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, CallError> {
    req.send().await.map_err(|source| CallError::Transport {
        what,
        url: url.to_owned(),
        source,
    })
}

async fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    url: String,
    resp: reqwest::Response,
) -> Result<T, CallError> {
    let status = resp.status();
    if status.is_success() {
        return resp
            .json()
            .await
            .map_err(|source| CallError::Transport { what, url, source });
    }
    let body: Option<ErrorBody> = resp.json().await.ok();
    let (code, message) = body
        .map(|b| (b.error.code, b.error.message))
        .unwrap_or_else(|| ("unknown".into(), "no error body".into()));
    Err(CallError::Refused {
        what,
        url,
        status: status.as_u16(),
        code,
        message,
    })
}

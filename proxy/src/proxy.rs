//! The request path: admit, route, strip, inject, forward, stream back, audit.
//!
//! Background: each request from the workspace goes through the same short list
//! of gates, in this order, and the first gate that says no answers with its
//! [`ProxyError`]: CONNECT (allowlist, then checked connect); Host ambiguity;
//! absolute-form targets (only configured upstreams); path hygiene; route by
//! prefix; method and path policy; protocol upgrades; declared body size. Only
//! then is the request rewritten — client credentials and hop-by-hop headers out,
//! Host rewritten, the route's credential in — and sent on a pooled connection
//! made by [`crate::upstream::Connector`]. Nothing a request carries chooses the
//! address the proxy connects to.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;

use crate::body::{
    Audit, AuditedBody, LimitedBody, ProxyBody, RedactingBody, body_state, empty, full,
};
use crate::config::{AuthMethod, Config, split_host_port};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::net::{AddressPolicy, ConnectError, SharedResolver, connect_checked};
use crate::policy::{Egress, compile_routes};
use crate::route::{Route, RouteTable, check_path};
use crate::secrets::SecretStore;
use crate::sign::{ChainCredentials, credentials_from_secret, sign};
use crate::upstream::Connector;

/// How long a request waits for a claim's secrets to be fetched the first time.
const FIRST_FETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    /// The file's routes plus the claim's; swapped whole when a claim arrives.
    live: RwLock<Arc<Live>>,
    /// The file's CONNECT targets.
    tunnels: HashMap<(String, u16), AddressPolicy>,
    /// The claim's egress allowlist; swapped whole on every change.
    egress: RwLock<Arc<Egress>>,
    connector: Connector,
    client: Client<Connector, ProxyBody>,
    resolver: SharedResolver,
    /// The file's secrets.
    pub secrets: Arc<SecretStore>,
    sdk: Arc<tokio::sync::OnceCell<aws_config::SdkConfig>>,
    chain: tokio::sync::OnceCell<Option<Arc<ChainCredentials>>>,
    pub metrics: Arc<Metrics>,
    config: Config,
    workspace_id: RwLock<Arc<str>>,
    refusals: Mutex<VecDeque<berth_wire::Refusal>>,
    /// Unix ms of the last egress let out (0: none yet), for the idle reaper.
    last_egress_ms: AtomicU64,
    open_tunnels: AtomicU64,
}

/// The routes in force and the claim's secrets behind them.
struct Live {
    routes: RouteTable,
    /// The claim's secrets, once their store is built (in the background: building
    /// it loads the AWS configuration, which a claim must not wait for).
    claim_secrets: tokio::sync::watch::Receiver<Option<Arc<SecretStore>>>,
    /// Builds the claim's store, then refreshes it; stopped when this policy is
    /// replaced.
    refresh: Option<tokio::task::AbortHandle>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(h) = &self.refresh {
            h.abort();
        }
    }
}

/// What a policy push installed, as the admin channel answers it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicySummary {
    pub workspace_id: String,
    pub routes: usize,
    pub egress_rules: usize,
    pub secrets: usize,
}

/// The proxy could not be built from a validated configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("route {route}: {message}")]
    Route { route: String, message: String },
    #[error(transparent)]
    Tls(#[from] crate::upstream::TlsSetupError),
}

impl Proxy {
    /// Builds the proxy. `sdk` is the AWS configuration from the standard chain,
    /// needed only when a secret lives in Secrets Manager or a SigV4 route signs
    /// with the proxy's own credentials.
    pub fn new(
        config: Config,
        resolver: SharedResolver,
        sdk: Option<&aws_config::SdkConfig>,
    ) -> Result<Self, BuildError> {
        let metrics = Arc::new(Metrics::default());
        let routes = file_routes(&config)?;
        let targets = targets_of(&routes);
        let mut tunnels = HashMap::new();
        for c in &config.connect {
            if let Some((h, p)) = split_host_port(&c.target) {
                let policy =
                    AddressPolicy::from_strings(&c.allow_private_upstream).map_err(|message| {
                        BuildError::Route {
                            route: format!("connect {}", c.target),
                            message,
                        }
                    })?;
                tunnels.insert((h.to_ascii_lowercase(), p), policy);
            }
        }
        let roots = crate::upstream::load_roots(&config.tls)?;
        let connector = Connector::new(
            targets,
            resolver.clone(),
            roots,
            config.limits.upstream_connect_timeout(),
            metrics.upstream_connects.clone(),
        );
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector.clone());
        let secrets = Arc::new(match sdk {
            Some(sdk) if SecretStore::needs_secrets_manager(&config.secrets) => SecretStore::new(
                &config.secrets,
                &config.secrets_manager,
                &config.tls,
                Some(sdk),
            ),
            _ => SecretStore::new(&config.secrets, &config.secrets_manager, &config.tls, None),
        });
        let chain = tokio::sync::OnceCell::new();
        let sdk_cell = Arc::new(tokio::sync::OnceCell::new());
        if let Some(sdk) = sdk {
            let _ = chain.set(
                sdk.credentials_provider()
                    .map(|p| Arc::new(ChainCredentials::new(p))),
            );
            let _ = sdk_cell.set(sdk.clone());
        }
        let workspace_id: Arc<str> = Arc::from(config.workspace_id.as_deref().unwrap_or("-"));
        Ok(Self {
            live: RwLock::new(Arc::new(Live {
                routes: RouteTable::new(routes),
                claim_secrets: tokio::sync::watch::channel(None).1,
                refresh: None,
            })),
            tunnels,
            egress: RwLock::new(Arc::new(Egress::default())),
            connector,
            client,
            resolver,
            secrets,
            sdk: sdk_cell,
            chain,
            metrics,
            config,
            workspace_id: RwLock::new(workspace_id),
            refusals: Mutex::new(VecDeque::new()),
            last_egress_ms: AtomicU64::new(0),
            open_tunnels: AtomicU64::new(0),
        })
    }

    fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn egress_now(&self) -> Arc<Egress> {
        self.egress
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn workspace(&self) -> Arc<str> {
        self.workspace_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The AWS configuration, loaded from the standard chain the first time a
    /// claim needs it (an idle sidecar never pays for it).
    async fn aws(&self) -> &aws_config::SdkConfig {
        sdk_in(&self.sdk, &self.config).await
    }

    /// Builds a claim's secret store in the background (the AWS configuration loads
    /// on the first claim that needs it), publishes it, then keeps it fresh.
    fn spawn_claim_store(
        &self,
        secrets: std::collections::BTreeMap<String, crate::config::SecretConfig>,
    ) -> (
        tokio::sync::watch::Receiver<Option<Arc<SecretStore>>>,
        tokio::task::AbortHandle,
    ) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let cell = self.sdk.clone();
        let config = self.config.clone();
        let task = tokio::spawn(async move {
            let sdk = sdk_in(&cell, &config).await;
            let store = Arc::new(SecretStore::new(
                &secrets,
                &config.secrets_manager,
                &config.tls,
                Some(sdk),
            ));
            let _ = tx.send(Some(store.clone()));
            store.run_refresh().await;
        });
        (rx, task.abort_handle())
    }

    async fn chain(&self) -> Option<Arc<ChainCredentials>> {
        self.chain
            .get_or_init(|| async {
                self.aws()
                    .await
                    .credentials_provider()
                    .map(|p| Arc::new(ChainCredentials::new(p)))
            })
            .await
            .clone()
    }

    /// Installs a claim's policy: its credential routes beside the file's, its
    /// egress allowlist, and a store for the secrets its routes reference (fetched
    /// from here on, in the background). Validated whole first: a policy that does
    /// not pass changes nothing.
    pub async fn apply_policy(
        &self,
        policy: &berth_wire::ProxyPolicy,
    ) -> Result<PolicySummary, crate::ConfigError> {
        let egress = Egress::compile(&policy.egress, &policy.allow_private)?;
        let claimed = compile_routes(&self.config, policy)?;
        let file = file_routes(&self.config).map_err(|e| crate::ConfigError::Invalid {
            field: "routes".into(),
            message: e.to_string(),
        })?;
        let n_secrets = claimed.secrets.len();
        let (store, refresh) = if claimed.secrets.is_empty() {
            (tokio::sync::watch::channel(None).1, None)
        } else {
            let (rx, task) = self.spawn_claim_store(claimed.secrets);
            (rx, Some(task))
        };
        let mut routes = file;
        let n_routes = claimed.routes.len();
        routes.extend(claimed.routes);
        self.connector.set_targets(targets_of(&routes));
        let summary = PolicySummary {
            workspace_id: policy.workspace_id.clone(),
            routes: n_routes,
            egress_rules: egress.rules.len(),
            secrets: n_secrets,
        };
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Live {
            routes: RouteTable::new(routes),
            claim_secrets: store,
            refresh,
        });
        *self.egress.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(egress);
        if !policy.workspace_id.is_empty() {
            *self.workspace_id.write().unwrap_or_else(|e| e.into_inner()) =
                Arc::from(policy.workspace_id.as_str());
        }
        tracing::info!(
            workspace_id = %policy.workspace_id,
            routes = summary.routes,
            egress_rules = summary.egress_rules,
            secrets = summary.secrets,
            "claim policy installed"
        );
        Ok(summary)
    }

    /// Replaces the egress allowlist alone (the claim's private ranges stay); new
    /// tunnels follow it at once.
    pub fn set_egress(
        &self,
        rules: &[berth_wire::EgressRule],
    ) -> Result<usize, crate::ConfigError> {
        let allow_private = self.egress_now().allow_private.clone();
        let egress = Egress::compile(rules, &allow_private)?;
        let n = egress.rules.len();
        *self.egress.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(egress);
        tracing::info!(egress_rules = n, "egress allowlist replaced");
        Ok(n)
    }

    /// The allowlist in force and the latest refusals, oldest first.
    pub fn egress_view(&self) -> berth_wire::EgressView {
        berth_wire::EgressView {
            egress: self.egress_now().rules.clone(),
            refused: self
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
            last_egress_ms: match self.last_egress_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(ms),
            },
            open_tunnels: self.open_tunnels.load(Ordering::Relaxed),
        }
    }

    /// Notes egress let out now.
    fn egress_seen(&self) {
        self.last_egress_ms
            .store(berth_wire::now_ms(), Ordering::Relaxed);
    }

    fn record_refusal(&self, destination: String, err: &ProxyError) {
        let mut q = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == berth_wire::settings::REFUSALS_KEPT {
            q.pop_front();
        }
        q.push_back(berth_wire::Refusal {
            at_ms: berth_wire::now_ms(),
            destination,
            code: err.code().to_owned(),
            reason: err.public_message(),
        });
    }

    /// Whether the AWS configuration is needed (Secrets Manager or chain signing).
    pub fn needs_aws(config: &Config) -> bool {
        SecretStore::needs_secrets_manager(&config.secrets)
            || config
                .routes
                .iter()
                .any(|r| r.auth == AuthMethod::Sigv4 && r.secret.is_none())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves one request; never fails at the service level.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let result = if method == Method::CONNECT {
            self.clone().tunnel(req, start).await
        } else {
            self.clone().forward(req, start).await
        };
        Ok(match result {
            Ok(resp) => {
                self.egress_seen();
                resp
            }
            Err((route, err)) => self.refuse(route, &method, &path, err, start),
        })
    }

    fn refuse(
        &self,
        route: Option<String>,
        method: &Method,
        path: &str,
        err: ProxyError,
        start: Instant,
    ) -> Response<ProxyBody> {
        let status = err.status();
        let code = err.code();
        if let Some(dest) = err.destination() {
            self.record_refusal(dest, &err);
        }
        self.metrics.refused(code);
        tracing::debug!(error = %err, code, "refused");
        Audit {
            workspace_id: self.workspace(),
            route: route.unwrap_or_else(|| "-".into()),
            method: method.to_string(),
            upstream_host: "-".into(),
            path: audit_path(path),
            status: status.as_u16(),
            code,
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: 0,
            start,
            completed: true,
        }
        .emit();
        json_response(
            status,
            &berth_wire::ErrorBody::new(code, err.public_message()),
        )
    }

    async fn forward(
        self: Arc<Self>,
        req: Request<Incoming>,
        start: Instant,
    ) -> Result<Response<ProxyBody>, (Option<String>, ProxyError)> {
        let (mut parts, body) = req.into_parts();
        let live = self.live();
        let no_route = |e| (None, e);
        if parts.headers.get_all(header::HOST).iter().count() > 1 {
            return Err(no_route(ProxyError::BadHost("more than one Host header")));
        }
        let path = parts.uri.path().to_owned();
        // Absolute-form: only a configured upstream, and Host must agree.
        let (route, rest) = if let Some(auth) = parts.uri.authority().cloned() {
            let authority = auth.as_str().to_owned();
            if !matches!(parts.uri.scheme_str(), Some("http" | "https")) || authority.contains('@')
            {
                return Err(no_route(ProxyError::UpstreamNotAllowed { authority }));
            }
            if let Some(h) = parts.headers.get(header::HOST)
                && !h.as_bytes().eq_ignore_ascii_case(authority.as_bytes())
            {
                return Err(no_route(ProxyError::BadHost(
                    "absolute-form target disagrees with Host",
                )));
            }
            check_path(&path).map_err(|b| no_route(ProxyError::BadPath(b.as_str())))?;
            let host = auth
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            let port = auth.port_u16().unwrap_or(443);
            match live.routes.by_upstream(&host, port, &path) {
                Some((route, rest)) => (route, rest.to_owned()),
                None => return Err(no_route(ProxyError::UpstreamNotAllowed { authority })),
            }
        } else {
            if parts.method == Method::GET && (path == "/health" || path == "/metrics") {
                return Ok(self.admin(&path));
            }
            check_path(&path).map_err(|b| no_route(ProxyError::BadPath(b.as_str())))?;
            match live.routes.by_path(&path) {
                Some(route) => (route, route.rest(&path).to_owned()),
                None => return Err(no_route(ProxyError::RouteNotAllowed)),
            }
        };
        let rname = Some(route.name.clone());
        let on_route = |e| (rname.clone(), e);
        if !route.allows_method(&parts.method) {
            return Err(on_route(ProxyError::MethodNotAllowed {
                route: route.name.clone(),
                method: parts.method.to_string(),
            }));
        }
        if !route.allows_path(&rest) {
            return Err(on_route(ProxyError::PathNotAllowed {
                route: route.name.clone(),
            }));
        }
        let wants_upgrade = parts.headers.contains_key(header::UPGRADE)
            || parts.headers.get_all(header::CONNECTION).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
            });
        if wants_upgrade {
            return Err(on_route(ProxyError::UpgradeNotAllowed));
        }
        let limit = route.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(on_route(ProxyError::BodyTooLarge { limit }));
        }

        // Rewrite.
        let query = parts.uri.query().map(str::to_owned);
        let upstream_uri: http::Uri = format!(
            "https://{}{}",
            route.authority,
            route.upstream_path_and_query(&rest, query.as_deref())
        )
        .parse()
        .map_err(|_| on_route(ProxyError::BadPath("path cannot be forwarded")))?;
        crate::headers::strip_request(&mut parts.headers, route.injected.as_ref());
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(route.authority.as_str())
                .map_err(|_| on_route(ProxyError::BadHost("upstream authority")))?,
        );
        parts.uri = upstream_uri;
        parts.version = http::Version::HTTP_11;

        let bytes_in = Arc::new(AtomicU64::new(0));
        let body_status = Arc::new(AtomicU8::new(body_state::OK));
        let mut scrub: Vec<crate::secrets::SecretValue> = Vec::new();
        let body: ProxyBody = match route.auth {
            AuthMethod::None => limited(body, limit, &bytes_in, &body_status),
            AuthMethod::Bearer | AuthMethod::Header => {
                let secret = route.secret.as_deref().unwrap_or_default();
                let Some(v) = self.secret(&live, route, secret).await else {
                    return Err(on_route(ProxyError::CredentialUnavailable {
                        route: route.name.clone(),
                    }));
                };
                let text = if route.auth == AuthMethod::Bearer {
                    format!("Bearer {}", v.expose())
                } else {
                    v.expose().to_owned()
                };
                let mut hv = HeaderValue::from_str(&text).map_err(|_| {
                    on_route(ProxyError::CredentialUnavailable {
                        route: route.name.clone(),
                    })
                })?;
                hv.set_sensitive(true);
                if let Some(name) = &route.injected {
                    parts.headers.insert(name.clone(), hv);
                }
                scrub.push(v);
                limited(body, limit, &bytes_in, &body_status)
            }
            AuthMethod::Sigv4 => {
                let collected = http_body_util::Limited::new(
                    body,
                    usize::try_from(limit).unwrap_or(usize::MAX),
                )
                .collect()
                .await;
                let bytes: Bytes = match collected {
                    Ok(c) => c.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(on_route(ProxyError::BodyTooLarge { limit }));
                    }
                    Err(_) => return Err(on_route(ProxyError::BodyRead)),
                };
                bytes_in.store(bytes.len() as u64, Ordering::Relaxed);
                let creds = match &route.secret {
                    Some(name) => self
                        .secret(&live, route, name)
                        .await
                        .ok_or(())
                        .and_then(|v| credentials_from_secret(name, &v).map_err(|_| ())),
                    None => match self.chain().await {
                        Some(c) => c.get().await.map_err(|e| {
                            tracing::warn!(route = %route.name, error = %e, "no AWS credentials from the chain");
                        }),
                        None => Err(()),
                    },
                }
                .map_err(|()| {
                    on_route(ProxyError::CredentialUnavailable {
                        route: route.name.clone(),
                    })
                })?;
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                if bytes.is_empty() && matches!(parts.method, Method::GET | Method::HEAD) {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                sign(
                    &parts.method,
                    &parts.uri,
                    &mut parts.headers,
                    &bytes,
                    &creds,
                    &route.region,
                    &route.service,
                    SystemTime::now(),
                )
                .map_err(|e| {
                    tracing::error!(route = %route.name, error = %e, "signing failed");
                    on_route(ProxyError::Signing)
                })?;
                if let Some(t) = creds.session_token() {
                    scrub.push(crate::secrets::SecretValue::new(t));
                }
                full(bytes)
            }
        };

        let upstream_host = route.upstream.host.clone();
        let method_s = parts.method.to_string();
        let sent = self.client.request(Request::from_parts(parts, body));
        let resp = match tokio::time::timeout(self.config.limits.upstream_response_timeout(), sent)
            .await
        {
            Err(_) => {
                return Err(on_route(ProxyError::UpstreamTimeout {
                    host: upstream_host,
                }));
            }
            Ok(Err(e)) => {
                match body_status.load(Ordering::Relaxed) {
                    body_state::OVER_LIMIT => {
                        return Err(on_route(ProxyError::BodyTooLarge { limit }));
                    }
                    body_state::CLIENT_FAILED => return Err(on_route(ProxyError::BodyRead)),
                    _ => {}
                }
                return Err(on_route(client_error(e, &upstream_host)));
            }
            Ok(Ok(r)) => r,
        };
        let (mut rparts, rbody) = resp.into_parts();
        let secrets: Vec<&[u8]> = scrub.iter().map(|s| s.expose().as_bytes()).collect();
        let dropped = crate::headers::strip_response(&mut rparts.headers, &secrets);
        if dropped > 0 {
            self.metrics
                .echoes_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
            tracing::warn!(route = %route.name, headers = dropped, "dropped response headers echoing a credential");
        }
        let status = rparts.status.as_u16();
        self.metrics.answered(&route.name, status);
        let audit = Audit {
            workspace_id: self.workspace(),
            route: route.name.clone(),
            method: method_s,
            upstream_host,
            path: audit_path(&path),
            status,
            code: "forwarded",
            bytes_in,
            bytes_out: 0,
            start,
            completed: false,
        };
        let body = if scrub.is_empty() {
            ProxyBody::new(AuditedBody::new(rbody, audit, self.metrics.clone()))
        } else {
            let secrets = scrub
                .iter()
                .map(|s| s.expose().as_bytes().to_vec())
                .collect();
            let redacted = RedactingBody::new(rbody, secrets, self.metrics.echoes_redacted.clone());
            ProxyBody::new(AuditedBody::new(redacted, audit, self.metrics.clone()))
        };
        Ok(Response::from_parts(rparts, body))
    }

    async fn tunnel(
        self: Arc<Self>,
        req: Request<Incoming>,
        start: Instant,
    ) -> Result<Response<ProxyBody>, (Option<String>, ProxyError)> {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let refused = || {
            (
                None,
                ProxyError::ConnectNotAllowed {
                    authority: authority.clone(),
                },
            )
        };
        let Some((host, port)) = split_host_port(&authority) else {
            return Err(refused());
        };
        let host = host.to_ascii_lowercase();
        let egress = self.egress_now();
        let policy = match self.tunnels.get(&(host.clone(), port)) {
            Some(p) => p,
            None if egress.allows(&host, port) => &egress.addresses,
            None => return Err(refused()),
        };
        let counter = self.metrics.upstream_connects.clone();
        let tcp = tokio::time::timeout(
            self.config.limits.upstream_connect_timeout(),
            connect_checked(self.resolver.as_ref(), policy, &host, port, || {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
        )
        .await
        .map_err(|_| {
            (
                None,
                ProxyError::Connect(ConnectError::Timeout {
                    host: host.clone(),
                    port,
                }),
            )
        })?
        .map_err(|e| (None, ProxyError::Connect(e)))?;
        self.metrics.tunnels.fetch_add(1, Ordering::Relaxed);
        self.open_tunnels.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            let _open = OpenTunnel(this.clone());
            let (mut up, mut down) = (0u64, 0u64);
            let mut completed = false;
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let mut client = TokioIo::new(upgraded);
                let mut tcp = tcp;
                if let Ok((a, b)) = tokio::io::copy_bidirectional(&mut client, &mut tcp).await {
                    (up, down) = (a, b);
                    completed = true;
                }
            }
            Audit {
                workspace_id: this.workspace(),
                route: "connect".into(),
                method: "CONNECT".into(),
                upstream_host: host,
                path: "-".into(),
                status: 200,
                code: "tunnel",
                bytes_in: Arc::new(AtomicU64::new(up)),
                bytes_out: down,
                start,
                completed,
            }
            .emit();
        });
        Ok(Response::new(empty()))
    }

    fn admin(&self, path: &str) -> Response<ProxyBody> {
        let statuses = self.secrets.statuses();
        if path == "/metrics" {
            let rows: Vec<_> = statuses
                .iter()
                .map(|(n, st, has)| {
                    (
                        n.clone(),
                        st.consecutive_failures > 0,
                        st.total_failures,
                        st.last_success.map(|t| t.elapsed().as_secs()),
                        *has,
                    )
                })
                .collect();
            let mut r = Response::new(full(self.metrics.render(&rows)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return r;
        }
        let mut degraded = false;
        let secrets: serde_json::Map<String, serde_json::Value> = statuses
            .into_iter()
            .map(|(name, st, has)| {
                let state = match (has, st.consecutive_failures) {
                    (false, _) => "missing",
                    (true, 0) => "fresh",
                    (true, _) => "stale",
                };
                if state != "fresh" {
                    degraded = true;
                }
                (
                    name,
                    serde_json::json!({
                        "state": state,
                        "last_success_age_seconds": st.last_success.map(|t| t.elapsed().as_secs()),
                        "consecutive_failures": st.consecutive_failures,
                        "refreshes": st.refreshes,
                        "last_error": st.last_error,
                    }),
                )
            })
            .collect();
        json_response(
            StatusCode::OK,
            &serde_json::json!({
                "status": if degraded { "degraded" } else { "ok" },
                "routes": self.live().routes.len(),
                "egress_rules": self.egress_now().rules.len(),
                "secrets": secrets,
            }),
        )
    }
}

impl Proxy {
    /// A route's secret from the store it belongs to, waiting once for a claim's
    /// first fetch.
    async fn secret(
        &self,
        live: &Live,
        route: &Route,
        name: &str,
    ) -> Option<crate::secrets::SecretValue> {
        let claimed;
        let store = if route.claimed {
            let mut rx = live.claim_secrets.clone();
            let built = tokio::time::timeout(FIRST_FETCH_WAIT, rx.wait_for(Option::is_some)).await;
            claimed = match built {
                Ok(Ok(s)) => s.clone()?,
                _ => return None,
            };
            &claimed
        } else {
            &self.secrets
        };
        if let Some(v) = store.get(name) {
            return Some(v);
        }
        store.wait_first_pass(FIRST_FETCH_WAIT).await;
        store.get(name)
    }
}

/// The AWS configuration in `cell`, loaded from the standard chain the first time.
/// Counts a tunnel open while it lives; its end is egress too.
struct OpenTunnel(Arc<Proxy>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        self.0.egress_seen();
    }
}

async fn sdk_in<'a>(
    cell: &'a tokio::sync::OnceCell<aws_config::SdkConfig>,
    config: &Config,
) -> &'a aws_config::SdkConfig {
    cell.get_or_init(|| crate::load_aws(config)).await
}

/// Compiles the file's routes.
fn file_routes(config: &Config) -> Result<Vec<Route>, BuildError> {
    config
        .routes
        .iter()
        .map(|r| {
            Route::compile(r, config.limits.max_body_bytes).map_err(|message| BuildError::Route {
                route: r.name.clone(),
                message,
            })
        })
        .collect()
}

/// The upstreams routes may connect to, with what each may resolve to.
fn targets_of(routes: &[Route]) -> HashMap<(String, u16), AddressPolicy> {
    routes
        .iter()
        .map(|r| ((r.upstream.host.clone(), r.upstream.port), r.policy.clone()))
        .collect()
}

fn limited(
    body: Incoming,
    limit: u64,
    counted: &Arc<AtomicU64>,
    state: &Arc<AtomicU8>,
) -> ProxyBody {
    ProxyBody::new(LimitedBody::new(
        body,
        limit,
        counted.clone(),
        state.clone(),
    ))
}

/// Maps a client error to a [`ProxyError`], finding our connect error in the chain.
fn client_error(e: hyper_util::client::legacy::Error, host: &str) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            tracing::warn!(error = %c, "upstream connect refused or failed");
            return ProxyError::Connect(match c {
                ConnectError::NotConfigured { host, port } => ConnectError::NotConfigured {
                    host: host.clone(),
                    port: *port,
                },
                ConnectError::Forbidden { host, reason } => ConnectError::Forbidden {
                    host: host.clone(),
                    reason: *reason,
                },
                ConnectError::Resolve(r) => {
                    ConnectError::Resolve(crate::net::ResolveError::NotFound {
                        host: match r {
                            crate::net::ResolveError::NotFound { host }
                            | crate::net::ResolveError::Io { host, .. } => host.clone(),
                        },
                    })
                }
                ConnectError::Tcp { host, port, source } => ConnectError::Tcp {
                    host: host.clone(),
                    port: *port,
                    source: std::io::Error::new(source.kind(), source.to_string()),
                },
                ConnectError::Tls { host, source } => ConnectError::Tls {
                    host: host.clone(),
                    source: std::io::Error::new(source.kind(), source.to_string()),
                },
                ConnectError::Timeout { host, port } => ConnectError::Timeout {
                    host: host.clone(),
                    port: *port,
                },
            });
        }
        source = s.source();
    }
    tracing::warn!(host, error = %e, "upstream request failed");
    ProxyError::UpstreamFailed {
        host: host.to_owned(),
    }
}

/// The path for the audit line: no query, and cut to a sane length.
fn audit_path(path: &str) -> String {
    let mut p: String = path.chars().take(256).collect();
    if path.len() > p.len() {
        p.push('…');
    }
    p
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<ProxyBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

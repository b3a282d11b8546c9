//! Secrets: fetched from Secrets Manager or files, refreshed, held in memory only.
//!
//! Background: a secret value lives in exactly one place — a [`SecretValue`] in
//! this store — and leaves it only as a header on a request to the route's
//! upstream. [`SecretValue`]'s `Debug` prints `<redacted>`, errors carry the
//! secret's *name* and the service's error code, never the value, and nothing here
//! writes a value to disk. A refresh that fails keeps the last good value and
//! marks the secret stale (seen on `/health` and `/metrics`) rather than breaking
//! every request of the workspace.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::{SecretConfig, SecretsManagerConfig, TlsConfig};

/// The file of system CA certificates: `SSL_CERT_FILE`, else Debian's bundle (the
/// proxy image carries it when the machine that built the image had one).
fn system_bundle() -> Option<Vec<u8>> {
    let path = std::env::var("SSL_CERT_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".to_owned());
    std::fs::read(path).ok().filter(|b| !b.is_empty())
}

/// The HTTPS client of the Secrets Manager client: rustls trusting the system
/// bundle and the configured extra CAs, read here (a `FROM scratch` image has no
/// platform store for the SDK to find, and its default would refuse to start).
fn sdk_https_client(tls: &TlsConfig) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    let mut store = tls::TrustStore::empty().with_native_roots(false);
    match system_bundle() {
        Some(pem) => store = store.with_pem_certificate(pem),
        None => tracing::warn!(
            "no system CA bundle (SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt): \
             Secrets Manager over TLS trusts only tls.extra_ca_files"
        ),
    }
    for path in &tls.extra_ca_files {
        // Checked at start-up (load_roots); unreadable here only if it vanished.
        if let Ok(pem) = std::fs::read(path) {
            store = store.with_pem_certificate(pem);
        }
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(store)
        .build()
        .unwrap_or_default();
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https()
}

/// A secret's value. Never printed.
#[derive(Clone)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    pub fn new(s: &str) -> Self {
        Self(Arc::from(s))
    }
    /// The value, for building the one header it goes into.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a fetch failed. Carries names and codes, never values.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("secret {name}: Secrets Manager call failed ({code})")]
    SecretsManager { name: String, code: String },
    #[error("secret {name}: the secret has no string value")]
    NotString { name: String },
    #[error("secret {name}: file {path}: {source}")]
    File {
        name: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("secret {name}: value is not a JSON object with string field {key:?}")]
    JsonKey { name: String, key: String },
    #[error("secret {name}: value is empty")]
    Empty { name: String },
}

impl FetchError {
    /// A short stable code for `/health` and metrics.
    pub fn code(&self) -> String {
        match self {
            Self::SecretsManager { code, .. } => format!("secrets_manager:{code}"),
            Self::NotString { .. } => "not_string".into(),
            Self::File { .. } => "file".into(),
            Self::JsonKey { .. } => "json_key".into(),
            Self::Empty { .. } => "empty".into(),
        }
    }
}

/// The state of one secret, as reported.
#[derive(Debug, Clone, Default)]
pub struct SecretStatus {
    pub last_success: Option<Instant>,
    pub consecutive_failures: u64,
    pub total_failures: u64,
    pub refreshes: u64,
    pub last_error: Option<String>,
}

struct Entry {
    config: SecretConfig,
    value: RwLock<Option<SecretValue>>,
    status: Mutex<SecretStatus>,
}

/// All named secrets.
pub struct SecretStore {
    entries: BTreeMap<String, Entry>,
    client: Option<aws_sdk_secretsmanager::Client>,
    refresh: Duration,
    /// Set once every secret was tried once (a request may wait for it).
    first_pass: std::sync::atomic::AtomicBool,
    first_pass_done: tokio::sync::Notify,
}

impl SecretStore {
    /// A store without any secrets.
    pub fn empty() -> Self {
        Self {
            entries: BTreeMap::new(),
            client: None,
            refresh: Duration::from_secs(300),
            first_pass: std::sync::atomic::AtomicBool::new(false),
            first_pass_done: tokio::sync::Notify::new(),
        }
    }

    /// Builds the store; the Secrets Manager client only if a secret needs it.
    pub fn new(
        secrets: &BTreeMap<String, SecretConfig>,
        sm: &SecretsManagerConfig,
        tls: &TlsConfig,
        sdk: Option<&aws_config::SdkConfig>,
    ) -> Self {
        let client = sdk.map(|sdk| {
            let mut b = aws_sdk_secretsmanager::config::Builder::from(sdk)
                .http_client(sdk_https_client(tls));
            if let Some(url) = &sm.endpoint_url {
                b = b.endpoint_url(url);
            }
            if let Some(r) = &sm.region {
                b = b.region(aws_sdk_secretsmanager::config::Region::new(r.clone()));
            }
            aws_sdk_secretsmanager::Client::from_conf(b.build())
        });
        Self {
            entries: secrets
                .iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        Entry {
                            config: c.clone(),
                            value: RwLock::new(None),
                            status: Mutex::new(SecretStatus::default()),
                        },
                    )
                })
                .collect(),
            client,
            refresh: Duration::from_secs(sm.refresh_seconds),
            first_pass: std::sync::atomic::AtomicBool::new(false),
            first_pass_done: tokio::sync::Notify::new(),
        }
    }

    /// Whether any secret comes from Secrets Manager.
    pub fn needs_secrets_manager(secrets: &BTreeMap<String, SecretConfig>) -> bool {
        secrets.values().any(|s| s.secrets_manager.is_some())
    }

    /// The current value of `name`, if one was ever fetched.
    pub fn get(&self, name: &str) -> Option<SecretValue> {
        self.entries
            .get(name)?
            .value
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every current value, for scrubbing echoes from responses.
    pub fn all_values(&self) -> Vec<SecretValue> {
        self.entries.keys().filter_map(|k| self.get(k)).collect()
    }

    /// Name → status, for `/health` and `/metrics`.
    pub fn statuses(&self) -> Vec<(String, SecretStatus, bool)> {
        self.entries
            .iter()
            .map(|(k, e)| {
                let has = e.value.read().unwrap_or_else(|e| e.into_inner()).is_some();
                (
                    k.clone(),
                    e.status.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    has,
                )
            })
            .collect()
    }

    /// How often secrets are refreshed.
    pub fn refresh_interval(&self) -> Duration {
        self.refresh
    }

    /// Waits (at most `limit`) until every secret was tried once: a claim's secrets
    /// are fetched after the claim is answered, and its first request may come
    /// sooner.
    pub async fn wait_first_pass(&self, limit: Duration) {
        use std::sync::atomic::Ordering;
        if self.entries.is_empty() || self.first_pass.load(Ordering::Acquire) {
            return;
        }
        // Registered before the second look, so a pass ending in between wakes it.
        let done = self.first_pass_done.notified();
        if self.first_pass.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(limit, done).await;
    }

    /// Fetches every secret once; failures keep the previous value.
    pub async fn refresh_all(&self) {
        for (name, entry) in &self.entries {
            let result = self.fetch(name, &entry.config).await;
            let mut st = entry.status.lock().unwrap_or_else(|e| e.into_inner());
            st.refreshes += 1;
            match result {
                Ok(v) => {
                    *entry.value.write().unwrap_or_else(|e| e.into_inner()) = Some(v);
                    st.last_success = Some(Instant::now());
                    st.consecutive_failures = 0;
                    st.last_error = None;
                }
                Err(e) => {
                    st.consecutive_failures += 1;
                    st.total_failures += 1;
                    st.last_error = Some(e.code());
                    tracing::warn!(secret = %name, error = %e, "secret refresh failed; keeping the last good value");
                }
            }
        }
        if !self
            .first_pass
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.first_pass_done.notify_waiters();
        }
    }

    async fn fetch(&self, name: &str, c: &SecretConfig) -> Result<SecretValue, FetchError> {
        let raw = if let Some(id) = &c.secrets_manager {
            let Some(client) = &self.client else {
                return Err(FetchError::SecretsManager {
                    name: name.into(),
                    code: "no_client".into(),
                });
            };
            let out = client
                .get_secret_value()
                .secret_id(id)
                .send()
                .await
                .map_err(|e| {
                    use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
                    let code = e
                        .as_service_error()
                        .and_then(|s| s.code())
                        .unwrap_or(match &e {
                            aws_sdk_secretsmanager::error::SdkError::TimeoutError(_) => "timeout",
                            aws_sdk_secretsmanager::error::SdkError::DispatchFailure(_) => {
                                "dispatch"
                            }
                            aws_sdk_secretsmanager::error::SdkError::ResponseError(_) => "response",
                            _ => "other",
                        })
                        .to_owned();
                    FetchError::SecretsManager {
                        name: name.into(),
                        code,
                    }
                })?;
            out.secret_string
                .ok_or_else(|| FetchError::NotString { name: name.into() })?
        } else if let Some(path) = &c.file {
            // A small local file: read in place rather than on the blocking
            // pool, which would start a thread in every idle sidecar.
            std::fs::read_to_string(path).map_err(|source| FetchError::File {
                name: name.into(),
                path: path.clone(),
                source,
            })?
        } else {
            return Err(FetchError::Empty { name: name.into() });
        };
        let value = match &c.json_key {
            None => raw.trim_end_matches(['\r', '\n']).to_owned(),
            Some(key) => serde_json::from_str::<serde_json::Value>(&raw)
                .ok()
                .and_then(|v| v.get(key).and_then(|s| s.as_str()).map(str::to_owned))
                .ok_or_else(|| FetchError::JsonKey {
                    name: name.into(),
                    key: key.clone(),
                })?,
        };
        if value.is_empty() {
            return Err(FetchError::Empty { name: name.into() });
        }
        Ok(SecretValue::new(&value))
    }

    /// Refreshes forever on the configured interval.
    pub async fn run_refresh(self: Arc<Self>) {
        if self.entries.is_empty() {
            return;
        }
        loop {
            self.refresh_all().await;
            tokio::time::sleep(self.refresh).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_print() {
        let v = SecretValue::new("sk-very-secret");
        assert_eq!(format!("{v:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(v)), "Some(<redacted>)");
    }

    #[tokio::test]
    async fn file_secrets_refresh_and_keep_the_last_good_value() {
        let dir = std::env::temp_dir().join(format!("berth-proxy-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "{\"token\":\"first-value\"}\n").unwrap();
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "t".to_owned(),
            SecretConfig {
                secrets_manager: None,
                file: Some(path.clone()),
                json_key: Some("token".into()),
            },
        );
        let store = SecretStore::new(
            &secrets,
            &SecretsManagerConfig::default(),
            &TlsConfig::default(),
            None,
        );
        store.refresh_all().await;
        assert_eq!(store.get("t").unwrap().expose(), "first-value");
        std::fs::remove_file(&path).unwrap();
        store.refresh_all().await;
        assert_eq!(store.get("t").unwrap().expose(), "first-value");
        let (_, st, has) = store.statuses().remove(0);
        assert!(has);
        assert_eq!(st.consecutive_failures, 1);
        assert_eq!(st.last_error.as_deref(), Some("file"));
        std::fs::write(&path, "{\"token\":\"second-value\"}").unwrap();
        store.refresh_all().await;
        assert_eq!(store.get("t").unwrap().expose(), "second-value");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

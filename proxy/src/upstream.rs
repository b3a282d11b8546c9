//! The HTTPS client side: verified TLS over checked connections, pooled.
//!
//! Background: the connector is the last gate before a socket is opened. It only
//! knows the configured upstreams (anything else is refused even if a bug upstream
//! of it asked), resolves and checks through [`crate::net`], and verifies the
//! certificate against the configured roots with rustls. There is deliberately no
//! setting that skips verification: a failed handshake is a failed request.
//! Redirects are never followed — hyper's client does not follow them, and the
//! response is handed to the workspace as it came.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::{RootStore, TlsConfig};
use crate::net::{AddressPolicy, ConnectError, SharedResolver, connect_checked};

/// TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {message}")]
    CaFile {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("no trusted roots: tls.roots = \"none\" and no extra_ca_files")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads the trusted roots (checked at start-up, so a bad CA file is a
/// configuration error).
pub fn load_roots(cfg: &TlsConfig) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    if cfg.roots == RootStore::Webpki {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for path in &cfg.extra_ca_files {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsSetupError::CaFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsSetupError::CaFile {
                path: path.clone(),
                message: "no certificate in file".into(),
            });
        }
        for c in certs {
            roots.add(c).map_err(|e| TlsSetupError::CaFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoRoots);
    }
    Ok(roots)
}

/// Builds the rustls client configuration (aws-lc-rs provider, HTTP/1.1 ALPN).
pub fn client_tls(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connects to configured upstreams only; each new connection is resolved,
/// checked, and verified.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    /// `(host, port)` → what the host may resolve to. Replaced when a claim's
    /// routes arrive.
    targets: std::sync::RwLock<Arc<HashMap<(String, u16), AddressPolicy>>>,
    resolver: SharedResolver,
    /// Built on the first connection: a warm, idle sidecar never pays for it.
    tls: std::sync::OnceLock<tokio_rustls::TlsConnector>,
    roots: rustls::RootCertStore,
    timeout: std::time::Duration,
    /// Connection attempts actually made (after the checks passed).
    pub attempts: Arc<AtomicU64>,
}

impl Connector {
    pub fn new(
        targets: HashMap<(String, u16), AddressPolicy>,
        resolver: SharedResolver,
        roots: rustls::RootCertStore,
        timeout: std::time::Duration,
        attempts: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner: Arc::new(ConnectorInner {
                targets: std::sync::RwLock::new(Arc::new(targets)),
                resolver,
                tls: std::sync::OnceLock::new(),
                roots,
                timeout,
                attempts,
            }),
        }
    }

    /// Replaces the upstreams this connector may reach.
    pub fn set_targets(&self, targets: HashMap<(String, u16), AddressPolicy>) {
        *self
            .inner
            .targets
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(targets);
    }

    async fn connect(self, uri: http::Uri) -> Result<UpstreamConn, ConnectError> {
        let inner = &self.inner;
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let targets = inner
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(policy) = targets.get(&(host.clone(), port)).cloned() else {
            return Err(ConnectError::NotConfigured { host, port });
        };
        let work = async {
            let tcp = connect_checked(inner.resolver.as_ref(), &policy, &host, port, || {
                inner.attempts.fetch_add(1, Ordering::Relaxed);
            })
            .await?;
            let name = ServerName::try_from(host.clone()).map_err(|e| ConnectError::Tls {
                host: host.clone(),
                source: std::io::Error::other(e),
            })?;
            let tls = match inner.tls.get() {
                Some(t) => t.clone(),
                None => {
                    let config =
                        client_tls(inner.roots.clone()).map_err(|e| ConnectError::Tls {
                            host: host.clone(),
                            source: std::io::Error::other(e.to_string()),
                        })?;
                    inner
                        .tls
                        .get_or_init(|| tokio_rustls::TlsConnector::from(config))
                        .clone()
                }
            };
            tls.connect(name, tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    host: host.clone(),
                    source,
                })
        };
        match tokio::time::timeout(inner.timeout, work).await {
            Ok(Ok(tls)) => Ok(UpstreamConn(TokioIo::new(tls))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::Timeout { host, port }),
        }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = UpstreamConn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamConn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A verified TLS connection to an upstream.
pub struct UpstreamConn(TokioIo<TlsStream<TcpStream>>);

impl Connection for UpstreamConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for UpstreamConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for UpstreamConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

//! Test helpers for the credential-proxy, shared by `proxy/tests/` and the
//! whole-system tests in `tests/tests/proxy_*.rs`.
//!
//! - [`TestCa`]: a throwaway certificate authority generated per test (rcgen);
//!   its PEM file is what the proxy is told to trust, in tests only.
//! - [`EchoUpstream`]: an HTTPS server on 127.0.0.1 that records every request it
//!   receives (and every TCP connection) and answers with what it saw, plus a few
//!   special paths (redirects, echoed credentials, slow streams).
//! - [`ProxyProcess`]: the real `credential-proxy` binary as a child process on a
//!   port it picks itself, its log captured, killed on drop.
//! - [`raw`]: a byte-exact HTTP/1.1 client for requests no library would send.
//!
//! Everything listens on and connects to loopback only.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

// === TestCa ===

/// A certificate authority made for one test.
pub struct TestCa {
    ca: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// Where the CA's PEM lives (the proxy's `tls.extra_ca_files`).
    pub pem_path: PathBuf,
    _dir: TempDir,
}

impl TestCa {
    pub fn new() -> anyhow::Result<Self> {
        let dir = TempDir::new("ca")?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = params.self_signed(&key)?;
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, pem("CERTIFICATE", ca.der()))?;
        let issuer = rcgen::Issuer::new(params, key);
        Ok(Self {
            ca,
            issuer,
            pem_path,
            _dir: dir,
        })
    }

    /// The CA certificate (DER).
    pub fn der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A leaf certificate for `names` (DNS names or IP literals) and its key.
    pub fn issue(
        &self,
        names: &[&str],
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = rcgen::KeyPair::generate()?;
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "berth-proxy-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === EchoUpstream ===

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    /// Every header, lower-case names, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }
}

/// An HTTPS server on 127.0.0.1 that records what it receives.
///
/// Paths: `/redirect` answers 302 to the metadata service; `/echo-auth` puts the
/// received Authorization (and `x-api-key`) into response headers; `/stream`
/// sends three chunks 300 ms apart; `/big/<n>` sends n bytes; anything else
/// answers 200 with a JSON echo of the request.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

type EchoBody = BoxBody<Bytes, std::convert::Infallible>;

impl EchoUpstream {
    /// Starts on 127.0.0.1 with a certificate for `names` issued by `ca`.
    pub async fn start(ca: &TestCa, names: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(ca, names, "127.0.0.1:0".parse()?).await
    }

    /// Starts on `bind` (one of this machine's addresses) with a certificate for
    /// `names` issued by `ca`.
    pub async fn start_on(ca: &TestCa, names: &[&str], bind: SocketAddr) -> anyhow::Result<Self> {
        let (chain, key) = ca.issue(names)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let seen = s.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let seen = seen.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(req, seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            seen,
            connections,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or_default()
    }

    /// TCP connections accepted so far (before TLS).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> hyper::Response<EchoBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let record = Seen {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    if let Ok(mut s) = seen.lock() {
        s.push(record.clone());
    }
    let path = parts.uri.path();
    let mut resp = hyper::Response::builder();
    if path.ends_with("/redirect") {
        return resp
            .status(302)
            .header("location", "http://169.254.169.254/latest/meta-data/")
            .body(full(Bytes::new()))
            .unwrap_or_default();
    }
    if path.ends_with("/echo-auth") {
        for h in ["authorization", "x-api-key"] {
            if let Some(v) = record.header(h) {
                resp = resp.header(format!("x-echo-{h}"), v);
            }
        }
        resp = resp.header("x-plain", "fine");
    }
    if path.ends_with("/stream") {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        tokio::spawn(async move {
            for i in 0..3 {
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!("chunk{i}\n")))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let stream = tokio_stream_from(rx);
        return resp
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap_or_default();
    }
    if let Some(n) = path
        .rsplit_once("/big/")
        .and_then(|(_, n)| n.parse::<usize>().ok())
    {
        return resp
            .body(full(Bytes::from(vec![b'x'; n])))
            .unwrap_or_default();
    }
    let echo = serde_json::json!({
        "method": record.method,
        "target": record.target,
        "headers": record.headers,
        "body_len": record.body.len(),
    });
    resp.header("content-type", "application/json")
        .body(full(Bytes::from(echo.to_string())))
        .unwrap_or_default()
}

fn full(b: Bytes) -> EchoBody {
    BodyExt::boxed(Full::new(b))
}

/// An mpsc receiver as a `Stream` (without pulling in tokio-stream).
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// === ProxyProcess ===

/// The real `credential-proxy` binary, started with a config file.
pub struct ProxyProcess {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl ProxyProcess {
    /// Writes `config` (TOML; `listen` is added) and starts `binary` with it and
    /// `env`. Waits for the ready line.
    pub fn start(binary: &Path, config: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = TempDir::new("proxy")?;
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, format!("listen = \"127.0.0.1:0\"\n{config}"))?;
        let mut cmd = Command::new(binary);
        cmd.arg("--config")
            .arg(&path)
            .env_clear()
            .env("BERTH_LOG", "info")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("credential-proxy ready")
                    && let Some(addr) = line
                        .split("listen=")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                if let Ok(mut l) = l.lock() {
                    l.push(line);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "proxy did not become ready; log:\n{}",
                    log.lock().map(|l| l.join("\n")).unwrap_or_default()
                );
            }
        };
        Ok(Self {
            child,
            addr,
            log,
            _dir: dir,
        })
    }

    /// The captured log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A GET of `/metrics`, parsed into `name{labels} value` → value.
    pub fn metric(&self, key: &str) -> Option<f64> {
        let r = raw_request(self.addr, "GET", "/metrics", &[], b"").ok()?;
        r.body_text()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === raw client ===

/// A parsed response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
    /// The `code` of a JSON error body.
    pub fn code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// Sends `bytes` as they are, reads until the peer closes (or 5 s pass), and
/// parses the first response.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<RawResponse> {
    let all = raw_all(addr, bytes, Duration::from_secs(5))?;
    parse_response(&all)
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response in {all:?}")))
}

/// Sends `bytes`, returns everything read until close or `limit`.
pub fn raw_all(addr: SocketAddr, bytes: &[u8], limit: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(limit))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() && e.kind() != std::io::ErrorKind::ConnectionReset => {
                return Err(e);
            }
            Err(_) => break,
        }
    }
    Ok(out)
}

/// A well-formed request with `Connection: close`.
pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

/// Parses the first HTTP/1.1 response in `all` (Content-Length or chunked).
pub fn parse_response(all: &[u8]) -> Option<RawResponse> {
    let end = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let rest = &all[end + 4..];
    let mut r = RawResponse {
        status,
        head,
        body: Vec::new(),
    };
    if r.header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let mut rest = rest;
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_line = std::str::from_utf8(&rest[..nl]).ok()?;
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            r.body.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
    } else if let Some(n) = r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        r.body = rest.get(..n).unwrap_or(rest).to_vec();
    } else {
        r.body = rest.to_vec();
    }
    Some(r)
}

/// The `berth-tests`-style location of the moto venv's Python (botocore inside).
pub fn venv_python() -> PathBuf {
    let cache = std::env::var("BERTH_CACHE_DIR")
        .unwrap_or_else(|_| format!("{}/.cache/berth", std::env::var("HOME").unwrap_or_default()));
    PathBuf::from(cache).join("venv-moto/bin/python")
}

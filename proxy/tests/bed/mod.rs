//! The test bed of the proxy's crate tests: two HTTPS echo upstreams (one signed
//! by a CA the proxy trusts, one by a CA it does not), secrets in files, and the
//! real binary with a configuration that exercises every gate.
//!
//! Names resolve through `[hosts]` only (`dns = "hosts-only"`), so no DNS query
//! leaves the machine, and every address a test uses is loopback — the metadata
//! and private addresses appear only as answers the proxy must refuse before it
//! connects anywhere.
#![allow(dead_code)]

use std::net::SocketAddr;

use berth_proxy_testbed::{EchoUpstream, ProxyProcess, RawResponse, TempDir, TestCa, raw_request};

pub const TOKEN: &str = "mcp-secret-token-0123456789";
pub const API_KEY: &str = "api-key-secret-abcdefghijkl";

pub struct Bed {
    pub ca: TestCa,
    pub up: EchoUpstream,
    pub untrusted: EchoUpstream,
    pub proxy: ProxyProcess,
    pub secrets: TempDir,
}

impl Bed {
    pub async fn start() -> Bed {
        Self::start_with("").await
    }

    /// Starts everything; `extra` is appended to the configuration.
    pub async fn start_with(extra: &str) -> Bed {
        Self::start_full(extra, &[]).await
    }

    /// Starts with extra configuration and environment overrides.
    pub async fn start_full(extra: &str, env: &[(&str, &str)]) -> Bed {
        let ca = TestCa::new().expect("ca");
        let up = EchoUpstream::start(&ca, &["api.allowed.test", "mirror.allowed.test"])
            .await
            .expect("upstream");
        let other_ca = TestCa::new().expect("ca");
        let untrusted = EchoUpstream::start(&other_ca, &["api2.allowed.test"])
            .await
            .expect("upstream");
        let secrets = TempDir::new("secrets").expect("dir");
        std::fs::write(secrets.path().join("mcp"), format!("{TOKEN}\n")).expect("write");
        std::fs::write(secrets.path().join("key"), API_KEY).expect("write");
        let config = config(&ca, &up, &untrusted, &secrets, extra);
        let proxy = ProxyProcess::start(
            std::path::Path::new(env!("CARGO_BIN_EXE_credential-proxy")),
            &config,
            env,
        )
        .expect("proxy starts");
        let bed = Bed {
            ca,
            up,
            untrusted,
            proxy,
            secrets,
        };
        // Secrets are read at start-up; wait until the route works.
        for _ in 0..100 {
            if bed.get("/mcp/ping", &[]).status == 200 {
                return bed;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("proxy never served /mcp/ping; log:\n{}", bed.proxy.log());
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> RawResponse {
        raw_request(self.addr(), "GET", path, headers, b"").expect("request")
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        raw_request(self.addr(), method, path, headers, body).expect("request")
    }

    pub fn raw(&self, bytes: &[u8]) -> RawResponse {
        berth_proxy_testbed::raw(self.addr(), bytes).expect("raw request")
    }

    /// Upstream TCP connections the proxy attempted (its own counter).
    pub fn connects(&self) -> f64 {
        self.proxy
            .metric("berth_proxy_upstream_connects_total")
            .expect("metric")
    }

    /// The proxy is alive and still forwards with the credential injected.
    pub fn assert_serving(&mut self) {
        assert!(self.proxy.alive(), "proxy died; log:\n{}", self.proxy.log());
        let before = self.up.count();
        let r = self.get("/mcp/still-serving", &[]);
        assert_eq!(r.status, 200, "proxy stopped serving: {r:?}");
        // (An aborted earlier request may be recorded late, so search for ours.)
        let seen = self.up.seen();
        let last = seen[before..]
            .iter()
            .find(|s| s.target == "/v1/still-serving")
            .expect("the request reached the upstream");
        assert_eq!(
            last.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }

    /// Asserts a refusal: status, code (when given) and that no new request
    /// reached either upstream.
    pub fn assert_refused(
        &mut self,
        r: &RawResponse,
        status: u16,
        code: Option<&str>,
        before: usize,
    ) {
        assert_eq!(r.status, status, "{r:?}");
        if let Some(code) = code {
            assert_eq!(r.code(), code, "{r:?}");
        }
        assert_eq!(
            self.up.count(),
            before,
            "a refused request reached the upstream"
        );
        assert_eq!(self.untrusted.count(), 0);
        self.assert_serving();
    }

    /// The log never holds a credential.
    pub fn assert_log_clean(&self) {
        let log = self.proxy.log();
        for secret in [TOKEN, API_KEY] {
            assert!(!log.contains(secret), "secret in the log:\n{log}");
        }
    }
}

fn config(
    ca: &TestCa,
    up: &EchoUpstream,
    untrusted: &EchoUpstream,
    secrets: &TempDir,
    extra: &str,
) -> String {
    let port = up.port();
    let port2 = untrusted.port();
    let ca = ca.pem_path.display();
    let dir = secrets.path().display();
    format!(
        r#"
dns = "hosts-only"
workspace_id = "ws-attack"

[limits]
max_header_bytes = 16384
max_body_bytes = 65536
header_timeout_ms = 1000
upstream_response_timeout_ms = 5000

[tls]
roots = "none"
extra_ca_files = ["{ca}"]

[hosts]
"api.allowed.test" = ["127.0.0.1"]
"api2.allowed.test" = ["127.0.0.1"]
"mirror.allowed.test" = ["127.0.0.1"]
"loopback.allowed.test" = ["127.0.0.1"]
"private.allowed.test" = ["10.0.0.1"]
"meta.allowed.test" = ["169.254.169.254"]
"meta6.allowed.test" = ["fd00:ec2::254"]
"nat64.allowed.test" = ["64:ff9b::a9fe:a9fe"]
"mapped.allowed.test" = ["::ffff:127.0.0.1"]
"mixed.allowed.test" = ["127.0.0.1", "10.0.0.1"]

[secrets.mcp]
file = "{dir}/mcp"

[secrets.key]
file = "{dir}/key"

[[routes]]
name = "mcp"
prefix = "/mcp/"
upstream = "https://api.allowed.test:{port}/v1"
auth = "bearer"
secret = "mcp"
allow_private_upstream = ["127.0.0.1/32"]

[[routes]]
name = "keyed"
prefix = "/keyed/"
upstream = "https://api.allowed.test:{port}/k"
auth = "header"
header = "x-api-key"
secret = "key"
allow_private_upstream = ["127.0.0.1/32"]

[[routes]]
name = "bedrock"
prefix = "/bedrock/"
upstream = "https://api.allowed.test:{port}"
auth = "none"
methods = ["POST"]
paths = ["/model/*/invoke", "/model/*/converse", "/model/*/converse-stream", "/model/*/invoke-with-response-stream"]
allow_private_upstream = ["127.0.0.1/32"]

[[routes]]
name = "loopback"
prefix = "/loopback/"
upstream = "https://loopback.allowed.test:{port}"
auth = "bearer"
secret = "mcp"

[[routes]]
name = "private"
prefix = "/private/"
upstream = "https://private.allowed.test:{port}"
auth = "none"

[[routes]]
name = "meta"
prefix = "/meta/"
upstream = "https://meta.allowed.test"
auth = "bearer"
secret = "mcp"
allow_private_upstream = ["169.254.0.0/16"]

[[routes]]
name = "meta6"
prefix = "/meta6/"
upstream = "https://meta6.allowed.test"
auth = "none"
allow_private_upstream = ["fd00::/8"]

[[routes]]
name = "nat64"
prefix = "/nat64/"
upstream = "https://nat64.allowed.test"
auth = "none"

[[routes]]
name = "mapped"
prefix = "/mapped/"
upstream = "https://mapped.allowed.test:{port}"
auth = "none"
allow_private_upstream = ["127.0.0.1/32"]

[[routes]]
name = "mixed"
prefix = "/mixed/"
upstream = "https://mixed.allowed.test:{port}"
auth = "none"
allow_private_upstream = ["127.0.0.1/32"]

[[routes]]
name = "untrusted"
prefix = "/untrusted/"
upstream = "https://api2.allowed.test:{port2}"
auth = "bearer"
secret = "mcp"
allow_private_upstream = ["127.0.0.1/32"]

[[connect]]
target = "mirror.allowed.test:{port}"
allow_private_upstream = ["127.0.0.1/32"]
{extra}
"#
    )
}

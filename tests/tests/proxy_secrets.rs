//! The credential-proxy with real parts: secrets from moto's Secrets Manager
//! (fetched, refreshed, kept when a refresh fails) and SigV4 signatures checked by
//! an independent signer — botocore, in the moto venv — computing the signature
//! for the very request the upstream received.
//!
//! The proxy is the real binary; its AWS chain is given static credentials in its
//! environment (and `AWS_EC2_METADATA_DISABLED`), so no metadata service is ever
//! consulted. The upstream is an HTTPS echo server on 127.0.0.1 with a CA made by
//! the test.

use std::time::{Duration, Instant, SystemTime};

use berth_proxy_testbed::{EchoUpstream, ProxyProcess, Seen, TestCa, raw_request, venv_python};
use berth_tests::moto::MotoServer;

const CHAIN_KEY_ID: &str = "AKIDCHAINEXAMPLE";
const CHAIN_SECRET: &str = "chain-secret-key-do-not-leak";

fn proxy_binary() -> std::path::PathBuf {
    let p = berth_tests::bin_dir().join("credential-proxy");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` first (tests/run.sh does)",
        p.display()
    );
    p
}

fn creds_json(id: &str, secret: &str, token: &str) -> String {
    serde_json::json!({"AccessKeyId": id, "SecretAccessKey": secret, "SessionToken": token})
        .to_string()
}

struct Bed {
    _moto: MotoServer,
    sm: aws_sdk_secretsmanager::Client,
    _ca: TestCa,
    up: EchoUpstream,
    proxy: ProxyProcess,
}

async fn start() -> Bed {
    let moto = MotoServer::start().expect("moto");
    let sm = moto.secretsmanager();
    for (name, value) in [
        ("berth/mcp-token", "mcp-token-one-abcdef".to_owned()),
        (
            "berth/bedrock",
            creds_json(
                "AKIDSECRETONE",
                "secret-key-one-xyz",
                "session-token-one-xyz",
            ),
        ),
    ] {
        sm.create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .expect("create secret");
    }
    let ca = TestCa::new().expect("ca");
    let up = EchoUpstream::start(&ca, &["bedrock.allowed.test"])
        .await
        .expect("upstream");
    let port = up.port();
    let config = format!(
        r#"
dns = "hosts-only"
workspace_id = "ws-secrets"
[hosts]
"bedrock.allowed.test" = ["127.0.0.1"]
[tls]
roots = "none"
extra_ca_files = ["{ca}"]
[secrets_manager]
endpoint_url = "{endpoint}"
region = "us-east-1"
refresh_seconds = 1
[secrets.mcp]
secrets_manager = "berth/mcp-token"
[secrets.bedrock]
secrets_manager = "berth/bedrock"

[[routes]]
name = "mcp"
prefix = "/mcp/"
upstream = "https://bedrock.allowed.test:{port}/mcp"
auth = "bearer"
secret = "mcp"
allow_private_upstream = ["127.0.0.1/32"]

[[routes]]
name = "bedrock"
prefix = "/bedrock/"
upstream = "https://bedrock.allowed.test:{port}"
auth = "sigv4"
region = "us-east-1"
service = "bedrock"
secret = "bedrock"
methods = ["POST"]
paths = ["/model/*/invoke", "/model/*/converse"]
max_body_bytes = 4096
allow_private_upstream = ["127.0.0.1/32"]

[[routes]]
name = "bedrock-chain"
prefix = "/bedrock-chain/"
upstream = "https://bedrock.allowed.test:{port}"
auth = "sigv4"
region = "eu-west-1"
service = "bedrock"
allow_private_upstream = ["127.0.0.1/32"]
"#,
        ca = ca.pem_path.display(),
        endpoint = moto.endpoint(),
    );
    let proxy = ProxyProcess::start(
        &proxy_binary(),
        &config,
        &[
            ("AWS_ACCESS_KEY_ID", CHAIN_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", CHAIN_SECRET),
            ("AWS_REGION", "us-east-1"),
        ],
    )
    .expect("proxy");
    let bed = Bed {
        _moto: moto,
        sm,
        _ca: ca,
        up,
        proxy,
    };
    assert!(
        bed.wait_for(|b| b.health()["status"] == "ok", Duration::from_secs(10)),
        "secrets never loaded: {} / log:\n{}",
        bed.health(),
        bed.proxy.log()
    );
    bed
}

impl Bed {
    fn health(&self) -> serde_json::Value {
        let r = raw_request(self.proxy.addr, "GET", "/health", &[], b"").expect("health");
        serde_json::from_slice(&r.body).unwrap_or_default()
    }

    fn wait_for(&self, mut f: impl FnMut(&Self) -> bool, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn last_seen(&self) -> Seen {
        self.up.seen().pop().expect("upstream saw a request")
    }

    fn assert_log_clean(&self, secrets: &[&str]) {
        let log = self.proxy.log();
        for s in secrets {
            assert!(!log.contains(s), "{s} in the proxy log:\n{log}");
        }
    }
}

/// Asks botocore to sign the request the upstream received, with `creds`, and
/// returns its signature.
fn botocore_signature(
    seen: &Seen,
    host: &str,
    key_id: &str,
    secret: &str,
    token: Option<&str>,
    region: &str,
) -> String {
    let auth = seen.header("authorization").expect("authorization");
    let signed: Vec<&str> = auth
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("SignedHeaders")
        .split(';')
        .collect();
    let headers: serde_json::Map<String, serde_json::Value> = signed
        .iter()
        .map(|h| {
            let v = seen.header(h).unwrap_or_default();
            (h.to_string(), serde_json::Value::from(v))
        })
        .collect();
    let input = serde_json::json!({
        "method": seen.method,
        "url": format!("https://{host}{}", seen.target),
        "headers": headers,
        "body": seen.body,
        "key_id": key_id,
        "secret": secret,
        "token": token,
        "region": region,
        "service": "bedrock",
        "amz_date": seen.header("x-amz-date").expect("x-amz-date"),
    });
    let script = r#"
import json, sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
d = json.load(sys.stdin)
req = AWSRequest(method=d["method"], url=d["url"], data=bytes(d["body"]), headers=d["headers"])
req.context["timestamp"] = d["amz_date"]
auth = SigV4Auth(Credentials(d["key_id"], d["secret"], d["token"]), d["service"], d["region"])
canonical = auth.canonical_request(req)
print(auth.signature(auth.string_to_sign(req, canonical), req))
"#;
    let mut child = std::process::Command::new(venv_python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the moto venv's python (tests/run.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("botocore");
    assert!(
        out.status.success(),
        "botocore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn signature_of(seen: &Seen) -> String {
    seen.header("authorization")
        .and_then(|a| a.split("Signature=").nth(1))
        .expect("Signature=")
        .to_owned()
}

fn assert_recent(amz_date: &str) {
    // 20261123T151000Z: compare as seconds of the day, within 5 minutes.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let hms: u64 = amz_date[9..15].parse().expect("time");
    let secs = hms / 10000 * 3600 + hms / 100 % 100 * 60 + hms % 100;
    let diff = (now % 86400).abs_diff(secs);
    assert!(
        !(300..=86400 - 300).contains(&diff),
        "x-amz-date {amz_date} is not now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_come_from_secrets_manager_refresh_and_survive_failures() {
    let bed = start().await;
    let addr = bed.proxy.addr;
    let r = raw_request(
        addr,
        "GET",
        "/mcp/tools",
        &[("Authorization", "Bearer client-forged")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = bed.last_seen();
    assert_eq!(seen.target, "/mcp/tools");
    assert_eq!(seen.header_count("authorization"), 1);
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer mcp-token-one-abcdef")
    );

    // Rotate in Secrets Manager: the next refresh (1 s) picks it up.
    bed.sm
        .put_secret_value()
        .secret_id("berth/mcp-token")
        .secret_string("mcp-token-two-ghijkl")
        .send()
        .await
        .unwrap();
    assert!(
        bed.wait_for(
            |b| {
                raw_request(addr, "GET", "/mcp/t", &[], b"").unwrap();
                b.last_seen().header("authorization") == Some("Bearer mcp-token-two-ghijkl")
            },
            Duration::from_secs(10)
        ),
        "rotated token never arrived"
    );

    // The secret disappears: refreshes fail, the last good value stays in use,
    // and /health and /metrics say so.
    bed.sm
        .delete_secret()
        .secret_id("berth/mcp-token")
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    assert!(
        bed.wait_for(
            |b| b.health()["secrets"]["mcp"]["state"] == "stale",
            Duration::from_secs(10)
        ),
        "{}",
        bed.health()
    );
    let h = bed.health();
    assert_eq!(h["status"], "degraded");
    assert!(
        h["secrets"]["mcp"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("ResourceNotFound"),
        "{h}"
    );
    assert_eq!(
        bed.proxy.metric("berth_proxy_secret_stale{secret=\"mcp\"}"),
        Some(1.0)
    );
    assert!(
        bed.proxy
            .metric("berth_proxy_secret_refresh_failures_total{secret=\"mcp\"}")
            .unwrap_or_default()
            >= 1.0
    );
    let r = raw_request(addr, "GET", "/mcp/after", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        bed.last_seen().header("authorization"),
        Some("Bearer mcp-token-two-ghijkl")
    );
    // Never in a response, never in the log.
    let m = raw_request(addr, "GET", "/metrics", &[], b"").unwrap();
    for body in [m.body_text(), h.to_string()] {
        assert!(!body.contains("mcp-token-"), "{body}");
    }
    bed.assert_log_clean(&["mcp-token-one-abcdef", "mcp-token-two-ghijkl", CHAIN_SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_signatures_match_botocore_and_follow_rotation() {
    let bed = start().await;
    let addr = bed.proxy.addr;
    let host = format!("bedrock.allowed.test:{}", bed.up.port());
    let body = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}"#;
    let path = "/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke";
    let forged = [
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDFORGED/x"),
        ("X-Amz-Security-Token", "forged-token"),
        ("X-Amz-Date", "20000101T000000Z"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let r = raw_request(addr, "POST", path, &forged, body).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = bed.last_seen();
    assert_eq!(
        seen.target,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke"
    );
    assert_eq!(seen.body, body);
    let auth = seen.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDSECRETONE/"),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
    assert_eq!(seen.header_count("x-amz-security-token"), 1);
    assert_eq!(
        seen.header("x-amz-security-token"),
        Some("session-token-one-xyz")
    );
    assert_recent(seen.header("x-amz-date").unwrap());
    let signed = auth.split("SignedHeaders=").nth(1).unwrap();
    for h in ["host", "x-amz-date", "x-amz-security-token", "content-type"] {
        assert!(signed.contains(h), "{h} not signed: {auth}");
    }
    assert_eq!(
        signature_of(&seen),
        botocore_signature(
            &seen,
            &host,
            "AKIDSECRETONE",
            "secret-key-one-xyz",
            Some("session-token-one-xyz"),
            "us-east-1"
        ),
        "botocore disagrees with the proxy's signature"
    );

    // The proxy's own chain (its environment here), another region.
    let r = raw_request(
        addr,
        "POST",
        "/bedrock-chain/model/amazon.titan-text-express-v1/converse",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = bed.last_seen();
    assert!(
        seen.header("authorization")
            .unwrap()
            .contains(&format!("Credential={CHAIN_KEY_ID}/")),
        "{seen:?}"
    );
    assert_eq!(seen.header("x-amz-security-token"), None);
    assert_eq!(
        signature_of(&seen),
        botocore_signature(&seen, &host, CHAIN_KEY_ID, CHAIN_SECRET, None, "eu-west-1")
    );

    // Over the route's limit: refused before signing, nothing buffered past it.
    let before = bed.up.count();
    let big = vec![b'x'; 5000];
    let r = raw_request(addr, "POST", path, &[], &big).unwrap();
    assert_eq!(r.status, 413);
    let chunked = {
        let mut v = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").into_bytes();
        for _ in 0..5 {
            v.extend_from_slice(b"400\r\n");
            v.extend_from_slice(&[b'y'; 1024]);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\n\r\n");
        v
    };
    let r = berth_proxy_testbed::raw(addr, &chunked).unwrap();
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(bed.up.count(), before);

    // Rotation mid-flight: new keys in Secrets Manager are used after the refresh.
    bed.sm
        .put_secret_value()
        .secret_id("berth/bedrock")
        .secret_string(creds_json(
            "AKIDSECRETTWO",
            "secret-key-two-xyz",
            "session-token-two-xyz",
        ))
        .send()
        .await
        .unwrap();
    assert!(
        bed.wait_for(
            |b| {
                raw_request(addr, "POST", path, &[], body).unwrap();
                b.last_seen()
                    .header("authorization")
                    .is_some_and(|a| a.contains("Credential=AKIDSECRETTWO/"))
            },
            Duration::from_secs(10)
        ),
        "rotated credentials never used"
    );
    let seen = bed.last_seen();
    assert_eq!(
        signature_of(&seen),
        botocore_signature(
            &seen,
            &host,
            "AKIDSECRETTWO",
            "secret-key-two-xyz",
            Some("session-token-two-xyz"),
            "us-east-1"
        )
    );
    bed.assert_log_clean(&[
        "secret-key-one-xyz",
        "secret-key-two-xyz",
        "session-token-one-xyz",
        "session-token-two-xyz",
        CHAIN_SECRET,
    ]);
}

#[test]
fn bad_configuration_exits_64_naming_the_field() {
    let dir = berth_proxy_testbed::TempDir::new("badconfig").unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[routes]]\nname = \"r\"\nprefix = \"/r/\"\nupstream = \"http://plain.example\"\nauth = \"none\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(proxy_binary())
        .arg("--config")
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0].upstream") && err.contains("https"),
        "{err}"
    );
    // A CA file that cannot be read is a configuration error too, found at start.
    std::fs::write(
        &path,
        "[tls]\nroots = \"none\"\nextra_ca_files = [\"/nonexistent/ca.pem\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(proxy_binary())
        .arg("--config")
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ca.pem"));
}

//! moto in server mode, per test, and AWS clients bound to it.
//!
//! Clients made here never use the default credential chain, which falls back to
//! the instance metadata service: the endpoint, region and static credentials are
//! explicit, `AWS_EC2_METADATA_DISABLED` is set, and retries are off so moto's errors
//! surface at once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running moto_server; stopped on drop.
pub struct MotoServer {
    child: Child,
    port: u16,
    /// The last lines moto printed (its tracebacks explain its 500s).
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    /// The address it listens on.
    host: String,
}

/// Where tests/run.sh installs moto.
pub fn moto_server_path() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("BERTH_MOTO_SERVER") {
        return p.into();
    }
    let cache = std::env::var("BERTH_CACHE_DIR")
        .unwrap_or_else(|_| format!("{}/.cache/berth", std::env::var("HOME").unwrap_or_default()));
    std::path::PathBuf::from(cache).join("venv-moto/bin/moto_server")
}

/// Environment for a slot's proxy that talks to moto: static credentials and region,
/// and no metadata service (`--proxy-env` of hostd, `Options::proxy_env` here).
pub fn proxy_env() -> Vec<String> {
    [
        "AWS_ACCESS_KEY_ID=testing",
        "AWS_SECRET_ACCESS_KEY=testing",
        "AWS_REGION=us-east-1",
        "AWS_EC2_METADATA_DISABLED=true",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl MotoServer {
    /// Starts moto on a free port of 127.0.0.1 and waits for its "Running on" line.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1")
    }

    /// Starts moto on a free port of `host`, one of this machine's own addresses
    /// (for example a test network's gateway, so that containers can reach it).
    pub fn start_on(host: &str) -> anyhow::Result<Self> {
        let path = moto_server_path();
        let marker = format!("Running on http://{host}:");
        let mut child = Command::new(&path)
            .args(["-H", host, "-p", "0"])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {} (run tests/run.sh to install moto): {e}",
                    path.display()
                )
            })?;
        // Werkzeug prints " * Running on http://127.0.0.1:PORT" on stderr or stdout.
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let log = log.clone();
            let marker = marker.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        if l.len() >= 200 {
                            l.pop_front();
                        }
                        l.push_back(line.clone());
                    }
                    if let Some(port) = line
                        .split(marker.as_str())
                        .nth(1)
                        .and_then(|rest| rest.trim().parse::<u16>().ok())
                    {
                        let _ = tx.send(port);
                    }
                }
            });
        }
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!("moto_server did not report its port within 30 s");
            }
        };
        Ok(Self {
            child,
            port,
            log,
            host: host.to_owned(),
        })
    }

    /// Makes bucket `bucket` and opens the checkpoint store `s3://bucket/checkpoints`
    /// on it, with every S3 setting explicit (never the environment's, never the
    /// instance metadata service).
    pub async fn checkpoint_store(&self, bucket: &str) -> berth_checkpoint::Store {
        let resp = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await
            .expect("moto reachable");
        assert!(
            resp.status().is_success(),
            "create bucket: {}",
            resp.status()
        );
        let endpoint = self.endpoint();
        berth_checkpoint::Store::open_with(
            &format!("s3://{bucket}/checkpoints"),
            &[
                ("aws_endpoint", endpoint.as_str()),
                ("aws_region", "us-east-1"),
                ("aws_access_key_id", "testing"),
                ("aws_secret_access_key", "testing"),
                ("aws_allow_http", "true"),
            ],
        )
        .expect("checkpoint store on moto")
    }

    /// The last lines moto printed.
    pub fn log_tail(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// An ECS client bound to this moto: static credentials, fixed region, no
    /// retries. Built from the service config alone, so no credential chain (and
    /// so no metadata service) is ever consulted.
    pub fn ecs(&self) -> aws_sdk_ecs::Client {
        let config = aws_sdk_ecs::Config::builder()
            .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_sdk_ecs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ecs::config::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "berth-tests",
            ))
            .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_ecs::Client::from_conf(config)
    }

    /// A Secrets Manager client bound to this moto, built like [`Self::ecs`]:
    /// service config only, static credentials, fixed region, no retries.
    pub fn secretsmanager(&self) -> aws_sdk_secretsmanager::Client {
        use aws_sdk_secretsmanager::config;
        let config = config::Config::builder()
            .behavior_version(config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(config::Region::new("us-east-1"))
            .credentials_provider(config::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "berth-tests",
            ))
            .retry_config(config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

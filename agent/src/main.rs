//! `workspace-agent`: the process inside every workspace that runs commands and
//! file operations for the AI agent. Thin: parse config, set up logging, serve
//! until SIGTERM. Exit codes: 64 bad configuration, 69 cannot listen, 1 stopped
//! on an error.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use berth_agent::{Config, Listen};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "workspace-agent", version, about)]
struct Args {
    /// Where to listen: HOST:PORT for TCP, unix:PATH for a Unix socket; repeat the
    /// flag (or separate with commas in the env var) to listen on several.
    #[arg(
        long,
        env = "BERTH_AGENT_LISTEN",
        default_value = "0.0.0.0:9000",
        value_delimiter = ','
    )]
    listen: Vec<Listen>,
    /// Root of the workspace: default working directory of commands, and the only
    /// tree the files API can reach.
    #[arg(long, env = "BERTH_AGENT_ROOT", default_value = "/workspace")]
    root: std::path::PathBuf,
    /// Largest JSON request body and WebSocket message, in bytes.
    #[arg(long, env = "BERTH_AGENT_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    max_request_bytes: u64,
    /// Largest file an upload may write, in bytes.
    #[arg(long, env = "BERTH_AGENT_MAX_FILE_BYTES", default_value_t = 1024 * 1024 * 1024)]
    max_file_bytes: u64,
    /// Most entries a directory listing returns.
    #[arg(long, env = "BERTH_AGENT_MAX_LIST_ENTRIES", default_value_t = 10_000)]
    max_list_entries: usize,
    /// Most commands running at once.
    #[arg(long, env = "BERTH_AGENT_MAX_COMMANDS", default_value_t = 64)]
    max_commands: usize,
    /// SHA-256 (hex) of the slot's claim secret; a claim must carry the secret.
    /// hostd sets it on every slot. Without it the first claim is accepted.
    #[arg(long, env = "BERTH_CLAIM_SECRET_SHA256", hide_env_values = true)]
    claim_secret_sha256: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // A plain level, not an `EnvFilter`: compiling filter directives pulls in the
    // regex engine, and every page of code touched stays in the agent's RSS.
    let level = std::env::var("BERTH_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.root.is_dir() {
        tracing::error!(root = %args.root.display(), "the workspace root is not a directory");
        return ExitCode::from(64);
    }
    let claim_secret_sha256 = match args.claim_secret_sha256.as_deref().map(parse_sha256) {
        None => None,
        Some(Some(h)) => Some(h),
        Some(None) => {
            tracing::error!("BERTH_CLAIM_SECRET_SHA256 is not 64 hex digits");
            return ExitCode::from(64);
        }
    };
    let mut listeners = Vec::new();
    for listen in &args.listen {
        match berth_agent::bind(listen).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                tracing::error!(%listen, error = %e, "cannot listen");
                return ExitCode::from(69);
            }
        }
    }
    let listening: Vec<String> = args.listen.iter().map(ToString::to_string).collect();
    tracing::info!(listen = ?listening, root = %args.root.display(), "workspace-agent ready");
    let state = berth_agent::AgentState::new(Config {
        root: args.root,
        max_request_bytes: args.max_request_bytes,
        max_file_bytes: args.max_file_bytes,
        max_list_entries: args.max_list_entries,
        max_commands: args.max_commands,
        base_env: berth_agent::PASSED_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect(),
        claim_secret_sha256,
    });
    match berth_agent::serve(listeners, state, berth_agent::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent stopped");
            ExitCode::FAILURE
        }
    }
}

/// 64 hex digits → 32 bytes.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

//! `scheduler`: thin binary over [`berth_scheduler`]. `serve` runs the API for a
//! fleet; `dev` runs the whole system on this machine. Exit codes: 64 bad
//! configuration, 69 a dependency unavailable, 1 other failures.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use berth_scheduler::{Config, Scheduler, dev, placement::Strategy, store::Store};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "scheduler", version, about = "Berth's scheduler")]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines.
    #[arg(long, global = true, env = "BERTH_LOG_JSON")]
    log_json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API for hosts that report to it.
    Serve {
        #[arg(long, env = "BERTH_LISTEN", default_value = "0.0.0.0:7700")]
        listen: std::net::SocketAddr,
        /// State store: `memory` (one process only) or `redis://host:port` (a fleet).
        #[arg(long, env = "BERTH_STATE", default_value = "memory")]
        state: String,
        /// Warm pools, `template=size` separated by commas.
        #[arg(long, env = "BERTH_POOLS", default_value = "default=3")]
        pools: String,
        #[arg(long, env = "BERTH_PLACEMENT", default_value = "spread")]
        placement: Strategy,
        /// Bearer token the backend presents.
        #[arg(long, env = "BERTH_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// Token shared with hostd.
        #[arg(long, env = "BERTH_HOST_TOKEN", hide_env_values = true)]
        host_token: String,
    },
    /// Run the whole system locally: hostd (docker runtime) + scheduler (in memory).
    Dev {
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:7701")]
        hostd_listen: std::net::SocketAddr,
        /// Warm workspaces to keep ready.
        #[arg(long, default_value_t = 3)]
        pool: usize,
        /// Seccomp profile (Docker JSON) for workspace containers, or `docker-default`;
        /// without it hostd applies Berth's workspace profile.
        #[arg(long, env = "BERTH_SECCOMP_PROFILE")]
        seccomp_profile: Option<std::path::PathBuf>,
    },
}

fn parse_pools(s: &str) -> Result<BTreeMap<String, usize>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (t, n) = p
                .split_once('=')
                .ok_or_else(|| format!("pool `{p}` is not `template=size`"))?;
            let n = n
                .trim()
                .parse()
                .map_err(|_| format!("pool `{p}`: size is not a number"))?;
            Ok((t.trim().to_owned(), n))
        })
        .collect()
}

fn config_error(msg: &str) -> std::process::ExitCode {
    eprintln!("scheduler: configuration error: {msg}");
    std::process::ExitCode::from(64)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match args.command {
        Command::Dev {
            listen,
            hostd_listen,
            pool,
            seccomp_profile,
        } => {
            let opts = dev::DevOptions {
                listen,
                hostd_listen,
                pool_size: pool,
                seccomp_profile,
            };
            match dev::run(opts).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth: {e}");
                    std::process::ExitCode::from(69)
                }
            }
        }
        Command::Serve {
            listen,
            state,
            pools,
            placement,
            api_token,
            host_token,
        } => {
            let store = if state == "memory" {
                Store::memory()
            } else if state.starts_with("redis://") || state.starts_with("rediss://") {
                match Store::redis(&state).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reach the state store");
                        return std::process::ExitCode::from(69);
                    }
                }
            } else {
                return config_error(&format!(
                    "state store `{state}` is not `memory` or a redis:// URL"
                ));
            };
            let pools = match parse_pools(&pools) {
                Ok(p) => p,
                Err(e) => return config_error(&e),
            };
            if host_token.len() < 16 {
                return config_error("the host token must be at least 16 characters");
            }
            let config = Config {
                pools,
                strategy: placement,
                api_token,
                host_token,
                ..Config::default()
            };
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%listen, error = %e, "cannot listen");
                    return std::process::ExitCode::from(69);
                }
            };
            tracing::info!(%listen, "scheduler serving");
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            match berth_scheduler::run(Scheduler::new(config, store), listener, shutdown).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pools;

    #[test]
    fn pools_parse_and_errors_name_the_entry() {
        let p = parse_pools("default=3, gpu=1").unwrap();
        assert_eq!(p["default"], 3);
        assert_eq!(p["gpu"], 1);
        assert!(parse_pools("default").unwrap_err().contains("`default`"));
        assert!(
            parse_pools("default=x")
                .unwrap_err()
                .contains("not a number")
        );
    }
}

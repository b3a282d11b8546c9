//! `workspace-agent`: the process inside every workspace that runs commands for the
//! AI agent. Thin: parse config, set up logging, serve until SIGTERM.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "workspace-agent", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BERTH_AGENT_LISTEN", default_value = "0.0.0.0:9000")]
    listen: std::net::SocketAddr,
    /// Root of the workspace: default working directory of commands.
    #[arg(long, env = "BERTH_AGENT_ROOT", default_value = "/workspace")]
    root: std::path::PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %args.listen, error = %e, "cannot listen");
            return std::process::ExitCode::from(69);
        }
    };
    tracing::info!(listen = %args.listen, root = %args.root.display(), "workspace-agent ready");
    let state = berth_agent::AgentState::new(args.root);
    match berth_agent::serve(listener, state, berth_agent::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

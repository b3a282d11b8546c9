//! `credential-proxy`: thin binary over [`berth_proxy`].
//!
//! Exit codes: 64 for a configuration that does not load or validate (the message
//! names the field), 69 when the listen address cannot be bound, 1 when serving
//! fails.
#![forbid(unsafe_code)]

use std::sync::Arc;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "credential-proxy", version, about)]
struct Args {
    /// TOML configuration (routes, secrets, limits). Without one, only /health
    /// and /metrics answer and everything else is refused.
    #[arg(long, env = "BERTH_PROXY_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Log format. The level comes from `BERTH_LOG` (error, warn, info, debug, trace).
    #[arg(long, env = "BERTH_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Worker threads; 1 runs everything on one thread (the sidecar default).
    #[arg(long, env = "BERTH_PROXY_THREADS", default_value_t = 1)]
    threads: usize,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // A plain level (not EnvFilter): its regex machinery would cost idle memory
    // in every sidecar.
    let level = std::env::var("BERTH_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let fmt = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
        berth_proxy::body::audit_direct_text(true);
    }
    let config =
        match berth_proxy::Config::load(args.config.as_deref(), &berth_proxy::config::SystemEnv) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("credential-proxy: bad configuration: {e}");
                return std::process::ExitCode::from(64);
            }
        };
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("credential-proxy: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(run(config))
}

async fn run(config: berth_proxy::Config) -> std::process::ExitCode {
    let sdk = if berth_proxy::Proxy::needs_aws(&config) {
        Some(berth_proxy::load_aws(&config).await)
    } else {
        None
    };
    let resolver: berth_proxy::net::SharedResolver = Arc::new(
        berth_proxy::net::SystemResolver::new(config.hosts.clone(), config.dns),
    );
    let listen = config.listen;
    let proxy = match berth_proxy::Proxy::new(config, resolver, sdk.as_ref()) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("credential-proxy: bad configuration: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %listen, error = %e, "cannot listen");
            return std::process::ExitCode::from(69);
        }
    };
    tokio::spawn(proxy.secrets.clone().run_refresh());
    tracing::info!(
        listen = %listener.local_addr().unwrap_or(listen),
        routes = proxy.config().routes.len(),
        "credential-proxy ready"
    );
    if let (Some(addr), Some(hash)) = (
        proxy.config().admin_listen,
        proxy.config().admin_secret_sha256.clone(),
    ) {
        let admin = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %addr, error = %e, "cannot listen for the admin channel");
                return std::process::ExitCode::from(69);
            }
        };
        tokio::spawn(berth_proxy::admin::serve_admin(
            admin,
            proxy.clone(),
            hash,
            std::future::pending(),
        ));
    }
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
    };
    match berth_proxy::serve(listener, proxy, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "proxy stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `standin-host --scheduler URL --host-secret SECRET [--listen ADDR] [--host-id ID]`:
//! one stand-in host (see `berth_tests::standin_host`) until killed. Used by
//! `tests/schemathesis.sh`; nothing runs behind its slots.
#![forbid(unsafe_code)]

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut scheduler, mut secret, mut listen, mut host_id) =
        (None, None, "127.0.0.1:0".to_owned(), "standin-1".to_owned());
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--scheduler", Some(v)) => scheduler = Some(v),
            ("--host-secret", Some(v)) => secret = Some(v),
            ("--listen", Some(v)) => listen = v,
            ("--host-id", Some(v)) => host_id = v,
            _ => {
                eprintln!(
                    "usage: standin-host --scheduler URL --host-secret SECRET [--listen ADDR] [--host-id ID]"
                );
                return ExitCode::from(64);
            }
        }
    }
    let (Some(scheduler), Some(secret)) = (scheduler, secret) else {
        eprintln!("standin-host: --scheduler and --host-secret are required");
        return ExitCode::from(64);
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("standin-host: cannot listen on {listen}: {e}");
            return ExitCode::from(69);
        }
    };
    let host =
        berth_tests::standin_host::StandinHost::start(listener, &scheduler, &secret, &host_id)
            .await;
    println!("standin-host {} listening on {}", host.host_id, host.url);
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}

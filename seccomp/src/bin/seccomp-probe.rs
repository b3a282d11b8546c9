//! `seccomp-probe`: run inside a workspace container, it tries every call the workspace
//! profile must refuse and the ordinary work it must allow, and prints a JSON report
//! (`berth_seccomp::probe::Report`) on stdout.
//!
//! Exit codes: 0 everything as expected, 1 some deviation (listed on stderr), 64 bad
//! usage. `seccomp-probe --exit-with N` exits with N at once: the probe's fork/exec
//! checks run the probe itself that way, so an image needs no other binary.

use std::{path::PathBuf, process::ExitCode};

use berth_seccomp::probe::{self, ProbeConfig};
use clap::Parser;

/// Probe the seccomp profile this process runs under.
#[derive(Debug, Parser)]
#[command(name = "seccomp-probe")]
struct Args {
    /// Writable directory for the file I/O checks.
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
    /// Binary run as `<exec> --exit-with N` by the fork/exec checks.
    #[arg(long)]
    exec: Option<PathBuf>,
    /// Exit at once with this status (used by the probe's own exec checks).
    #[arg(long)]
    exit_with: Option<u8>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(code) = args.exit_with {
        return ExitCode::from(code);
    }
    let config = ProbeConfig {
        scratch: args.scratch,
        exec_target: args.exec.unwrap_or_else(probe::self_exe),
    };
    let report = probe::run(&config);
    match serde_json::to_string_pretty(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("seccomp-probe: cannot serialise the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    let deviations = report.deviations();
    for d in &deviations {
        eprintln!("seccomp-probe: {d}");
    }
    if deviations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

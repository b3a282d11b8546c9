//! `seccomp-report`: prints how a Docker seccomp profile differs from Docker's default,
//! as Markdown, for reviewing a change to `workspace.json` (the README carries its
//! output for the current profile).
//!
//! Exit codes: 0 printed, 64 bad usage, 65 the profile is unreadable or invalid.

use std::{path::PathBuf, process::ExitCode};

use berth_seccomp::{WORKSPACE_PROFILE_JSON, report, syscalls::Arch, validate};
use clap::Parser;

/// Compare a seccomp profile with Docker's default profile.
#[derive(Debug, Parser)]
#[command(name = "seccomp-report")]
struct Args {
    /// Profile to compare (Docker's JSON format); the built-in workspace.json if absent.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Architecture to compare on: x86_64 or aarch64.
    #[arg(long, default_value = "x86_64", value_parser = parse_arch)]
    arch: Arch,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    Arch::ALL
        .into_iter()
        .find(|a| a.to_string() == s)
        .ok_or_else(|| format!("unknown architecture `{s}` (x86_64 or aarch64)"))
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
    let (text, source) = match &args.profile {
        None => (
            WORKSPACE_PROFILE_JSON.to_owned(),
            "seccomp/workspace.json".to_owned(),
        ),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (text, path.display().to_string()),
            Err(e) => {
                eprintln!("seccomp-report: cannot read {}: {e}", path.display());
                return ExitCode::from(65);
            }
        },
    };
    match validate::load(&text, &source) {
        Ok(profile) => {
            print!("{}", report::compare(&profile, args.arch).markdown());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seccomp-report: {e}");
            ExitCode::from(65)
        }
    }
}

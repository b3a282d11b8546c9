//! Berth's seccomp policies, and the tools that check, translate and prove them.
//!
//! # Background
//!
//! Workspaces run code nobody reviewed, on a kernel shared with other workspaces and
//! with hostd. Three layers make that acceptable: dropped capabilities, the metadata
//! block, and a seccomp profile that keeps the riskiest kernel interfaces out of reach.
//! This crate holds the two policies and what keeps them honest:
//!
//! * `workspace.json` — the workspace profile, in Docker's format, for the AMI's
//!   Docker daemon and for hostd's docker mode ([`WORKSPACE_PROFILE_JSON`]);
//! * `hostd.json` — hostd's own filter, in `seccompiler`'s format, compiled into the
//!   binary at build time ([`hostd`]);
//! * [`profile`], [`validate`], [`resolve`], [`translate`] — read a Docker profile,
//!   refuse a sloppy one, decide it for one runtime, and turn it into BPF, so the same
//!   policy can be applied (and tested) outside Docker;
//! * [`probe`] — the calls a workspace must not make and the work it must still do,
//!   run by the `seccomp-probe` binary inside a real container and by the tests in a
//!   forked process;
//! * [`report`] — the comparison with Docker's default profile ([`docker_default`]),
//!   printed by `seccomp-report` and kept in `seccomp/README.md`.

pub mod docker_default;
pub mod hostd;
pub mod probe;
pub mod profile;
pub mod report;
pub mod resolve;
pub mod syscalls;
pub mod translate;
pub mod validate;

pub use hostd::{HostdFilterMode, apply_hostd_filter, hostd_filter};
pub use profile::Profile;
pub use resolve::{ResolvedProfile, Runtime, Verdict};
pub use translate::CompiledProfile;
pub use validate::ProfileError;

/// The workspace profile, in Docker's format. hostd's docker mode passes it as
/// `SecurityOpt: ["seccomp=<this>"]` when it creates a workspace container; the AMI
/// installs the file as the daemon's `seccomp-profile`.
pub const WORKSPACE_PROFILE_JSON: &str = include_str!("../workspace.json");

/// Why the workspace filter could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceFilterError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("this machine's architecture ({0}) has no workspace filter")]
    UnsupportedArch(String),
    #[error(transparent)]
    Translate(#[from] translate::TranslateError),
}

/// The workspace profile, parsed and checked.
pub fn workspace_profile() -> Result<Profile, ProfileError> {
    validate::load(WORKSPACE_PROFILE_JSON, "seccomp/workspace.json")
}

/// The workspace profile resolved for Berth's runtime (all capabilities dropped) on
/// this machine's architecture.
pub fn workspace_resolved() -> Result<ResolvedProfile, WorkspaceFilterError> {
    let runtime = Runtime::workspace_native()
        .ok_or_else(|| WorkspaceFilterError::UnsupportedArch(std::env::consts::ARCH.to_owned()))?;
    Ok(ResolvedProfile::resolve(&workspace_profile()?, &runtime))
}

/// The workspace profile as BPF for this machine, ready to [`CompiledProfile::apply`].
pub fn workspace_filter() -> Result<CompiledProfile, WorkspaceFilterError> {
    Ok(translate::compile(&workspace_resolved()?)?)
}

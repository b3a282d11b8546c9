//! Berth's seccomp policies (placeholder until the seccomp issue lands).
#![forbid(unsafe_code)]

//! The deployment (`terraform/`, `ami/`) and the binaries it runs, read so that a
//! test can hold one against the other: [`binaries`] says what each binary accepts,
//! [`settings`] what the deployment passes.

pub mod binaries;
pub mod settings;

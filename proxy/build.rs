//! Link the `credential-proxy` binary with packed relative relocations (DT_RELR,
//! glibc ≥ 2.36, binutils ≥ 2.38): the PIE keeps its address randomisation, but
//! the loader no longer reads ~0.7 MiB of relocation entries into every sidecar
//! at start-up. Idle memory is multiplied by the number of workspaces on a host.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu && std::env::var_os("BERTH_PROXY_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-env-changed=BERTH_PROXY_NO_RELR");
}

//! hostd's own capabilities, dropped to what its work needs right after start.
//!
//! # Background
//! hostd starts as root with every capability, but all it does afterwards is enter
//! network namespaces (`setns` needs `CAP_SYS_ADMIN`; opening another uid's
//! `/proc/<pid>/ns/net` needs `CAP_SYS_PTRACE`), change netfilter rules
//! (`iptables-restore`: `CAP_NET_ADMIN`, and `CAP_NET_RAW` for the legacy backend),
//! and talk to Docker over a socket its uid owns (no capability at all). Everything
//! else — loading modules, mounting, raw I/O, changing file ownership, bypassing file
//! permissions — is dropped from every set, the bounding set included, so neither
//! hostd nor the `iptables` tools it runs can regain it.
//!
//! Capabilities belong to each thread, not to the process, so this must run while
//! hostd has a single thread: the binary calls [`drop_to_kept`] before it starts the
//! tokio runtime, and every thread made afterwards inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities hostd keeps, as `/proc/<pid>/status` names them.
pub const KEPT: [Capability; 4] = [
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_RAW,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_PTRACE,
];

/// Why the capabilities could not be dropped.
#[derive(Debug, thiserror::Error)]
#[error("cannot drop capabilities ({set}): {source}")]
pub struct CapsError {
    set: &'static str,
    #[source]
    source: caps::errors::CapsError,
}

/// The bit mask of [`KEPT`], as in `CapEff:` of `/proc/<pid>/status`.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, c| m | c.bitmask())
}

/// Drops every capability but [`KEPT`] from the calling thread's bounding,
/// inheritable, ambient, effective and permitted sets.
pub fn drop_to_kept() -> Result<(), CapsError> {
    let keep: CapsHashSet = KEPT.into_iter().collect();
    let fail = |set| move |source| CapsError { set, source };
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(fail("bounding"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(fail("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(fail("inheritable"))?;
    let have = caps::read(None, CapSet::Permitted).map_err(fail("permitted"))?;
    let keep: CapsHashSet = keep.intersection(&have).copied().collect();
    caps::set(None, CapSet::Effective, &keep).map_err(fail("effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(fail("permitted"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_mask_names_four_capabilities() {
        // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21.
        assert_eq!(kept_mask(), (1 << 12) | (1 << 13) | (1 << 19) | (1 << 21));
    }
}

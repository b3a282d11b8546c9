//! Round trips and hostile archives, on real directories.

use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "berth-archive-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.0.join(rel)
    }
    fn is_empty(&self) -> bool {
        std::fs::read_dir(&self.0).unwrap().next().is_none()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // Read-only directories made by a test come back writable first.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwx"])
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Runs `write_archive` on `root` and collects the stream.
fn archive_of(root: &Path, limits: &ArchiveLimits) -> Result<(Vec<u8>, Tally), AgentError> {
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
    let collector = std::thread::spawn(move || {
        let mut out = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    });
    let tally = write_archive(root, limits, ChannelWriter::new(tx));
    let bytes = collector.join().unwrap();
    tally.map(|t| (bytes, t))
}

/// Runs `unpack` of `archive` into `root` as the handler does: emptied after a
/// refusal.
fn restore(
    root: &Path,
    archive: &[u8],
    sha: [u8; 32],
    limits: &ArchiveLimits,
) -> Result<RestoreSummary, AgentError> {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let chunks: Vec<Bytes> = archive.chunks(CHUNK).map(Bytes::copy_from_slice).collect();
    let feeder = std::thread::spawn(move || {
        for c in chunks {
            if tx.blocking_send(Ok(c)).is_err() {
                break;
            }
        }
    });
    let result = unpack(root, limits, &sha, ChannelReader::new(rx));
    if result.is_err() {
        empty_root(root).unwrap();
    }
    feeder.join().unwrap();
    result
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn zstd_of(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).unwrap()
}

/// A raw tar entry with any path and type, written without the tar crate's checks.
fn raw_entry(
    out: &mut Vec<u8>,
    path: &str,
    kind: tar::EntryType,
    size: u64,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_mode(0o644);
    h.set_size(size);
    h.set_entry_type(kind);
    if let Some(l) = link {
        let bytes = h.as_old_mut().linkname.as_mut();
        bytes[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn end(out: &mut Vec<u8>) {
    out.extend(std::iter::repeat_n(0u8, 1024));
}

#[test]
fn a_tree_comes_back_with_modes_links_empty_dirs_and_contents() {
    let src = Dir::new("src");
    std::fs::create_dir_all(src.path("src/deep/er")).unwrap();
    std::fs::create_dir_all(src.path("empty")).unwrap();
    std::fs::write(src.path("src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(src.path("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.path("run.sh"), std::fs::Permissions::from_mode(0o751)).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.path("src/deep/er/blob.bin"), &big).unwrap();
    symlink("src/main.rs", src.path("link-in")).unwrap();
    symlink("../../run.sh", src.path("src/deep/up")).unwrap();
    symlink("/etc/passwd", src.path("link-out")).unwrap();
    symlink("../../outside", src.path("src/escape")).unwrap();
    let long = "n".repeat(120);
    std::fs::create_dir_all(src.path(&format!("{long}/{long}"))).unwrap();
    std::fs::write(src.path(&format!("{long}/{long}/f")), b"long").unwrap();
    std::fs::create_dir(src.path("ro")).unwrap();
    std::fs::write(src.path("ro/kept"), b"x").unwrap();
    std::fs::set_permissions(src.path("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();

    let limits = ArchiveLimits::default();
    let (bytes, tally) = archive_of(&src.0, &limits).unwrap();
    assert_eq!(tally.skipped, 2, "the two links pointing out are left out");
    let dst = Dir::new("dst");
    let summary = restore(&dst.0, &bytes, sha(&bytes), &limits).unwrap();
    assert_eq!(summary.entries, tally.entries);
    assert_eq!(summary.archive_bytes, bytes.len() as u64);
    assert_eq!(
        std::fs::read(dst.path("src/deep/er/blob.bin")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read(dst.path("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    let mode = std::fs::metadata(dst.path("run.sh"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o751);
    assert_eq!(
        std::fs::read_link(dst.path("link-in")).unwrap(),
        Path::new("src/main.rs")
    );
    assert_eq!(
        std::fs::read_link(dst.path("src/deep/up")).unwrap(),
        Path::new("../../run.sh")
    );
    assert!(std::fs::symlink_metadata(dst.path("link-out")).is_err());
    assert!(std::fs::symlink_metadata(dst.path("src/escape")).is_err());
    assert!(
        std::fs::read_dir(dst.path("empty"))
            .unwrap()
            .next()
            .is_none()
    );
    assert_eq!(
        std::fs::read(dst.path(&format!("{long}/{long}/f"))).unwrap(),
        b"long"
    );
    let ro = std::fs::metadata(dst.path("ro"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        ro, 0o555,
        "a read-only directory is read-only again, with its file in it"
    );
    assert_eq!(std::fs::read(dst.path("ro/kept")).unwrap(), b"x");
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(
        mtime(&src.path("src/main.rs"))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        mtime(&dst.path("src/main.rs"))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
}

#[test]
fn a_workspace_over_its_limits_is_refused_before_anything_is_sent() {
    let src = Dir::new("limits");
    for i in 0..5 {
        std::fs::write(src.path(&format!("f{i}")), vec![7u8; 1000]).unwrap();
    }
    let few = ArchiveLimits {
        max_entries: 3,
        ..ArchiveLimits::default()
    };
    let err = walk(&src.0, &few, &mut |_| Ok(())).unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::ArchiveTooLarge {
                what: "entries",
                ..
            }
        ),
        "{err}"
    );
    let small = ArchiveLimits {
        max_bytes: 4000,
        ..ArchiveLimits::default()
    };
    let err = walk(&src.0, &small, &mut |_| Ok(())).unwrap_err();
    assert!(
        matches!(err, AgentError::ArchiveTooLarge { what: "bytes", .. }),
        "{err}"
    );
}

/// Restores `tar` (compressed here) and expects `check` of the refusal, and an
/// empty root after it.
fn refused(tar: &[u8], limits: ArchiveLimits, check: impl Fn(&AgentError) -> bool) {
    let archive = zstd_of(tar);
    let dst = Dir::new("hostile");
    let err = restore(&dst.0, &archive, sha(&archive), &limits).unwrap_err();
    assert!(
        check(&err),
        "unexpected refusal: {err} ({:?})",
        err.status_and_code()
    );
    assert!(dst.is_empty(), "a refused archive leaves nothing behind");
    assert!(!dst.0.parent().unwrap().join("evil").exists());
}

#[test]
fn entries_that_escape_the_root_are_refused() {
    let refusal = |e: &AgentError| matches!(e, AgentError::ArchiveRefused { .. });
    for path in ["../evil", "a/../../evil", "/etc/evil", "./x", "a//b"] {
        let mut t = Vec::new();
        raw_entry(&mut t, "ok.txt", tar::EntryType::Regular, 2, None, b"ok");
        raw_entry(&mut t, path, tar::EntryType::Regular, 4, None, b"evil");
        end(&mut t);
        refused(&t, ArchiveLimits::default(), refusal);
    }
    // Links that point out: absolute, and climbing above the root.
    for target in ["/etc", "../..", "a/../../x"] {
        let mut t = Vec::new();
        raw_entry(&mut t, "etc", tar::EntryType::Symlink, 0, Some(target), b"");
        end(&mut t);
        refused(&t, ArchiveLimits::default(), refusal);
    }
    // A link that stays inside, then a file written through it.
    let mut t = Vec::new();
    raw_entry(&mut t, "d/", tar::EntryType::Directory, 0, None, b"");
    raw_entry(&mut t, "l", tar::EntryType::Symlink, 0, Some("d"), b"");
    raw_entry(&mut t, "l/x", tar::EntryType::Regular, 1, None, b"x");
    end(&mut t);
    refused(&t, ArchiveLimits::default(), refusal);
    // Hard links, devices and FIFOs are not restored.
    for kind in [
        tar::EntryType::Link,
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Fifo,
    ] {
        let mut t = Vec::new();
        raw_entry(&mut t, "x", kind, 0, Some("ok.txt"), b"");
        end(&mut t);
        refused(&t, ArchiveLimits::default(), refusal);
    }
    // A GNU sparse entry (which we never write) cannot even be read as one.
    let mut t = Vec::new();
    raw_entry(&mut t, "x", tar::EntryType::GNUSparse, 0, None, b"");
    end(&mut t);
    refused(&t, ArchiveLimits::default(), |e| {
        matches!(
            e,
            AgentError::ArchiveRefused { .. } | AgentError::ArchiveCorrupt(_)
        )
    });
    // The same path twice.
    let mut t = Vec::new();
    raw_entry(&mut t, "x", tar::EntryType::Regular, 1, None, b"1");
    raw_entry(&mut t, "x", tar::EntryType::Regular, 1, None, b"2");
    end(&mut t);
    refused(&t, ArchiveLimits::default(), refusal);
}

#[test]
fn a_ten_gib_sparse_file_is_refused_by_its_header() {
    let mut t = Vec::new();
    raw_entry(&mut t, "small", tar::EntryType::Regular, 1, None, b"s");
    // The header claims 10 GiB; none of it follows.
    raw_entry(&mut t, "huge", tar::EntryType::Regular, 10 << 30, None, b"");
    refused(
        &t,
        ArchiveLimits::default(),
        |e| matches!(e, AgentError::ArchiveTooLarge { what: "bytes", at, .. } if at == "huge"),
    );
}

#[test]
fn a_decompression_bomb_is_refused_by_its_ratio() {
    let mut t = Vec::new();
    let zeros = vec![0u8; 64 << 20];
    raw_entry(
        &mut t,
        "zeros",
        tar::EntryType::Regular,
        zeros.len() as u64,
        None,
        &zeros,
    );
    end(&mut t);
    let limits = ArchiveLimits {
        max_ratio: 100,
        ..ArchiveLimits::default()
    };
    refused(
        &t,
        limits,
        |e| matches!(e, AgentError::ArchiveRefused { reason, .. } if reason.contains("bomb")),
    );
}

#[test]
fn a_wrong_checksum_or_a_corrupt_archive_is_refused_and_leaves_nothing() {
    let src = Dir::new("sum");
    std::fs::write(src.path("a"), b"a").unwrap();
    let (bytes, _) = archive_of(&src.0, &ArchiveLimits::default()).unwrap();
    let dst = Dir::new("sum-dst");
    let err = restore(&dst.0, &bytes, [0u8; 32], &ArchiveLimits::default()).unwrap_err();
    assert!(matches!(err, AgentError::ChecksumMismatch { .. }), "{err}");
    assert!(dst.is_empty());
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let err = restore(&dst.0, &garbage, sha(&garbage), &ArchiveLimits::default()).unwrap_err();
    assert!(matches!(err, AgentError::ArchiveCorrupt(_)), "{err}");
    let cut = &bytes[..bytes.len() / 2];
    let err = restore(&dst.0, cut, sha(cut), &ArchiveLimits::default()).unwrap_err();
    assert!(matches!(err, AgentError::ArchiveCorrupt(_)), "{err}");
    assert!(dst.is_empty());
    // The same workspace then takes a good archive.
    restore(&dst.0, &bytes, sha(&bytes), &ArchiveLimits::default()).unwrap();
    assert_eq!(std::fs::read(dst.path("a")).unwrap(), b"a");
}

#[test]
fn link_targets_are_judged_from_the_links_own_directory() {
    assert!(link_stays_inside(b"a", b"b"));
    assert!(link_stays_inside(b"a/b/c", b"../../x"));
    assert!(!link_stays_inside(b"a/b/c", b"../../../x"));
    assert!(!link_stays_inside(b"a", b"/a"));
    assert!(!link_stays_inside(b"a", b""));
    assert!(link_stays_inside(b"a", b"./b/../c"));
    assert!(!link_stays_inside(b"a", b".."));
}

#[test]
fn the_query_is_checked() {
    assert!(parse_query(Some("max_bytes=10&max_entries=2&max_ratio=5"), false).is_ok());
    assert!(parse_query(Some("max_bytes=0"), false).is_err());
    assert!(parse_query(Some("max_bytes=-1"), false).is_err());
    assert!(parse_query(Some("sha256=00"), true).is_err());
    assert!(parse_query(Some(&format!("sha256={}", "0".repeat(64))), false).is_err());
    let q = parse_query(Some(&format!("sha256={}", "ab".repeat(32))), true).unwrap();
    assert_eq!(q.sha256, Some([0xab; 32]));
    assert!(parse_query(Some("nope=1"), false).is_err());
}

#[test]
fn set_uid_and_set_gid_bits_are_dropped() {
    let mut t = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("tool").unwrap();
    h.set_mode(0o6755);
    h.set_size(2);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    t.extend_from_slice(b"#!");
    t.extend(std::iter::repeat_n(0u8, 510));
    end(&mut t);
    let archive = zstd_of(&t);
    let dst = Dir::new("suid");
    restore(&dst.0, &archive, sha(&archive), &ArchiveLimits::default()).unwrap();
    let mode = std::fs::metadata(dst.path("tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
}

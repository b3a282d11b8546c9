//! Checkpoints of the workspace root: `GET /v1/archive` streams it out as one
//! tar + zstd archive, `PUT /v1/archive` unpacks one into an unclaimed workspace.
//!
//! Background: hostd calls both (with the slot's claim secret), carrying the bytes
//! between the agent and the object store, which the workspace cannot reach. The
//! tree is walked one directory descriptor at a time with `O_NOFOLLOW`, like
//! [`crate::fsroot`]: a symlink is archived as the link it is and never followed,
//! and one pointing outside the root is left out (a restore would refuse it), as
//! are sockets, FIFOs and devices. A first walk counts the tree so that a
//! workspace over the template's limits is refused before a byte is sent; the
//! second writes the archive into a bounded channel, so neither the agent nor
//! hostd ever holds it whole.
//!
//! Unpacking trusts nothing in the archive: every entry's path must be relative and
//! plain (no `..`, no absolute path, no empty or `.` component), only files,
//! directories and symlinks that stay inside are accepted, a file's declared size
//! is checked against the remaining budget before any of it is written (a 10 GiB
//! sparse file is refused by its header), the unpacked bytes are checked against
//! the archive bytes read (a decompression bomb is refused by its ratio), the
//! zstd window is capped (its memory too), and the SHA-256 of the whole archive
//! must match the manifest's. Any refusal empties the root again, so the
//! workspace is as usable as before.

use std::{
    ffi::OsStr,
    io::{self, Read, Write},
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    Json,
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use berth_wire::checkpoint::{ArchiveLimits, RestoreSummary, headers as archive_headers};
use bytes::Bytes;
use futures_util::StreamExt;
use nix::{
    errno::Errno,
    fcntl::{AtFlags, OFlag, openat, readlinkat},
    sys::{
        stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, futimens, mkdirat},
        time::TimeSpec,
    },
    unistd::symlinkat,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{AgentState, error::AgentError, fsroot};

/// Bytes per chunk between the walker and the HTTP body (and back).
const CHUNK: usize = 256 * 1024;
/// Chunks in flight in either direction: what the agent holds of an archive.
const IN_FLIGHT: usize = 8;
/// zstd level of checkpoints: `zstd`'s own default.
const LEVEL: i32 = 3;
/// Largest zstd window a restore accepts (2^23 = 8 MiB; level 3 writes 2 MiB).
const WINDOW_LOG_MAX: u32 = 23;
/// The ratio check starts once this much is unpacked (small archives of text may
/// legitimately compress well).
const RATIO_FLOOR: u64 = 16 * 1024 * 1024;
/// Longest entry path or link target accepted.
const MAX_PATH: usize = 4096;

// === export ===

/// What a walk of the tree counted.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    entries: u64,
    bytes: u64,
    skipped: u64,
}

/// `GET /v1/archive?max_bytes=&max_entries=`: the root as tar + zstd, streamed.
pub(crate) async fn export(
    State(state): State<AgentState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AgentError> {
    state.authorize_platform(&headers, true)?;
    let q = parse_query(query.as_deref(), false)?;
    let root = state.inner.config.root.clone();
    let limits = q.limits;
    let counted = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || walk(&root, &limits, &mut |_| Ok(())))
            .await
            .map_err(|e| AgentError::ArchiveFailed(e.to_string()))??
    };
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        match write_archive(&root, &limits, ChannelWriter::new(tx.clone())) {
            Ok(t) => tracing::info!(
                entries = t.entries,
                bytes = t.bytes,
                skipped = t.skipped,
                ms = started.elapsed().as_millis() as u64,
                "archive written"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "archive failed; the stream ends with an error");
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zstd"),
    );
    h.insert(archive_headers::ENTRIES, counted.entries.into());
    h.insert(archive_headers::BYTES, counted.bytes.into());
    h.insert(archive_headers::SKIPPED, counted.skipped.into());
    Ok(resp)
}

/// One thing the walk found, handed to its visitor.
enum Node<'a> {
    Dir {
        path: &'a [u8],
        stat: &'a FileStat,
    },
    File {
        path: &'a [u8],
        parent: &'a OwnedFd,
        name: &'a [u8],
    },
    Link {
        path: &'a [u8],
        target: &'a [u8],
        stat: &'a FileStat,
    },
}

/// Walks the tree under `root` in name order, counting against `limits` and
/// handing each directory, file and inside-pointing link to `visit`.
fn walk(
    root: &Path,
    limits: &ArchiveLimits,
    visit: &mut dyn FnMut(Node<'_>) -> Result<(), AgentError>,
) -> Result<Tally, AgentError> {
    let fd = open_root(root)?;
    let mut tally = Tally::default();
    walk_dir(fd, &mut Vec::new(), 0, limits, &mut tally, visit)?;
    Ok(tally)
}

fn walk_dir(
    fd: OwnedFd,
    rel: &mut Vec<u8>,
    depth: usize,
    limits: &ArchiveLimits,
    tally: &mut Tally,
    visit: &mut dyn FnMut(Node<'_>) -> Result<(), AgentError>,
) -> Result<(), AgentError> {
    let shown = String::from_utf8_lossy(rel).into_owned();
    let here = nix::unistd::dup(&fd).map_err(|e| fsroot::map_errno("open directory", &shown, e))?;
    for name in fsroot::dir_names(fd, &shown)? {
        let stat = match fstatat(&here, name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since the directory was read.
            Err(Errno::ENOENT) => continue,
            Err(_) => {
                tally.skipped += 1;
                continue;
            }
        };
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(&name);
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let result = match kind {
            SFlag::S_IFDIR => {
                count(tally, limits, 0, rel)?;
                visit(Node::Dir {
                    path: rel,
                    stat: &stat,
                })?;
                if depth + 1 > fsroot::MAX_DEPTH {
                    return Err(AgentError::ArchiveRefused {
                        entry: String::from_utf8_lossy(rel).into_owned(),
                        reason: format!("directories nested deeper than {}", fsroot::MAX_DEPTH),
                    });
                }
                match openat(
                    &here,
                    name.as_slice(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(sub) => walk_dir(sub, rel, depth + 1, limits, tally, visit),
                    // Unreadable (mode 000) or swapped for something else: its
                    // entry is in the archive, its contents are not.
                    Err(_) => {
                        tally.skipped += 1;
                        Ok(())
                    }
                }
            }
            SFlag::S_IFREG => {
                count(tally, limits, u64::try_from(stat.st_size).unwrap_or(0), rel)?;
                visit(Node::File {
                    path: rel,
                    parent: &here,
                    name: &name,
                })
            }
            SFlag::S_IFLNK => match readlinkat(&here, name.as_slice()) {
                Ok(target) if link_stays_inside(rel, target.as_bytes()) => {
                    count(tally, limits, 0, rel)?;
                    visit(Node::Link {
                        path: rel,
                        target: target.as_bytes(),
                        stat: &stat,
                    })
                }
                _ => {
                    tally.skipped += 1;
                    Ok(())
                }
            },
            _ => {
                tally.skipped += 1;
                Ok(())
            }
        };
        rel.truncate(len);
        result?;
    }
    Ok(())
}

/// Counts one entry of `bytes` against the limits.
fn count(
    tally: &mut Tally,
    limits: &ArchiveLimits,
    bytes: u64,
    rel: &[u8],
) -> Result<(), AgentError> {
    tally.entries += 1;
    tally.bytes = tally.bytes.saturating_add(bytes);
    if tally.entries > limits.max_entries {
        return Err(AgentError::ArchiveTooLarge {
            what: "entries",
            limit: limits.max_entries,
            at: String::from_utf8_lossy(rel).into_owned(),
        });
    }
    if tally.bytes > limits.max_bytes {
        return Err(AgentError::ArchiveTooLarge {
            what: "bytes",
            limit: limits.max_bytes,
            at: String::from_utf8_lossy(rel).into_owned(),
        });
    }
    Ok(())
}

/// Whether symlink `link` (a path below the root) with `target` resolves, by its
/// text alone, to a place under the root: relative, and its `..`s never climbing
/// above the root from the link's own directory.
fn link_stays_inside(link: &[u8], target: &[u8]) -> bool {
    if target.is_empty() || target.len() > MAX_PATH || target.starts_with(b"/") {
        return false;
    }
    let mut depth = link.split(|&b| b == b'/').count().saturating_sub(1);
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// Writes the archive of `root` into `out`.
fn write_archive(
    root: &Path,
    limits: &ArchiveLimits,
    out: ChannelWriter,
) -> Result<Tally, AgentError> {
    let failed = |e: io::Error| AgentError::ArchiveFailed(e.to_string());
    let mut encoder = zstd::stream::write::Encoder::new(out, LEVEL).map_err(failed)?;
    // One worker: compression runs beside the walk, as in `tar | zstd`.
    encoder.multithread(1).map_err(failed)?;
    let mut tar = tar::Builder::new(encoder);
    let tally = walk(root, limits, &mut |node| {
        let mut h = tar::Header::new_gnu();
        match node {
            Node::Dir { path, stat } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(mode_bits(stat));
                h.set_mtime(mtime(stat));
                h.set_size(0);
                tar.append_data(&mut h, as_path(path), io::empty())
            }
            Node::Link { path, target, stat } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_mtime(mtime(stat));
                h.set_size(0);
                tar.append_link(&mut h, as_path(path), as_path(target))
            }
            Node::File { path, parent, name } => {
                let fd = match openat(
                    parent,
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    // Unreadable, or gone since it was counted: left out.
                    Err(_) => return Ok(()),
                };
                let Ok(stat) = fstat(&fd) else { return Ok(()) };
                if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                    return Ok(());
                }
                let size = u64::try_from(stat.st_size).unwrap_or(0);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(mode_bits(&stat));
                h.set_mtime(mtime(&stat));
                h.set_size(size);
                // A file that shrinks while it is read is padded with zeros, one
                // that grows is cut at the size its header says: the archive stays
                // well-formed whatever the workspace does meanwhile.
                let body = std::fs::File::from(fd)
                    .take(size)
                    .chain(io::repeat(0))
                    .take(size);
                tar.append_data(&mut h, as_path(path), body)
            }
        }
        .map_err(failed)
    })?;
    let encoder = tar.into_inner().map_err(failed)?;
    let mut out = encoder.finish().map_err(failed)?;
    out.flush().map_err(failed)?;
    Ok(tally)
}

/// The root, opened to be read (walked, emptied) and written under.
fn open_root(root: &Path) -> Result<OwnedFd, AgentError> {
    openat(
        nix::fcntl::AT_FDCWD,
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fsroot::map_errno("open root", &root.display().to_string(), e))
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

fn mode_bits(stat: &FileStat) -> u32 {
    stat.st_mode & 0o7777
}

fn mtime(stat: &FileStat) -> u64 {
    u64::try_from(stat.st_mtime).unwrap_or(0)
}

/// A `Write` that sends what it is given, in chunks, to the HTTP body.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the archive's reader went away")
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

// === import ===

/// `PUT /v1/archive?sha256=&max_bytes=&max_entries=&max_ratio=`: unpacks the body
/// into the root of an unclaimed workspace, which is emptied first and emptied
/// again if the archive is refused.
pub(crate) async fn import(
    State(state): State<AgentState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<RestoreSummary>, AgentError> {
    state.authorize_platform(&headers, false)?;
    let q = parse_query(query.as_deref(), true)?;
    let expected = q.sha256.ok_or(AgentError::InvalidField {
        field: "sha256",
        reason: "the `sha256` query parameter (64 hex digits) is required".into(),
    })?;
    let _busy = state
        .inner
        .restoring
        .try_lock()
        .map_err(|_| AgentError::RestoreInProgress)?;
    if state.claim().is_some() {
        return Err(AgentError::AlreadyClaimed);
    }
    let started = Instant::now();
    let root = state.inner.config.root.clone();
    let limits = q.limits;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
    let pump = async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let failed = chunk.is_err();
            if tx.send(chunk.map_err(io::Error::other)).await.is_err() || failed {
                break;
            }
        }
    };
    let work = tokio::task::spawn_blocking(move || {
        empty_root(&root)?;
        let result = unpack(&root, &limits, &expected, ChannelReader::new(rx));
        if result.is_err() {
            // A refused archive leaves nothing behind: the workspace is empty, as
            // a fresh one is.
            if let Err(e) = empty_root(&root) {
                tracing::error!(error = %e, "cannot empty the root after a refused restore");
            }
        }
        result
    });
    let ((), result) = tokio::join!(pump, work);
    let mut summary = result.map_err(|e| AgentError::ArchiveFailed(e.to_string()))??;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        entries = summary.entries,
        bytes = summary.bytes,
        archive_bytes = summary.archive_bytes,
        ms = summary.duration_ms,
        "archive restored"
    );
    Ok(Json(summary))
}

/// Removes everything under the root (not the root itself).
pub(crate) fn empty_root(root: &Path) -> Result<(), AgentError> {
    let shown = root.display().to_string();
    let fd = open_root(root)?;
    let here = nix::unistd::dup(&fd).map_err(|e| fsroot::map_errno("open root", &shown, e))?;
    for name in fsroot::dir_names(fd, &shown)? {
        fsroot::remove_entry(&here, &name, &shown, 1)?;
    }
    Ok(())
}

/// Unpacks `input` (tar + zstd) under `root`, checking everything; see the module
/// documentation. Decompressing runs in a thread of its own beside the writing,
/// as `zstd -d | tar -x` runs in two processes.
fn unpack(
    root: &Path,
    limits: &ArchiveLimits,
    expected: &[u8; 32],
    input: ChannelReader,
) -> Result<RestoreSummary, AgentError> {
    let (written, inflated) = std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
        let decoder = scope.spawn(move || inflate(input, limits, tx));
        let written = extract(root, limits, ChannelReader::plain(rx));
        let inflated = decoder.join().unwrap_or_else(|_| {
            Err(Decode::Failed(AgentError::ArchiveFailed(
                "the decoder panicked".into(),
            )))
        });
        (written, inflated)
    });
    let (tally, (actual, archive_bytes)) = match (written, inflated) {
        (Ok(tally), Ok(done)) => (tally, done),
        // What the decoder found is the cause of what the writer saw.
        (_, Err(Decode::Failed(e))) => return Err(e),
        (Err(e), _) => return Err(e),
        (Ok(_), Err(Decode::HungUp)) => {
            return Err(AgentError::ArchiveFailed(
                "the writer stopped reading".into(),
            ));
        }
    };
    if !berth_wire::secrets_equal(&actual, expected) {
        return Err(AgentError::ChecksumMismatch {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    Ok(RestoreSummary {
        entries: tally.entries,
        bytes: tally.bytes,
        archive_bytes,
        sha256: hex::encode(actual),
        duration_ms: 0,
    })
}

/// How the decoder thread ended, when not with the archive's hash.
enum Decode {
    /// The writer stopped reading (it refused an entry: its error says why).
    HungUp,
    Failed(AgentError),
}

/// Decompresses `input` into `out` in chunks, refusing what outgrows the limits;
/// then reads what follows the last frame, so the hash covers the whole body.
/// Returns the SHA-256 and size of the archive as read.
fn inflate(
    mut input: ChannelReader,
    limits: &ArchiveLimits,
    out: mpsc::Sender<io::Result<Bytes>>,
) -> Result<([u8; 32], u64), Decode> {
    let read = input.read.clone();
    {
        let decoder = zstd::stream::read::Decoder::new(&mut input)
            .and_then(|mut d| d.window_log_max(WINDOW_LOG_MAX).map(|()| d))
            .map_err(|e| Decode::Failed(corrupt(e)))?;
        let mut inflated = Inflated {
            inner: decoder,
            out: 0,
            read,
            limits: *limits,
        };
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match inflated.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        let _ = out.blocking_send(Err(io::Error::other("the decoder stopped")));
                        return Err(Decode::Failed(from_io(e)));
                    }
                }
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            out.blocking_send(Ok(Bytes::from(buf)))
                .map_err(|_| Decode::HungUp)?;
        }
    }
    drop(out);
    io::copy(&mut input, &mut io::sink()).map_err(|e| Decode::Failed(from_io(e)))?;
    let hash = input
        .hasher
        .take()
        .map(|h| h.finalize().into())
        .unwrap_or([0; 32]);
    Ok((hash, input.read.load(Ordering::Relaxed)))
}

/// Writes the entries of the tar stream `input` under `root`.
fn extract(root: &Path, limits: &ArchiveLimits, input: ChannelReader) -> Result<Tally, AgentError> {
    let root_fd = open_root(root)?;
    let mut dirs = DirChain::new(root_fd);
    let mut tally = Tally::default();
    // Directory modes and times are set last: a read-only directory must still
    // take its contents, and writing them changes its mtime.
    let mut fixups: Vec<(Vec<Vec<u8>>, u32, u64)> = Vec::new();
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(from_io)? {
        let mut entry = entry.map_err(from_io)?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let parts = entry_parts(&raw_path).map_err(|reason| AgentError::ArchiveRefused {
            entry: shown.clone(),
            reason: reason.into(),
        })?;
        let refuse = |reason: String| AgentError::ArchiveRefused {
            entry: shown.clone(),
            reason,
        };
        let header = entry.header();
        let mode = header.mode().map_err(from_io)? & 0o1777;
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();
        let size = entry.size();
        count(&mut tally, limits, size, &raw_path)?;
        let (last, parents) = parts
            .split_last()
            .ok_or_else(|| refuse("an empty path".into()))?;
        let parent = dirs.open(parents).map_err(&refuse)?;
        match kind {
            tar::EntryType::Regular => {
                let fd = openat(
                    parent,
                    last.as_slice(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| match e {
                    Errno::EEXIST => refuse("a second entry for the same path".into()),
                    Errno::ENOSPC | Errno::EDQUOT => AgentError::NoSpace {
                        path: shown.clone(),
                    },
                    e => refuse(format!("cannot create the file: {e}")),
                })?;
                let mut file = std::fs::File::from(fd);
                io::copy(&mut entry, &mut file).map_err(|e| match e.raw_os_error() {
                    Some(c) if c == libc::ENOSPC || c == libc::EDQUOT => AgentError::NoSpace {
                        path: shown.clone(),
                    },
                    _ => from_io(e),
                })?;
                let fd = OwnedFd::from(file);
                fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|e| refuse(e.to_string()))?;
                let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
                let _ = futimens(&fd, &t, &t);
            }
            tar::EntryType::Directory => {
                match mkdirat(parent, last.as_slice(), Mode::from_bits_truncate(0o700)) {
                    Ok(()) => {}
                    // Made already as the parent of an earlier entry.
                    Err(Errno::EEXIST)
                        if fstatat(parent, last.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| {
                                SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
                                    == SFlag::S_IFDIR
                            }) => {}
                    Err(Errno::EEXIST) => {
                        return Err(refuse("a second entry for the same path".into()));
                    }
                    Err(e) => return Err(refuse(format!("cannot make the directory: {e}"))),
                }
                fixups.push((parts.clone(), mode, mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| refuse("a symlink without a target".into()))?;
                if !link_stays_inside(&raw_path, &target) {
                    return Err(refuse(format!(
                        "a symlink to {:?}, outside the workspace",
                        String::from_utf8_lossy(&target)
                    )));
                }
                symlinkat(as_path(&target), parent, last.as_slice()).map_err(|e| match e {
                    Errno::EEXIST => refuse("a second entry for the same path".into()),
                    e => refuse(format!("cannot make the symlink: {e}")),
                })?;
            }
            other => {
                return Err(refuse(format!(
                    "entry type {other:?} (only files, directories and symlinks are restored)"
                )));
            }
        }
    }
    // Whatever follows the archive's end is read too: the checksum covers the
    // whole object, and a bomb hidden after the end is still a bomb.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(from_io)?;
    // Deepest first (the reverse of the archive's order), so that a directory
    // made read-only or untraversable has no descendant left to fix.
    for (parts, mode, mtime) in fixups.iter().rev() {
        if let Ok(fd) = dirs.open(parts) {
            let _ = fchmod(fd, Mode::from_bits_truncate(*mode));
            let t = TimeSpec::new(i64::try_from(*mtime).unwrap_or(0), 0);
            let _ = futimens(fd, &t, &t);
        }
    }
    Ok(tally)
}

/// An entry's path split into plain components (a directory's trailing `/` aside).
fn entry_parts(path: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let path = path.strip_suffix(b"/").unwrap_or(path);
    if path.is_empty() {
        return Err("an empty path");
    }
    if path.len() > MAX_PATH {
        return Err("a path longer than 4096 bytes");
    }
    if path.starts_with(b"/") {
        return Err("an absolute path");
    }
    path.split(|&b| b == b'/')
        .map(|part| match part {
            b"" => Err("an empty path component"),
            b"." => Err("a `.` component"),
            b".." => Err("a `..` component, leading outside the workspace"),
            p if p.len() > 255 => Err("a name longer than 255 bytes"),
            p => Ok(p.to_vec()),
        })
        .collect()
}

/// The directories from the root down to the last one an entry was written in,
/// held open, so that entries in walk order cost one `openat` each.
struct DirChain {
    root: OwnedFd,
    chain: Vec<(Vec<u8>, OwnedFd)>,
}

impl DirChain {
    fn new(root: OwnedFd) -> Self {
        Self {
            root,
            chain: Vec::new(),
        }
    }

    /// The directory `parts` below the root, made (0700) where missing; refuses a
    /// way through anything but a directory.
    fn open(&mut self, parts: &[Vec<u8>]) -> Result<&OwnedFd, String> {
        let common = self
            .chain
            .iter()
            .zip(parts)
            .take_while(|((held, _), want)| held == *want)
            .count();
        self.chain.truncate(common);
        for part in &parts[common..] {
            let parent = self.chain.last().map_or(&self.root, |(_, fd)| fd);
            match mkdirat(parent, part.as_slice(), Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(format!("cannot make a parent directory: {e}")),
            }
            let fd = openat(
                parent,
                part.as_slice(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => {
                    "a path through a symlink or a file of the archive".to_owned()
                }
                e => format!("cannot open a parent directory: {e}"),
            })?;
            self.chain.push((part.clone(), fd));
        }
        Ok(self.chain.last().map_or(&self.root, |(_, fd)| fd))
    }
}

/// A `Read` over a channel of chunks (the HTTP body's, or the decoder's), counting
/// what passes and, for the body, hashing it.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    hasher: Option<Sha256>,
    read: Arc<AtomicU64>,
}

impl ChannelReader {
    /// Hashing what it reads (the archive as received).
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
            hasher: Some(Sha256::new()),
            read: Arc::default(),
        }
    }

    /// Not hashing (the decoder's output).
    fn plain(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            hasher: None,
            ..Self::new(rx)
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) => {
                    if let Some(h) = &mut self.hasher {
                        h.update(&chunk);
                    }
                    self.current = chunk;
                }
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The unpacked stream, refused when it outgrows the limits or the archive by
/// more than `max_ratio`.
struct Inflated<R> {
    inner: R,
    out: u64,
    read: Arc<AtomicU64>,
    limits: ArchiveLimits,
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        // Headers and padding come on top of the files' bytes: 1 KiB per entry.
        let ceiling = self
            .limits
            .max_bytes
            .saturating_add(self.limits.max_entries.saturating_mul(1024))
            .saturating_add(1024 * 1024);
        if self.out > ceiling {
            return Err(io::Error::other(AgentError::ArchiveTooLarge {
                what: "unpacked bytes",
                limit: self.limits.max_bytes,
                at: "the archive".into(),
            }));
        }
        let read = self.read.load(Ordering::Relaxed).max(1);
        if self.out > RATIO_FLOOR && self.out / read > self.limits.max_ratio {
            return Err(io::Error::other(AgentError::ArchiveRefused {
                entry: "the archive".into(),
                reason: format!(
                    "it unpacks to more than {} times its size (a decompression bomb)",
                    self.limits.max_ratio
                ),
            }));
        }
        Ok(n)
    }
}

/// A zstd or tar decoding failure: the archive is not what was stored.
fn corrupt(e: io::Error) -> AgentError {
    AgentError::ArchiveCorrupt(e.to_string())
}

/// An I/O error from unpacking: a refusal raised inside a reader comes back as
/// itself, anything else means the archive cannot be decoded.
fn from_io(e: io::Error) -> AgentError {
    match e.get_ref().is_some_and(|inner| inner.is::<AgentError>()) {
        true => match e.into_inner().map(|inner| inner.downcast::<AgentError>()) {
            Some(Ok(agent)) => *agent,
            _ => AgentError::ArchiveCorrupt("undecodable".into()),
        },
        false => corrupt(e),
    }
}

// === query ===

#[derive(Debug)]
struct ArchiveQuery {
    limits: ArchiveLimits,
    sha256: Option<[u8; 32]>,
}

/// `max_bytes`, `max_entries`, `max_ratio` (defaults: [`ArchiveLimits::default`])
/// and, for a restore, `sha256`.
fn parse_query(raw: Option<&str>, restore: bool) -> Result<ArchiveQuery, AgentError> {
    let mut q = ArchiveQuery {
        limits: ArchiveLimits::default(),
        sha256: None,
    };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |field: &'static str| {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(AgentError::InvalidField {
                    field,
                    reason: format!("{value:?} is not a positive whole number"),
                })
        };
        match key {
            "max_bytes" => q.limits.max_bytes = number("max_bytes")?,
            "max_entries" => q.limits.max_entries = number("max_entries")?,
            "max_ratio" => q.limits.max_ratio = number("max_ratio")?,
            "sha256" if restore => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(value, &mut out).map_err(|_| AgentError::InvalidField {
                    field: "sha256",
                    reason: "must be 64 hex digits".into(),
                })?;
                q.sha256 = Some(out);
            }
            _ => {
                return Err(AgentError::InvalidField {
                    field: "query",
                    reason: format!("unknown parameter {key:?}"),
                });
            }
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests;

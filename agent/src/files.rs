//! The files API: put, get, list, delete and mkdir, confined to the workspace root.
//!
//! Every path goes through [`crate::fsroot`], which walks it one directory
//! descriptor at a time so that neither `..`, an absolute path nor a symlink can
//! lead outside the root. Uploads stream into a temporary file beside the target
//! and are renamed over it only when complete, so a reader never sees half a file;
//! an upload larger than `max_file_bytes` is refused and its temporary removed.
//! Downloads stream from the open descriptor. Opening uses `O_NONBLOCK` so that a
//! FIFO planted by the workspace cannot hang the agent.

use std::{
    os::fd::OwnedFd,
    sync::atomic::{AtomicU64, Ordering},
};

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use berth_wire::{FileEntry, FileKind, FileList, MkdirRequest};
use futures_util::StreamExt;
use nix::{
    dir::Dir,
    errno::Errno,
    fcntl::{AtFlags, OFlag, openat, renameat},
    sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat},
    unistd::{UnlinkatFlags, unlinkat},
};
use tokio::io::AsyncWriteExt;

use crate::{
    AgentState,
    error::AgentError,
    fsroot::{self, RelPath, Resolved, map_errno},
};

/// The query parameters of the files routes, decoded strictly (invalid UTF-8 in a
/// percent-encoding is an error, not a replacement character).
#[derive(Debug, Default)]
struct FileQuery {
    path: Option<String>,
    mode: Option<String>,
    recursive: bool,
    parents: Option<bool>,
}

/// `PUT /v1/files?path=&mode=&parents=`: streamed, atomic upload.
pub(crate) async fn put(
    State(state): State<AgentState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, AgentError> {
    state.authorize(&headers)?;
    let q = parse_query(query.as_deref())?;
    let rel = state.rel_path(q.path.as_deref())?;
    if rel.parts.is_empty() {
        return Err(AgentError::IsADirectory { path: rel.shown });
    }
    let mode = q.mode.as_deref().map(parse_mode).transpose()?;
    let resolved = resolve(&state, &rel, true, q.parents.unwrap_or(true))?;
    let name = resolved.name.clone().unwrap_or_default();
    let dir = resolved.dir;
    // Keep an existing file's permissions unless a mode is given.
    let mode = match (
        mode,
        fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW),
    ) {
        (_, Ok(st)) if kind_of(st.st_mode) == SFlag::S_IFDIR => {
            return Err(AgentError::IsADirectory { path: rel.shown });
        }
        (Some(m), _) => m,
        (None, Ok(st)) => Mode::from_bits_truncate(st.st_mode & 0o777),
        (None, Err(_)) => Mode::from_bits_truncate(0o644),
    };
    let (temp, tmp_fd) = open_temp(&dir, &name, &rel.shown, mode)?;
    let limit = state.inner.config.max_file_bytes;
    if crate::content_length(&headers).is_some_and(|n| n > limit) {
        return Err(AgentError::FileTooLarge { limit });
    }
    let mut file = tokio::fs::File::from_std(std::fs::File::from(tmp_fd));
    let mut written: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AgentError::InvalidField {
            field: "body",
            reason: format!("upload interrupted: {e}"),
        })?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(AgentError::FileTooLarge { limit });
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| write_error(&rel.shown, &e))?;
    }
    file.flush()
        .await
        .map_err(|e| write_error(&rel.shown, &e))?;
    drop(file);
    temp.commit(&name, &rel.shown)?;
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"path": rel.shown, "size": written})),
    )
        .into_response())
}

/// `GET /v1/files?path=`: streams a regular file.
pub(crate) async fn get(
    State(state): State<AgentState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AgentError> {
    state.authorize(&headers)?;
    let q = parse_query(query.as_deref())?;
    let rel = state.rel_path(q.path.as_deref())?;
    let resolved = resolve(&state, &rel, true, false)?;
    let Some(name) = resolved.name else {
        return Err(AgentError::IsADirectory { path: rel.shown });
    };
    let fd = openat(
        &resolved.dir,
        name.as_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| map_errno("open", &rel.shown, e))?;
    let st = fstat(&fd).map_err(|e| map_errno("stat", &rel.shown, e))?;
    match kind_of(st.st_mode) {
        SFlag::S_IFREG => {}
        SFlag::S_IFDIR => return Err(AgentError::IsADirectory { path: rel.shown }),
        _ => return Err(AgentError::NotAFile { path: rel.shown }),
    }
    let file = tokio::fs::File::from_std(std::fs::File::from(fd));
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, st.st_size)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty())))
}

/// `GET /v1/files/list?path=`: the entries of a directory, sorted by name.
pub(crate) async fn list(
    State(state): State<AgentState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<FileList>, AgentError> {
    state.authorize(&headers)?;
    let q = parse_query(query.as_deref())?;
    let rel = state.rel_path(Some(q.path.as_deref().unwrap_or(".")))?;
    let resolved = resolve(&state, &rel, true, false)?;
    let dir_fd = openat(
        &resolved.dir,
        resolved.name.as_deref().unwrap_or("."),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| map_errno("open directory", &rel.shown, e))?;
    let stat_fd = dir_fd
        .try_clone()
        .map_err(|e| write_error(&rel.shown, &e))?;
    let mut dir = Dir::from_fd(dir_fd).map_err(|e| map_errno("read directory", &rel.shown, e))?;
    let limit = state.inner.config.max_list_entries;
    let mut entries = Vec::new();
    let mut truncated = false;
    for entry in dir.iter() {
        let entry = entry.map_err(|e| map_errno("read directory", &rel.shown, e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if entries.len() == limit {
            truncated = true;
            break;
        }
        let Ok(st) = fstatat(&stat_fd, entry.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue; // removed since it was listed
        };
        let kind = match kind_of(st.st_mode) {
            SFlag::S_IFREG => FileKind::File,
            SFlag::S_IFDIR => FileKind::Dir,
            SFlag::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        };
        entries.push(FileEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            kind,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
            modified_ms: st.st_mtime * 1000 + st.st_mtime_nsec / 1_000_000,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(FileList {
        path: rel.shown,
        entries,
        truncated,
    }))
}

/// `DELETE /v1/files?path=&recursive=`: removes a file, a symlink (not its target)
/// or a directory (an empty one unless `recursive=true`).
pub(crate) async fn delete(
    State(state): State<AgentState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AgentError> {
    state.authorize(&headers)?;
    let q = parse_query(query.as_deref())?;
    let rel = state.rel_path(q.path.as_deref())?;
    if rel.parts.is_empty() {
        return Err(AgentError::InvalidPath {
            path: rel.shown,
            reason: "the workspace root itself cannot be deleted",
        });
    }
    let resolved = resolve(&state, &rel, false, false)?;
    let name = resolved.name.unwrap_or_default();
    match unlinkat(&resolved.dir, name.as_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) => {}
        Err(Errno::EISDIR) if q.recursive => {
            fsroot::remove_tree(&resolved.dir, name.as_bytes(), &rel.shown, 0)?
        }
        Err(Errno::EISDIR) => unlinkat(&resolved.dir, name.as_str(), UnlinkatFlags::RemoveDir)
            .map_err(|e| map_errno("remove directory", &rel.shown, e))?,
        Err(e) => return Err(map_errno("unlink", &rel.shown, e)),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/files/mkdir {path, parents?, mode?}`.
pub(crate) async fn mkdir(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, AgentError> {
    state.authorize(&headers)?;
    let req: MkdirRequest = state.read_json(&headers, body).await?;
    let rel = state.rel_path(Some(req.path.as_str()))?;
    let mode = req
        .mode
        .as_deref()
        .map(parse_mode)
        .transpose()?
        .unwrap_or(Mode::from_bits_truncate(0o755));
    if rel.parts.is_empty() {
        return if req.parents {
            Ok(StatusCode::CREATED.into_response())
        } else {
            Err(AgentError::AlreadyExists { path: rel.shown })
        };
    }
    let resolved = resolve(&state, &rel, true, req.parents)?;
    let name = resolved.name.unwrap_or_default();
    match mkdirat(&resolved.dir, name.as_str(), mode) {
        Ok(()) => {}
        Err(Errno::EEXIST) if req.parents => {
            let st = fstatat(&resolved.dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| map_errno("stat", &rel.shown, e))?;
            if kind_of(st.st_mode) != SFlag::S_IFDIR {
                return Err(AgentError::AlreadyExists { path: rel.shown });
            }
        }
        Err(e) => return Err(map_errno("mkdir", &rel.shown, e)),
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"path": rel.shown})),
    )
        .into_response())
}

/// Places a claim's files before the claim is answered (small, so written in
/// place): each is written to a temporary beside its target and renamed over it,
/// confined to the root like every other write. The first failure fails the claim.
pub(crate) fn place(
    state: &AgentState,
    files: &[berth_wire::WorkspaceFile],
) -> Result<u64, AgentError> {
    use std::io::Write;
    let mut total = 0u64;
    for f in files {
        let rel = state.rel_path(Some(f.path.as_str()))?;
        if rel.parts.is_empty() {
            return Err(AgentError::IsADirectory { path: rel.shown });
        }
        let bytes = match f.encoding {
            berth_wire::settings::FileEncoding::Utf8 => f.content.as_bytes().to_vec(),
            berth_wire::settings::FileEncoding::Base64 => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(f.content.as_bytes())
                    .map_err(|e| AgentError::InvalidField {
                        field: "files",
                        reason: format!("{}: content is not base64: {e}", rel.shown),
                    })?
            }
        };
        if bytes.len() as u64 > state.inner.config.max_file_bytes {
            return Err(AgentError::FileTooLarge {
                limit: state.inner.config.max_file_bytes,
            });
        }
        let mode = f
            .mode
            .as_deref()
            .map(parse_mode)
            .transpose()?
            .unwrap_or(Mode::from_bits_truncate(0o644));
        let resolved = resolve(state, &rel, true, true)?;
        let name = resolved.name.clone().unwrap_or_default();
        let dir = resolved.dir;
        if fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| kind_of(st.st_mode) == SFlag::S_IFDIR)
        {
            return Err(AgentError::IsADirectory { path: rel.shown });
        }
        let (temp, tmp_fd) = open_temp(&dir, &name, &rel.shown, mode)?;
        let mut file = std::fs::File::from(tmp_fd);
        file.write_all(&bytes)
            .map_err(|e| write_error(&rel.shown, &e))?;
        drop(file);
        temp.commit(&name, &rel.shown)?;
        total += bytes.len() as u64;
    }
    Ok(total)
}

// === helpers ===

fn resolve(
    state: &AgentState,
    rel: &RelPath,
    follow_last: bool,
    create_parents: bool,
) -> Result<Resolved, AgentError> {
    let root = &state.inner.config.root;
    let root_fd = fsroot::open_root(root)?;
    fsroot::resolve(root, root_fd, rel, follow_last, create_parents)
}

fn kind_of(mode: u32) -> SFlag {
    SFlag::from_bits_truncate(mode) & SFlag::S_IFMT
}

/// Parses octal permission bits (`"644"`, `"0755"`); no setuid, setgid or sticky.
fn parse_mode(raw: &str) -> Result<Mode, AgentError> {
    let bits = u32::from_str_radix(raw.trim_start_matches("0o"), 8).map_err(|_| {
        AgentError::InvalidField {
            field: "mode",
            reason: format!("{raw:?} is not an octal mode such as 644"),
        }
    })?;
    if bits > 0o777 {
        return Err(AgentError::InvalidField {
            field: "mode",
            reason: format!("{raw:?} sets bits beyond rwx for user, group and other"),
        });
    }
    Ok(Mode::from_bits_truncate(bits))
}

/// Creates `.<name>.<pid>-<n>.berth-tmp` beside the target, exclusively.
fn create_temp(dir: &OwnedFd, name: &str, shown: &str) -> Result<(String, OwnedFd), AgentError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp = format!(".{name}.{}-{n}.berth-tmp", std::process::id());
        if tmp.len() > 255 {
            tmp = format!(".berth-{}-{n}.tmp", std::process::id());
        }
        match openat(
            dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((tmp, fd)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(map_errno("create", shown, e)),
        }
    }
}

/// An upload's temporary file, removed unless the upload was committed.
/// A temporary beside `name` in `dir`, with its permissions set; removed unless
/// committed.
fn open_temp<'a>(
    dir: &'a OwnedFd,
    name: &str,
    shown: &str,
    mode: Mode,
) -> Result<(TempFile<'a>, OwnedFd), AgentError> {
    let (tmp_name, tmp_fd) = create_temp(dir, name, shown)?;
    let temp = TempFile {
        dir,
        name: tmp_name,
        committed: false,
    };
    fchmod(&tmp_fd, mode).map_err(|e| map_errno("chmod", shown, e))?;
    Ok((temp, tmp_fd))
}

impl TempFile<'_> {
    /// Renames the temporary over `name`: readers see the whole file or the old one.
    fn commit(mut self, name: &str, shown: &str) -> Result<(), AgentError> {
        renameat(self.dir, self.name.as_str(), self.dir, name)
            .map_err(|e| map_errno("rename", shown, e))?;
        self.committed = true;
        Ok(())
    }
}

struct TempFile<'a> {
    dir: &'a OwnedFd,
    name: String,
    committed: bool,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = unlinkat(self.dir, self.name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

fn write_error(shown: &str, e: &std::io::Error) -> AgentError {
    map_errno(
        "write",
        shown,
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    )
}

/// Decodes the files routes' query string.
fn parse_query(raw: Option<&str>) -> Result<FileQuery, AgentError> {
    let mut q = FileQuery::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        match key {
            "path" => q.path = Some(value),
            "mode" => q.mode = Some(value),
            "recursive" => q.recursive = parse_bool("recursive", &value)?,
            "parents" => q.parents = Some(parse_bool("parents", &value)?),
            other => {
                return Err(AgentError::InvalidField {
                    field: "query",
                    reason: format!("unknown parameter {other:?}"),
                });
            }
        }
    }
    Ok(q)
}

fn parse_bool(field: &'static str, value: &str) -> Result<bool, AgentError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(AgentError::InvalidField {
            field,
            reason: format!("{value:?} is not true or false"),
        }),
    }
}

/// Percent-decodes a query value (`+` is a space) and insists on UTF-8.
fn percent_decode(raw: &str) -> Result<String, AgentError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| AgentError::InvalidPath {
                        path: raw.to_owned(),
                        reason: "bad percent-encoding",
                    })?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| AgentError::InvalidPath {
        path: raw.to_owned(),
        reason: "not valid UTF-8",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_decoded_strictly() {
        let q = parse_query(Some("path=a%20b%2Fc&mode=0755&recursive=true")).unwrap();
        assert_eq!(q.path.as_deref(), Some("a b/c"));
        assert_eq!(q.mode.as_deref(), Some("0755"));
        assert!(q.recursive);
        assert!(matches!(
            parse_query(Some("path=%FF")),
            Err(AgentError::InvalidPath {
                reason: "not valid UTF-8",
                ..
            })
        ));
        assert!(matches!(
            parse_query(Some("path=%G1")),
            Err(AgentError::InvalidPath { .. })
        ));
        assert!(matches!(
            parse_query(Some("colour=red")),
            Err(AgentError::InvalidField { field: "query", .. })
        ));
    }

    #[test]
    fn modes_are_octal_permission_bits_only() {
        assert_eq!(parse_mode("644").unwrap().bits(), 0o644);
        assert_eq!(parse_mode("0o755").unwrap().bits(), 0o755);
        assert!(parse_mode("4755").is_err());
        assert!(parse_mode("rw").is_err());
        assert!(parse_mode("9").is_err());
    }
}

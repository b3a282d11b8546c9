//! Paths confined to the workspace root, resolved one component at a time.
//!
//! Background: the files API takes paths from the client, and the directory tree it
//! walks is writable by the untrusted code in the workspace, which can plant
//! symlinks (or swap a directory for one between two calls). String checks on the
//! path cannot see either. So a path is never handed to the kernel whole: the walk
//! starts from a descriptor of the root and opens each component *relative to the
//! directory descriptor it already holds*, with `O_NOFOLLOW`. A symlink met on the
//! way is read (`readlinkat`) and its target walked the same way from the link's
//! own directory; a `..` pops back to a directory already held and can never pop
//! past the root; an absolute target must name a place under the root. This is
//! what `openat2(RESOLVE_BENEATH)` does in the kernel, done here so that it works
//! whatever the workspace's seccomp profile allows.
//!
//! Request paths themselves may not contain `..` at all, and an absolute request
//! path must lie under the root.

use std::{
    collections::VecDeque,
    ffi::OsStr,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Component, Path},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, openat, readlinkat},
    sys::stat::{Mode, SFlag, fstatat, mkdirat},
};

use crate::error::AgentError;

/// Symlinks followed in one resolution before giving up (the kernel's limit too).
const MAX_SYMLINK_HOPS: usize = 40;

/// A request path, checked and split into components below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelPath {
    /// The path as the client gave it, for messages.
    pub shown: String,
    /// Components below the root; empty means the root itself.
    pub parts: Vec<String>,
}

/// Where a resolution ended: a directory under the root, and the last component
/// inside it (`None` when the path names that directory itself, e.g. the root).
#[derive(Debug)]
pub(crate) struct Resolved {
    pub dir: OwnedFd,
    pub name: Option<String>,
}

/// Checks a client's path and makes it relative to `root`.
pub(crate) fn parse(root: &Path, raw: &str) -> Result<RelPath, AgentError> {
    let shown = raw.to_owned();
    if raw.is_empty() {
        return Err(AgentError::InvalidPath {
            path: shown,
            reason: "empty",
        });
    }
    if raw.contains('\0') {
        return Err(AgentError::InvalidPath {
            path: shown,
            reason: "contains a NUL byte",
        });
    }
    let path = Path::new(raw);
    let below = if path.is_absolute() {
        path.strip_prefix(root)
            .map_err(|_| AgentError::PathEscape {
                path: shown.clone(),
            })?
    } else {
        path
    };
    let mut parts = Vec::new();
    for c in below.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(AgentError::PathEscape { path: shown });
            }
        }
    }
    Ok(RelPath { shown, parts })
}

/// Opens the root directory itself (trusted: it comes from the agent's config).
pub(crate) fn open_root(root: &Path) -> Result<OwnedFd, AgentError> {
    openat(
        nix::fcntl::AT_FDCWD,
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error("open root", &root.display().to_string(), e))
}

/// Resolves `rel` beneath `root_fd`.
///
/// Every directory on the way is opened relative to the previous one with
/// `O_NOFOLLOW`; symlinks are expanded by hand and may not leave the root. With
/// `follow_last`, a symlink in the last position is expanded too (get, list, put);
/// without, the last component is returned as it is (delete removes the link). With
/// `create_parents`, missing directories on the way are made (mode 0755).
pub(crate) fn resolve(
    root: &Path,
    root_fd: OwnedFd,
    rel: &RelPath,
    follow_last: bool,
    create_parents: bool,
) -> Result<Resolved, AgentError> {
    let shown = rel.shown.as_str();
    let mut stack: Vec<OwnedFd> = vec![root_fd];
    let mut queue: VecDeque<String> = rel.parts.iter().cloned().collect();
    let mut hops = 0;
    while let Some(part) = queue.pop_front() {
        if part.is_empty() || part == "." {
            continue;
        }
        if part == ".." {
            // Only symlink targets bring `..` here: request paths refuse it.
            if stack.len() == 1 {
                return Err(escape(shown));
            }
            stack.pop();
            continue;
        }
        let last = queue.is_empty();
        let top = stack.last().ok_or_else(|| escape(shown))?;
        let stat = match fstatat(top, part.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(io_error("stat", shown, e)),
        };
        let kind = stat.map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT);
        if kind == Some(SFlag::S_IFLNK) && (follow_last || !last) {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(AgentError::InvalidPath {
                    path: shown.to_owned(),
                    reason: "too many levels of symbolic links",
                });
            }
            let target =
                readlinkat(top, part.as_str()).map_err(|e| map_errno("readlink", shown, e))?;
            let target = Path::new(OsStr::from_bytes(target.as_bytes()));
            let below = if target.is_absolute() {
                // An absolute target is allowed only when it names a place under
                // the root, and is then walked from the root.
                let below = target.strip_prefix(root).map_err(|_| escape(shown))?;
                stack.truncate(1);
                below
            } else {
                target
            };
            for c in below.components().rev() {
                match c {
                    Component::Normal(p) => queue.push_front(p.to_string_lossy().into_owned()),
                    Component::ParentDir => queue.push_front("..".into()),
                    Component::CurDir => {}
                    Component::RootDir | Component::Prefix(_) => return Err(escape(shown)),
                }
            }
            continue;
        }
        if last {
            let dir = stack.pop().ok_or_else(|| escape(shown))?;
            return Ok(Resolved {
                dir,
                name: Some(part),
            });
        }
        match kind {
            Some(SFlag::S_IFDIR) => {}
            Some(_) => {
                return Err(AgentError::NotADirectory {
                    path: shown.to_owned(),
                });
            }
            None if create_parents => {
                match mkdirat(top, part.as_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(map_errno("mkdir", shown, e)),
                }
            }
            None => {
                return Err(AgentError::FileNotFound {
                    path: shown.to_owned(),
                });
            }
        }
        let next = open_dir_beneath(top, &part, shown)?;
        stack.push(next);
    }
    let dir = stack.pop().ok_or_else(|| escape(shown))?;
    Ok(Resolved { dir, name: None })
}

/// Opens a directory entry of `dir` as a directory, refusing to follow a symlink
/// (one swapped in since it was looked at fails here with `ELOOP`).
fn open_dir_beneath(dir: &OwnedFd, name: &str, shown: &str) -> Result<OwnedFd, AgentError> {
    openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| map_errno("open directory", shown, e))
}

fn escape(shown: &str) -> AgentError {
    AgentError::PathEscape {
        path: shown.to_owned(),
    }
}

fn io_error(op: &'static str, path: &str, source: Errno) -> AgentError {
    AgentError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Maps the errno of a file operation on `path` to the error clients see.
pub(crate) fn map_errno(op: &'static str, path: &str, e: Errno) -> AgentError {
    let path = path.to_owned();
    match e {
        Errno::ENOENT => AgentError::FileNotFound { path },
        Errno::ENOTDIR => AgentError::NotADirectory { path },
        Errno::EISDIR => AgentError::IsADirectory { path },
        Errno::EEXIST => AgentError::AlreadyExists { path },
        Errno::ENOTEMPTY => AgentError::DirectoryNotEmpty { path },
        Errno::ENOSPC | Errno::EDQUOT => AgentError::NoSpace { path },
        // A symlink where the walk saw none: something changed under us; refuse.
        Errno::ELOOP => AgentError::PathEscape { path },
        source => AgentError::Io { op, path, source },
    }
}

/// Directories nested deeper than this are not walked (removed, archived).
pub(crate) const MAX_DEPTH: usize = 256;

/// The names in an open directory (not `.` and `..`), as bytes, sorted.
pub(crate) fn dir_names(fd: OwnedFd, shown: &str) -> Result<Vec<Vec<u8>>, AgentError> {
    let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| map_errno("read directory", shown, e))?;
    let mut names: Vec<Vec<u8>> = dir
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort_unstable();
    Ok(names)
}

/// Removes directory `name` of `parent` and everything in it, never following a
/// symlink (one is removed as the link it is). A directory without write
/// permission is made writable first, since its owner is who removes it.
pub(crate) fn remove_tree(
    parent: &OwnedFd,
    name: &[u8],
    shown: &str,
    depth: usize,
) -> Result<(), AgentError> {
    use nix::unistd::{UnlinkatFlags, unlinkat};
    if depth > MAX_DEPTH {
        return Err(AgentError::InvalidPath {
            path: shown.to_owned(),
            reason: "directories nested too deep to remove recursively",
        });
    }
    let _ = nix::sys::stat::fchmodat(
        parent,
        name,
        Mode::from_bits_truncate(0o700),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    );
    let fd = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| map_errno("open directory", shown, e))?;
    let here = nix::unistd::dup(&fd).map_err(|e| io_error("open directory", shown, e))?;
    for child in dir_names(fd, shown)? {
        remove_entry(&here, &child, shown, depth + 1)?;
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
        .map_err(|e| map_errno("remove directory", shown, e))
}

/// Removes entry `name` of `dir`: a file or link by unlinking it, a directory with
/// [`remove_tree`]. One that is already gone is fine.
pub(crate) fn remove_entry(
    dir: &OwnedFd,
    name: &[u8],
    shown: &str,
    depth: usize,
) -> Result<(), AgentError> {
    use nix::unistd::{UnlinkatFlags, unlinkat};
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => remove_tree(dir, name, shown, depth),
        Err(e) => Err(map_errno("unlink", shown, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct TempRoot(std::path::PathBuf);

    impl TempRoot {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "berth-fsroot-{tag}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            std::fs::create_dir_all(dir.join("root/sub")).unwrap();
            std::fs::write(dir.join("root/sub/file"), b"inside").unwrap();
            std::fs::write(dir.join("secret"), b"outside").unwrap();
            Self(dir)
        }
        fn root(&self) -> std::path::PathBuf {
            self.0.join("root")
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn resolve_str(t: &TempRoot, raw: &str) -> Result<Resolved, AgentError> {
        let root = t.root();
        let rel = parse(&root, raw)?;
        resolve(&root, open_root(&root)?, &rel, true, false)
    }

    #[test]
    fn parse_refuses_dotdot_absolute_outside_and_nul() {
        let root = Path::new("/workspace");
        assert!(matches!(
            parse(root, "a/../b"),
            Err(AgentError::PathEscape { .. })
        ));
        assert!(matches!(
            parse(root, "/etc/passwd"),
            Err(AgentError::PathEscape { .. })
        ));
        assert!(matches!(
            parse(root, "/workspacex/a"),
            Err(AgentError::PathEscape { .. })
        ));
        assert!(matches!(
            parse(root, ""),
            Err(AgentError::InvalidPath { .. })
        ));
        assert!(matches!(
            parse(root, "a\0b"),
            Err(AgentError::InvalidPath { .. })
        ));
        assert_eq!(parse(root, "/workspace/a/./b").unwrap().parts, ["a", "b"]);
        assert!(parse(root, "/workspace").unwrap().parts.is_empty());
        assert_eq!(parse(root, "./x//y/").unwrap().parts, ["x", "y"]);
    }

    #[test]
    fn symlinks_inside_are_followed_and_outside_refused() {
        let t = TempRoot::new("links");
        let root = t.root();
        symlink("sub", root.join("in-rel")).unwrap();
        symlink(root.join("sub"), root.join("in-abs")).unwrap();
        symlink("../secret", root.join("out-rel")).unwrap();
        symlink(t.0.join("secret"), root.join("out-abs")).unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        symlink("sub/../../secret", root.join("out-deep")).unwrap();
        symlink("loop", root.join("loop")).unwrap();

        let r = resolve_str(&t, "in-rel/file").unwrap();
        assert_eq!(r.name.as_deref(), Some("file"));
        let r = resolve_str(&t, "in-abs/file").unwrap();
        assert_eq!(r.name.as_deref(), Some("file"));
        for bad in ["out-rel", "out-abs", "etc/passwd", "out-deep", "sub/../x"] {
            assert!(
                matches!(resolve_str(&t, bad), Err(AgentError::PathEscape { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            resolve_str(&t, "loop"),
            Err(AgentError::InvalidPath { .. })
        ));
        assert!(matches!(
            resolve_str(&t, "sub/file/x"),
            Err(AgentError::NotADirectory { .. })
        ));
        assert!(matches!(
            resolve_str(&t, "nope/x"),
            Err(AgentError::FileNotFound { .. })
        ));
    }

    #[test]
    fn create_parents_makes_missing_directories() {
        let t = TempRoot::new("mkdirs");
        let root = t.root();
        let rel = parse(&root, "a/b/c/file").unwrap();
        let r = resolve(&root, open_root(&root).unwrap(), &rel, true, true).unwrap();
        assert_eq!(r.name.as_deref(), Some("file"));
        assert!(root.join("a/b/c").is_dir());
    }
}

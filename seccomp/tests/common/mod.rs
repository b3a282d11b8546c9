//! Running a closure in a forked child, for tests that install seccomp filters: a
//! filter cannot be removed, so it must never land on the test harness itself.
#![allow(unsafe_code, dead_code)]

use std::{io::Read, os::fd::FromRawFd};

use serde::{Serialize, de::DeserializeOwned};

/// How a forked child ended when it did not hand back a value.
#[derive(Debug)]
pub enum ChildFailure {
    /// Killed by a signal (31 is SIGSYS: a seccomp kill).
    Signal(i32),
    /// Exited without writing a result (a panic message, if there was one).
    NoResult { status: i32, panic: String },
}

/// Forks, runs `f` in the child, and returns what it returned (sent back as JSON over
/// a pipe). The child leaves with `_exit` so no destructor of the parent's state runs.
pub fn in_child<T: Serialize + DeserializeOwned>(f: impl FnOnce() -> T) -> Result<T, ChildFailure> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array we own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child runs `f` (test code that only uses fork-safe glibc functions,
    // allocation included) and ends with _exit; the parent only reads and reaps.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: closing the read end in the child.
        unsafe { libc::close(fds[0]) };
        let out = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(value) => serde_json::to_vec(&Ok::<T, String>(value)),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                serde_json::to_vec(&Err::<T, String>(msg))
            }
        }
        .unwrap_or_default();
        let mut written = 0;
        while written < out.len() {
            // SAFETY: writing the unsent tail of our buffer to the pipe.
            let n =
                unsafe { libc::write(fds[1], out[written..].as_ptr().cast(), out.len() - written) };
            if n <= 0 {
                break;
            }
            written += n as usize;
        }
        // SAFETY: ending the child without running the harness's exit handlers.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: closing the write end in the parent, and owning the read end from here.
    let mut reader = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut bytes = Vec::new();
    let _ = reader.read_to_end(&mut bytes);
    let mut status = 0;
    // SAFETY: reaping the child we forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        return Err(ChildFailure::Signal(libc::WTERMSIG(status)));
    }
    match serde_json::from_slice::<Result<T, String>>(&bytes) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => Err(ChildFailure::NoResult { status, panic }),
        Err(_) => Err(ChildFailure::NoResult {
            status,
            panic: String::new(),
        }),
    }
}

/// A fresh directory under the system temp dir, removed by the caller.
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-seccomp-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    dir
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

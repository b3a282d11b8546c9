//! Pseudo-terminals for interactive sessions: the only module with `unsafe`.
//!
//! Four things have no safe wrapper: making the terminal the child's controlling
//! terminal between `fork` and `exec` (`setsid` + `TIOCSCTTY` in a `pre_exec`
//! hook), setting the window size (`TIOCSWINSZ`), and handing the master to
//! tokio's reactor (`AsyncFd::register`). Everything else — opening the
//! pair, non-blocking reads and writes on the master — goes through `nix` and
//! tokio's `AsyncFd`.
#![allow(unsafe_code)]

use std::{
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
};

use berth_wire::PtySize;
use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    pty::{Winsize, openpty},
};
use tokio::io::unix::AsyncFd;

/// The master side of a pseudo-terminal, readable and writable without blocking.
pub(crate) struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a pseudo-terminal of `size`; returns the master and the slave.
pub(crate) fn open(size: PtySize) -> io::Result<(PtyMaster, OwnedFd)> {
    let pair = openpty(&winsize(size), None).map_err(io::Error::from)?;
    let flags = fcntl(&pair.master, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    fcntl(&pair.master, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    fcntl(
        &pair.master,
        FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io::Error::from)?;
    // SAFETY: `pair.master` is an `OwnedFd`: a valid open descriptor that the
    // `AsyncFd` owns from here on, so it stays open and names the same file
    // description until the `AsyncFd` is dropped, and `as_raw_fd` always returns it.
    let fd = unsafe { AsyncFd::register(pair.master) }.map_err(io::Error::from)?;
    Ok((PtyMaster { fd }, pair.slave))
}

/// Makes the child a session leader with the slave (its stdin) as controlling
/// terminal. The session's process group is the child's pid, as for other commands.
pub(crate) fn set_controlling_terminal(command: &mut tokio::process::Command) {
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe functions may be called: it calls setsid(2) and ioctl(2)
    // only, allocates nothing, and touches no lock or memory of the parent.
    unsafe {
        command.as_std_mut().pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn winsize(size: PtySize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

// === impl PtyMaster ===

impl PtyMaster {
    /// Reads what the terminal printed; `Ok(0)` once every slave end is closed.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                // Linux answers EIO on the master once the last slave fd is closed.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the terminal (the command's input).
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// The terminal's foreground process group, if there is one.
    pub(crate) fn foreground_group(&self) -> Option<u32> {
        nix::unistd::tcgetpgrp(self.fd.get_ref())
            .ok()
            .and_then(|p| u32::try_from(p.as_raw()).ok())
    }

    /// Sets the terminal's size; the foreground process group gets `SIGWINCH`.
    pub(crate) fn resize(&self, size: PtySize) -> io::Result<()> {
        let ws = winsize(size);
        let fd = self.fd.get_ref().as_fd().as_raw_fd();
        // SAFETY: `fd` is the open pty master owned by `self` for the whole call, and
        // TIOCSWINSZ reads exactly one `struct winsize` from the pointer, which points
        // to `ws`, a live, initialised `Winsize` (nix's alias of libc::winsize).
        let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const Winsize) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

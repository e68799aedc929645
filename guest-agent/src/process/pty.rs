//! Pseudo-terminals for `process_start` with `pty`: open a master/slave pair, size it, and
//! read/write the nonblocking master through tokio's reactor.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use fort_agent_protocol::process::PtySize;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;

/// The agent's end of a terminal.
pub struct Master(AsyncFd<OwnedFd>);

/// Open a terminal of `size`: the master (nonblocking, for the agent) and the slave (for the
/// child's stdin, stdout and stderr).
pub fn open(size: PtySize) -> io::Result<(Master, OwnedFd)> {
    // NOCTTY: the agent itself must never get a controlling terminal; CLOEXEC: other
    // children must not inherit the master (the slave would then never see hangup).
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    resize_fd(&master, size)?;
    let flags = rustix::fs::fcntl_getfl(&master)?;
    rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK)?;
    // SAFETY: `master` is an OwnedFd, open and owned by the AsyncFd until it is dropped, and
    // its as_raw_fd always returns that same descriptor.
    let master = unsafe { AsyncFd::register(master) }?;
    Ok((Master(master), slave))
}

fn resize_fd(fd: impl AsFd, size: PtySize) -> io::Result<()> {
    let ws = Winsize {
        // PtySize::check bounds both to 10000, which fits.
        ws_row: size.rows.min(u16::MAX as u32) as u16,
        ws_col: size.cols.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // TIOCSWINSZ on the master: the kernel sends SIGWINCH to the foreground process group.
    rustix::termios::tcsetwinsize(fd, ws)?;
    Ok(())
}

impl Master {
    pub fn resize(&self, size: PtySize) -> io::Result<()> {
        resize_fd(self.0.get_ref(), size)
    }

    /// Some output; `Ok(0)` once every holder of the slave has closed it (the kernel says
    /// EIO then).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
            {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

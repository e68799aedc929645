//! Zero-copy copying between two sockets both ways with splice(2) through a pipe per
//! direction, half-closes passed on: what a port-forward tunnel does with its bytes.
//!
//! Shared by the agent and fort (fort includes this file with `#[path]`): both relay every
//! forwarded byte, and copying through user space made a forward over a unix socket more than
//! 2x slower than plain TCP loopback (docs/benchmarks.md, "Port forwarding").

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// The pipe between the two sockets (the kernel caps it at /proc/sys/fs/pipe-max-size,
/// 1 MiB by default; a smaller pipe just means more splices).
const PIPE_SIZE: usize = 1 << 20;

/// A tokio socket whose file descriptor can be spliced: readiness and `try_io` from tokio,
/// the fd for splice(2).
pub trait Socket: AsFd + Sync {
    /// Socket options for a bulk relay (before the first byte).
    fn tune(&self) {}
    fn ready_for(&self, i: Interest) -> impl Future<Output = io::Result<()>> + Send;
    fn try_io_for<R>(&self, i: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

macro_rules! socket {
    ($t:ty $(, $tune:item)?) => {
        impl Socket for $t {
            $($tune)?
            fn ready_for(&self, i: Interest) -> impl Future<Output = io::Result<()>> + Send {
                async move { self.ready(i).await.map(|_| ()) }
            }
            fn try_io_for<R>(
                &self,
                i: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                self.try_io(i, f)
            }
        }
    };
}
socket!(TcpStream);
socket!(
    UnixStream,
    // A unix socket's send buffer (208 KiB by default) is all that may be in flight: a
    // bigger one means fewer, larger splices and wakeups on both ends. TCP tunes its own.
    fn tune(&self) {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(self, UNIX_SNDBUF);
    }
);

/// See `tune` of `UnixStream` (the kernel caps it at net.core.wmem_max).
const UNIX_SNDBUF: usize = 4 << 20;

/// Copy both ways until both directions ended; EOF on one side is shutdown(SHUT_WR) on the
/// other while the other direction goes on. Returns the bytes copied (a to b, b to a).
pub async fn both_ways<A: Socket, B: Socket>(a: &A, b: &B) -> io::Result<(u64, u64)> {
    both_ways_with(a, b, true).await
}

/// [`both_ways`], but `a`'s EOF is passed on to `b` only when `eof_to_b`: over a vsock
/// backend a half-close toward the guest becomes a full close there (vhost-device-vsock 0.3
/// sends SHUTDOWN with both flags when its host socket reads EOF), which would cut off the
/// guest server's answer still on its way.
pub async fn both_ways_with<A: Socket, B: Socket>(
    a: &A,
    b: &B,
    eof_to_b: bool,
) -> io::Result<(u64, u64)> {
    a.tune();
    b.tune();
    tokio::try_join!(one_way(a, b, eof_to_b), one_way(b, a, true))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // Best effort: the default 64 KiB pipe works, only with more syscalls.
    let _ = fcntl_setpipe_size(&w, PIPE_SIZE);
    Ok((r, w))
}

/// Move bytes from `from` to `to` through a pipe until `from` ends, then shut `to`'s
/// sending side (unless `!pass_eof`). The pipe is drained before it is filled again, so EAGAIN always means the
/// socket (not the pipe) is not ready, which is what `try_io` must be told.
async fn one_way<A: Socket, B: Socket>(from: &A, to: &B, pass_eof: bool) -> io::Result<u64> {
    let (pr, pw) = pipe()?;
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut total = 0u64;
    loop {
        from.ready_for(Interest::READABLE).await?;
        let n = match from.try_io_for(Interest::READABLE, || {
            Ok(splice(from.as_fd(), None, &pw, None, PIPE_SIZE, flags)?)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            to.ready_for(Interest::WRITABLE).await?;
            match to.try_io_for(Interest::WRITABLE, || {
                Ok(splice(&pr, None, to.as_fd(), None, left, flags)?)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
    // A peer that is already gone (reset) cannot be told; the other direction ends on its own.
    if pass_eof {
        let _ = rustix::net::shutdown(to.as_fd(), rustix::net::Shutdown::Write);
    }
    Ok(total)
}

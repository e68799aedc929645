//! A blocking netlink socket for netfilter (nf_tables) transactions and dumps: send a batch,
//! then read until every message is acknowledged or the dump is done.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::NetError;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const HDR: usize = 16;

pub struct NfSocket {
    fd: OwnedFd,
}

/// One message read back: its type and bytes.
pub struct Reply {
    pub kind: u16,
    pub bytes: Vec<u8>,
}

impl NfSocket {
    pub fn open() -> Result<NfSocket, NetError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(NetError::Netfilter {
                what: "cannot open a netfilter netlink socket".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Replies never wait on a peer that is gone: a receive timeout turns a lost ack into
        // an error rather than a hang.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and its size is passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(NfSocket { fd })
    }

    pub fn send(&self, bytes: &[u8]) -> Result<(), NetError> {
        // SAFETY: `bytes` is a valid buffer of the given length for the duration of the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 || n as usize != bytes.len() {
            return Err(NetError::Netfilter {
                what: "cannot send to netfilter".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Send a whole batch in one `sendmsg` (one buffer is one transaction for nf_tables: split
    /// over several sends, its parts would not commit together) and collect every reply. The
    /// kernel runs a netlink batch inside the `sendmsg` call, so when it returns every ack and
    /// error is already queued here: all are read, and any error fails the whole call — an
    /// error can come after as many acks as there were messages (the batch's begin and end
    /// are acknowledged too), so counting acks alone would miss it. Returns the acks read.
    pub fn transact(&self, parts: &[&[u8]]) -> Result<usize, NetError> {
        let mut iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: zeroed sockaddr_nl/msghdr are valid; the address is the kernel (pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: as above, every field is then set or left zero as sendmsg(2) allows.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut kernel as *mut libc::sockaddr_nl).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // SAFETY: `msg` points at `kernel` and `iov`, whose buffers (`parts`) outlive the call.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
        if n < 0 || n as usize != total {
            return Err(NetError::Netfilter {
                what: "cannot send to netfilter".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let mut buf = vec![0u8; 1 << 16];
        let mut acks = 0;
        loop {
            // SAFETY: `buf` is a valid, writable buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(acks);
                }
                return Err(NetError::Netfilter {
                    what: "no answer from netfilter".into(),
                    source: e,
                });
            }
            each_reply(&buf[..n as usize], |r| {
                if is_ack(r) {
                    acks += 1;
                }
                false
            })?;
        }
    }

    /// Read replies until `done` says so; an error reply ends the wait with that error.
    pub fn recv_until(&self, mut on_message: impl FnMut(&Reply) -> bool) -> Result<(), NetError> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: `buf` is a valid, writable buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(NetError::Netfilter {
                    what: "no answer from netfilter".into(),
                    source: std::io::Error::last_os_error(),
                });
            }
            if each_reply(&buf[..n as usize], |r| {
                on_message(r) || r.kind == NLMSG_DONE
            })? {
                return Ok(());
            }
        }
    }
}

/// Walk the netlink messages in one datagram until `stop` says so (→ `true`); an error
/// reply fails with its code.
fn each_reply(mut data: &[u8], mut stop: impl FnMut(&Reply) -> bool) -> Result<bool, NetError> {
    while data.len() >= HDR {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < HDR || len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if kind == NLMSG_ERROR && len >= HDR + 4 {
            let code = i32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
            if code != 0 {
                return Err(NetError::Refused {
                    source: std::io::Error::from_raw_os_error(-code),
                });
            }
        }
        let msg = Reply {
            kind,
            bytes: data[..len].to_vec(),
        };
        if stop(&msg) {
            return Ok(true);
        }
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    Ok(false)
}

/// An acknowledgement (error code 0) for a request.
pub fn is_ack(r: &Reply) -> bool {
    r.kind == NLMSG_ERROR
}

pub fn is_done(r: &Reply) -> bool {
    r.kind == NLMSG_DONE
}

//! The agent's hello: once it listens on vsock, it connects out to the host on the same port
//! and says so, which tells fort the guest's vsock device is up and may be connected to
//! (reconciler/src/host/agent_ready.rs has the host side and the reason).

use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// How long the agent keeps trying: a fort that was not waiting (an adopted VM) falls back
/// to the console line, so the hello need not go on forever.
const TRY_FOR: Duration = Duration::from_secs(600);

/// Say hello to the host on `port` (CID 2), retrying each second until someone listens.
pub async fn announce(port: u32) {
    let start = std::time::Instant::now();
    while start.elapsed() < TRY_FOR {
        let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_HOST, port);
        let said = tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = tokio_vsock::VsockStream::connect(addr).await?;
            s.write_all(
                format!("fort-guest-agent {} ready\n", env!("CARGO_PKG_VERSION")).as_bytes(),
            )
            .await?;
            s.shutdown(std::net::Shutdown::Write)
        })
        .await;
        if let Ok(Ok(())) = said {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The driver a vsock device binds to.
const VSOCK_DRIVER: &str = "vmw_vsock_virtio_transport";

/// Say hello again whenever a vsock device is bound to its driver: a VM restored from a
/// snapshot gets a fresh vsock device (hot-plugged, see docs/snapshots.md), and fort must
/// not connect before its receive queue is filled — which the driver does before it binds.
/// Reads the kernel's uevents (no polling); a guest without them just never says it again.
pub fn announce_on_rebind(port: u32) {
    let rt = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        let Some(fd) = uevent_socket() else {
            return;
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes for the call; `fd` is our socket.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    // A burst of uevents overflowed the socket: ours may come later.
                    Some(libc::EINTR) | Some(libc::ENOBUFS) => continue,
                    _ => return,
                }
            }
            if is_vsock_bind(&buf[..n as usize]) {
                rt.spawn(announce(port));
            }
        }
    });
}

fn uevent_socket() -> Option<i32> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: an all-zero sockaddr_nl is valid; the fields that matter are set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = 1; // the kernel's uevent multicast group
                      // SAFETY: `sa` is a valid sockaddr_nl and its size is passed with it.
    let r = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        // SAFETY: `fd` is ours and not used after this.
        unsafe { libc::close(fd) };
        return None;
    }
    Some(fd)
}

/// Is this kernel uevent (`ACTION@DEVPATH\0KEY=VALUE\0…`) a vsock device bound to its driver?
pub fn is_vsock_bind(msg: &[u8]) -> bool {
    let mut action = false;
    let mut driver = false;
    for field in msg.split(|b| *b == 0) {
        action |= field == b"ACTION=bind";
        driver |= field == format!("DRIVER={VSOCK_DRIVER}").as_bytes();
    }
    action && driver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vsock_bind_counts() {
        let bind = b"bind@/devices/pci0000:00/0000:00:02.0/virtio3\0ACTION=bind\0DEVPATH=/devices/pci0000:00/0000:00:02.0/virtio3\0SUBSYSTEM=virtio\0DRIVER=vmw_vsock_virtio_transport\0MODALIAS=virtio:d00000013v00001AF4\0SEQNUM=1234\0";
        assert!(is_vsock_bind(bind));
        let add = b"add@/devices/pci0000:00/0000:00:02.0/virtio3\0ACTION=add\0SUBSYSTEM=virtio\0SEQNUM=1233\0";
        assert!(!is_vsock_bind(add));
        let other = b"bind@/devices/pci0000:00/0000:00:04.0/virtio1\0ACTION=bind\0SUBSYSTEM=virtio\0DRIVER=virtio_net\0";
        assert!(!is_vsock_bind(other));
        assert!(!is_vsock_bind(b""));
    }
}

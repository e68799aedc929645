//! When a booting guest may first be spoken to over vsock: after its agent said hello.
//!
//! vhost-device-vsock (0.3) serves a host connection the moment the guest's memory is mapped,
//! but an error in its event loop while the guest's receive queue is not ready yet ends that
//! loop for good: every later connection is accepted by the kernel and never answered (seen
//! as "the guest agent did not answer" on loaded hosts, see docs/reliability.md). So fort does
//! not connect to a booting guest until its device is certainly up, which is when one of:
//! - the agent connected out to the host (`vsock.sock_52`, Firecracker's convention for
//!   guest-initiated connections) — it does so once it listens;
//! - this boot's console shows the agent's "listening on vsock" line (agents older than the
//!   hello, and adopted VMs whose hello went unheard);
//! - the gate has been open for its fallback time (guests whose agent does neither; a third
//!   of the boot timeout: 60 s under TCG, 20 s with KVM).

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The line the agent prints on the console once it listens on vsock.
pub const LISTENING: &str = "fort-guest-agent: listening on vsock:";

/// The host end of guest-initiated connections to `port`, beside the hybrid-vsock socket.
pub fn hello_path(vsock_uds: &Path, port: u32) -> PathBuf {
    let mut p = vsock_uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Waits for a booting guest's agent (see the module docs). Removes its socket when dropped.
pub struct ReadyGate {
    listener: Option<(UnixListener, PathBuf)>,
    console: PathBuf,
    /// How far the console was read, and the unfinished last line.
    read: u64,
    tail: Vec<u8>,
    opened: Instant,
    fallback: Duration,
    why: Option<&'static str>,
}

impl ReadyGate {
    /// Listen for the agent's hello at `vsock_uds` + `_port`; give up waiting for a sign after
    /// `fallback`. A socket that cannot be made (path too long, a directory in the way) leaves
    /// the console and the fallback.
    pub fn open(vsock_uds: &Path, port: u32, console: &Path, fallback: Duration) -> ReadyGate {
        let path = hello_path(vsock_uds, port);
        let listener = bind(&path)
            .map_err(|e| tracing::debug!("no hello socket {}: {e}", path.display()))
            .ok()
            .map(|l| (l, path));
        ReadyGate {
            listener,
            console: console.to_path_buf(),
            read: 0,
            tail: Vec::new(),
            opened: Instant::now(),
            fallback,
            why: None,
        }
    }

    /// Has the guest's vsock come up? Once true, stays true. Never blocks.
    pub fn passed(&mut self) -> bool {
        if self.why.is_none() {
            self.why = self.check();
            if let Some(why) = self.why {
                tracing::debug!("guest vsock ready: {why}");
            }
        }
        self.why.is_some()
    }

    /// What opened the gate, once it is open.
    pub fn reason(&self) -> Option<&'static str> {
        self.why
    }

    fn check(&mut self) -> Option<&'static str> {
        if let Some((l, _)) = &self.listener {
            if l.accept().is_ok() {
                return Some("the agent said hello");
            }
        }
        if self.console_says_listening() {
            return Some("the console shows the agent listening");
        }
        (self.opened.elapsed() >= self.fallback).then_some("no sign within the fallback time")
    }

    /// Read what the console gained since the last call and look for [`LISTENING`].
    fn console_says_listening(&mut self) -> bool {
        let Ok(mut f) = std::fs::File::open(&self.console) else {
            return false;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.read {
            // A new boot's log: start over.
            self.read = 0;
            self.tail.clear();
        }
        if f.seek(SeekFrom::Start(self.read)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return false;
        }
        self.read += buf.len() as u64;
        self.tail.extend_from_slice(&buf);
        let found = contains_line_start(&self.tail, LISTENING.as_bytes());
        // Keep only the unfinished last line (plus enough to match across reads).
        if let Some(nl) = self.tail.iter().rposition(|&b| b == b'\n') {
            self.tail.drain(..=nl);
        }
        if self.tail.len() > 4096 {
            let cut = self.tail.len() - 4096;
            self.tail.drain(..cut);
        }
        found
    }
}

impl Drop for ReadyGate {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // A socket left by a fort that was killed while waiting is fort's own: replace it.
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)?
        }
        _ => {}
    }
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    // A confined vhost-device-vsock runs as the VM's uid; the run dir (0700, that uid's)
    // keeps everyone else out.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Does `needle` start some line of `hay` (the console interleaves kernel messages)?
fn contains_line_start(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .enumerate()
        .any(|(i, w)| w == needle && (i == 0 || matches!(hay[i - 1], b'\n' | b'\r')))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn the_hello_socket_sits_beside_the_vsock_socket() {
        assert_eq!(
            hello_path(Path::new("/s/run/a/vsock.sock"), 52),
            PathBuf::from("/s/run/a/vsock.sock_52")
        );
    }

    #[test]
    fn a_hello_opens_the_gate_and_the_socket_goes_with_it() {
        let d = tempfile::tempdir().unwrap();
        let uds = d.path().join("vsock.sock");
        let mut g = ReadyGate::open(&uds, 52, &d.path().join("console.log"), LONG);
        assert!(!g.passed());
        let path = hello_path(&uds, 52);
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.write_all(b"fort-guest-agent ready\n").unwrap();
        assert!(g.passed());
        assert_eq!(g.reason(), Some("the agent said hello"));
        drop(g);
        assert!(!path.exists());
    }

    #[test]
    fn the_console_line_opens_the_gate_even_when_split_across_reads() {
        let d = tempfile::tempdir().unwrap();
        let console = d.path().join("console.log");
        std::fs::write(
            &console,
            "[    4.2] NET: Registered PF_VSOCK\nfort-guest-agent: list",
        )
        .unwrap();
        let mut g = ReadyGate::open(&d.path().join("vsock.sock"), 52, &console, LONG);
        assert!(!g.passed());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&console)
            .unwrap();
        f.write_all(b"ening on vsock:52\n").unwrap();
        assert!(g.passed());
        assert_eq!(g.reason(), Some("the console shows the agent listening"));
    }

    #[test]
    fn without_any_sign_the_gate_opens_after_its_fallback() {
        let d = tempfile::tempdir().unwrap();
        let mut g = ReadyGate::open(
            &d.path().join("vsock.sock"),
            52,
            &d.path().join("console.log"),
            Duration::from_millis(50),
        );
        assert!(!g.passed());
        std::thread::sleep(Duration::from_millis(60));
        assert!(g.passed());
        assert_eq!(g.reason(), Some("no sign within the fallback time"));
    }

    #[test]
    fn the_line_must_start_a_line() {
        assert!(contains_line_start(
            b"x\r\nfort-guest-agent: listening on vsock:52",
            LISTENING.as_bytes()
        ));
        assert!(!contains_line_start(
            b"echo fort-guest-agent: listening on vsock:52",
            LISTENING.as_bytes()
        ));
    }

    #[test]
    fn a_stale_socket_from_a_killed_fort_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let uds = d.path().join("vsock.sock");
        let old = UnixListener::bind(hello_path(&uds, 52)).unwrap();
        drop(old);
        let mut g = ReadyGate::open(&uds, 52, &d.path().join("console.log"), LONG);
        std::os::unix::net::UnixStream::connect(hello_path(&uds, 52)).unwrap();
        assert!(g.passed());
    }
}

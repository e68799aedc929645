//! `fort/identity`: re-identifying the guest after a snapshot restore (clock, kernel RNG,
//! hostname, network identity, machine-id), each step independent of the others.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use base64::Engine;
use fort_agent_protocol::identity::{IdentityArgs, IdentityResult, NetIdentity};

use crate::init::net;

/// RNDADDENTROPY = _IOW('R', 0x03, int[2]): dir write (1) << 30 | size 8 << 16 | 'R' (0x52)
/// << 8 | 0x03 = 0x40085203.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// RNDRESEEDCRNG = _IO('R', 0x07): no direction, no size: 'R' (0x52) << 8 | 0x07 = 0x5207.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// The fewest entropy bytes accepted.
pub const MIN_ENTROPY: usize = 32;

/// Why an argument cannot be applied (its text goes into `errors` as is).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadArg {
    #[error("machine_id: expected 32 lowercase hex characters, got {0:?}")]
    MachineId(String),
    #[error("ip: expected an IPv4 address with a prefix length like 10.77.0.5/24, got {0:?}")]
    Ip(String),
    #[error("mac: expected six colon-separated hex bytes like 02:00:00:00:00:01, got {0:?}")]
    Mac(String),
    #[error("gateway: expected an IPv4 address, got {0:?}")]
    Gateway(String),
    #[error("dns: expected an IP address, got {0:?}")]
    Dns(String),
    #[error("interface: expected a name of 1 to 15 bytes, got {0:?}")]
    Interface(String),
    #[error("hostname: expected 1 to 64 letters, digits, '-' or '.', got {0:?}")]
    Hostname(String),
    #[error("entropy: not base64: {0}")]
    EntropyBase64(String),
    #[error("entropy: expected at least 32 bytes, got {0}")]
    EntropyShort(usize),
}

/// The guest's realtime clock, injectable so tests never set the host's.
pub trait Clock {
    fn now_ns(&self) -> std::io::Result<i128>;
    fn set_ns(&self, ns: u64) -> std::io::Result<()>;
}

/// CLOCK_REALTIME itself.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> std::io::Result<i128> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, exclusively borrowed timespec.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
    }

    fn set_ns(&self, ns: u64) -> std::io::Result<()> {
        let ts = libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: `ts` is a valid timespec that outlives the call.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The network identity, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Net {
    pub interface: String,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<IpAddr>,
}

pub fn parse_machine_id(s: &str) -> Result<&str, BadArg> {
    if s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(s)
    } else {
        Err(BadArg::MachineId(s.to_string()))
    }
}

pub fn parse_entropy(s: &str) -> Result<Vec<u8>, BadArg> {
    let b = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| BadArg::EntropyBase64(e.to_string()))?;
    if b.len() < MIN_ENTROPY {
        return Err(BadArg::EntropyShort(b.len()));
    }
    Ok(b)
}

pub fn parse_hostname(s: &str) -> Result<&str, BadArg> {
    if (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        Ok(s)
    } else {
        Err(BadArg::Hostname(s.to_string()))
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], BadArg> {
    let bad = || BadArg::Mac(s.to_string());
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

pub fn parse_ip(s: &str) -> Result<(Ipv4Addr, u8), BadArg> {
    let bad = || BadArg::Ip(s.to_string());
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let p: u8 = p.parse().map_err(|_| bad())?;
    if p > 32 {
        return Err(bad());
    }
    Ok((a, p))
}

/// Every field of `n` parsed; all the errors when some do not.
pub fn parse_net(n: &NetIdentity) -> Result<Net, Vec<BadArg>> {
    let mut errors = Vec::new();
    if n.interface.is_empty() || n.interface.len() >= libc::IFNAMSIZ || n.interface.contains('/') {
        errors.push(BadArg::Interface(n.interface.clone()));
    }
    let mac = parse_mac(&n.mac).map_err(|e| errors.push(e)).ok();
    let ip = parse_ip(&n.ip).map_err(|e| errors.push(e)).ok();
    let gateway = match &n.gateway {
        None => None,
        Some(g) => match g.parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(BadArg::Gateway(g.clone()));
                None
            }
        },
    };
    let mut dns = Vec::new();
    for d in &n.dns {
        match d.parse() {
            Ok(a) => dns.push(a),
            Err(_) => errors.push(BadArg::Dns(d.clone())),
        }
    }
    match (mac, ip) {
        (Some(mac), Some((ip, prefix))) if errors.is_empty() => Ok(Net {
            interface: n.interface.clone(),
            mac,
            ip,
            prefix,
            gateway,
            dns,
        }),
        _ => Err(errors),
    }
}

/// Apply `args`, with `root` as the filesystem root (`/` in a guest) and `clock` as the
/// realtime clock. Never fails as a whole: what could not be done is in `errors`.
pub fn apply(args: &IdentityArgs, root: &Path, clock: &dyn Clock) -> IdentityResult {
    let mut r = IdentityResult {
        clock_step_ms: 0,
        reseeded: false,
        hostname: None,
        machine_id: None,
        errors: Vec::new(),
    };
    // a. Clock.
    match clock.now_ns() {
        Ok(now) => {
            let step = (i128::from(args.time_unix_ns) - now) / 1_000_000;
            r.clock_step_ms = i64::try_from(step).unwrap_or(i64::MAX);
        }
        Err(e) => r
            .errors
            .push(format!("clock: cannot read CLOCK_REALTIME: {e}")),
    }
    if let Err(e) = clock.set_ns(args.time_unix_ns) {
        r.errors
            .push(format!("clock: cannot set CLOCK_REALTIME: {e}"));
    }
    // b. Entropy.
    if !args.entropy.is_empty() {
        match parse_entropy(&args.entropy) {
            Err(e) => r.errors.push(e.to_string()),
            Ok(bytes) => match reseed(&bytes) {
                Ok(()) => r.reseeded = true,
                Err(e) => r.errors.push(e),
            },
        }
    }
    // c. Hostname.
    if let Some(h) = &args.hostname {
        match parse_hostname(h) {
            Err(e) => r.errors.push(e.to_string()),
            Ok(h) => {
                match rustix::system::sethostname(h.as_bytes()) {
                    Ok(()) => r.hostname = Some(h.to_string()),
                    Err(e) => r.errors.push(format!("hostname: cannot set {h}: {e}")),
                }
                if let Err(e) = write_atomic(&root.join("etc/hostname"), &format!("{h}\n")) {
                    r.errors
                        .push(format!("hostname: cannot write /etc/hostname: {e}"));
                }
            }
        }
    }
    // d. Network.
    if let Some(n) = &args.network {
        match parse_net(n) {
            Err(es) => r.errors.extend(es.iter().map(ToString::to_string)),
            Ok(n) => network(&n, root, &mut r.errors),
        }
    }
    // e. machine-id.
    if let Some(id) = &args.machine_id {
        match parse_machine_id(id) {
            Err(e) => r.errors.push(e.to_string()),
            Ok(id) => {
                let mut ok = true;
                let text = format!("{id}\n");
                if root.join("etc").is_dir() {
                    if let Err(e) = write_atomic(&root.join("etc/machine-id"), &text) {
                        ok = false;
                        r.errors
                            .push(format!("machine_id: cannot write /etc/machine-id: {e}"));
                    }
                } else {
                    ok = false;
                    r.errors.push("machine_id: no /etc".to_string());
                }
                let dbus = root.join("var/lib/dbus/machine-id");
                if std::fs::symlink_metadata(&dbus).is_ok_and(|m| m.file_type().is_file()) {
                    if let Err(e) = write_atomic(&dbus, &text) {
                        ok = false;
                        r.errors.push(format!(
                            "machine_id: cannot write /var/lib/dbus/machine-id: {e}"
                        ));
                    }
                }
                if ok {
                    r.machine_id = Some(id.to_string());
                }
            }
        }
    }
    r
}

/// Give the interface its new MAC, replace its addresses, its default route and
/// resolv.conf. No gratuitous ARP: the clone's new IP and MAC are new to its network.
fn network(n: &Net, root: &Path, errors: &mut Vec<String>) {
    let dev = n.interface.as_str();
    let mac = n.mac.map(|b| format!("{b:02x}")).join(":");
    // virtio-net (and veth) change their address while up: bouncing a link that is up costs
    // a driver close and open (its receive ring refilled), much of this call's time under
    // TCG. A driver that refuses (EBUSY) gets the bounce. Up in the end either way (a warm
    // builder's link may never have been).
    if net::set_mac(dev, n.mac).is_err() {
        if let Err(e) = net::down(dev) {
            errors.push(format!("network: cannot bring {dev} down: {e}"));
        }
        if let Err(e) = net::set_mac(dev, n.mac) {
            errors.push(format!("mac: cannot set {mac}: {e}"));
        }
    }
    if let Err(e) = net::up(dev) {
        errors.push(format!("network: cannot bring {dev} up: {e}"));
    }
    if let Err(e) = net::flush_ipv4(dev) {
        errors.push(format!("ip: cannot remove the old addresses of {dev}: {e}"));
    }
    if let Err(e) = net::set_ipv4(dev, n.ip, n.prefix) {
        errors.push(format!(
            "ip: cannot set {}/{} on {dev}: {e}",
            n.ip, n.prefix
        ));
    }
    if let Some(gw) = n.gateway {
        if let Err(e) = net::replace_default_route(gw) {
            errors.push(format!("gateway: cannot route via {gw}: {e}"));
        }
    }
    if !n.dns.is_empty() {
        if let Err(e) = crate::init::write_resolv_conf(root, &n.dns) {
            errors.push(format!("dns: cannot write /etc/resolv.conf: {e}"));
        }
    }
}

/// Add `bytes` to the kernel's pool, crediting them, then force a CRNG reseed.
fn reseed(bytes: &[u8]) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("entropy: cannot open /dev/urandom: {e}"))?;
    let len = i32::try_from(bytes.len()).map_err(|_| "entropy: too many bytes".to_string())?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; } as u32 words.
    let mut info = vec![0u32; 2 + bytes.len().div_ceil(4)];
    info[0] = len.saturating_mul(8) as u32;
    info[1] = len as u32;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(w);
    }
    // SAFETY: `info` is a rand_pool_info whose buf holds buf_size bytes, valid for the call.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        return Err(format!(
            "entropy: RNDADDENTROPY failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(format!(
            "entropy: RNDRESEEDCRNG failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Write `path` through a temporary file in its directory and a rename.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.fort-tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;

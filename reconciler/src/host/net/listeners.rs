//! Sockets listening on the host (this network namespace), read from /proc/net/{tcp,udp}{,6},
//! and the process holding one (from /proc/*/fd, where readable): a port fort would publish
//! must not be one a host service already serves, or the DNAT would silently take its
//! traffic. Published ports themselves have no socket, so they never show here.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::manifest::policy::Proto;
use crate::manifest::ports::PortMap;

/// A bound socket: its protocol, its IPv4 address (`None`: every address), port and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub proto: Proto,
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    pub inode: u64,
}

const TCP_LISTEN: &str = "0A";
/// An unconnected UDP socket (TCP_CLOSE): one that receives whatever comes to its port.
const UDP_UNCONNECTED: &str = "07";

/// Every listening TCP and bound, unconnected UDP socket that takes IPv4 traffic.
pub fn listeners() -> Vec<Listener> {
    let mut out = Vec::new();
    for (file, proto, v6) in [
        ("/proc/net/tcp", Proto::Tcp, false),
        ("/proc/net/tcp6", Proto::Tcp, true),
        ("/proc/net/udp", Proto::Udp, false),
        ("/proc/net/udp6", Proto::Udp, true),
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(parse(&text, proto, v6));
        }
    }
    out
}

/// Pure: the sockets of one /proc/net table.
pub fn parse(text: &str, proto: Proto, v6: bool) -> Vec<Listener> {
    let want = match proto {
        Proto::Tcp => TCP_LISTEN,
        Proto::Udp => UDP_UNCONNECTED,
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != want {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), f[9].parse::<u64>()) else {
            continue;
        };
        let addr = if v6 { v6_addr(addr) } else { v4_addr(addr) };
        // An IPv6-only address takes no IPv4 traffic.
        let Some(addr) = addr else { continue };
        out.push(Listener {
            proto,
            addr,
            port,
            inode,
        });
    }
    out
}

/// The kernel prints the address as 32-bit words in host byte order.
fn words(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 8 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(8) {
        let w = u32::from_str_radix(hex.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&w.to_ne_bytes());
    }
    Some(bytes)
}

/// `Some(None)`: every address.
fn v4_addr(hex: &str) -> Option<Option<Ipv4Addr>> {
    let b: [u8; 4] = words(hex)?.try_into().ok()?;
    let a = Ipv4Addr::from(b);
    Some((!a.is_unspecified()).then_some(a))
}

/// `::` takes IPv4 too (unless the socket is v6-only, which /proc does not say: counted);
/// `::ffff:a.b.c.d` is that IPv4 address; anything else is IPv6 only (`None`).
fn v6_addr(hex: &str) -> Option<Option<Ipv4Addr>> {
    let b: [u8; 16] = words(hex)?.try_into().ok()?;
    let a = Ipv6Addr::from(b);
    if a.is_unspecified() {
        return Some(None);
    }
    a.to_ipv4_mapped()
        .map(|v4| (!v4.is_unspecified()).then_some(v4))
}

/// The first socket a published mapping would take traffic from.
pub fn conflict<'a>(map: &PortMap, sockets: &'a [Listener]) -> Option<&'a Listener> {
    sockets.iter().find(|l| {
        l.proto == map.proto
            && (map.host.0..=map.host.1).contains(&l.port)
            && (l.addr.is_none() || map.addr.is_none() || l.addr == map.addr)
    })
}

/// The process holding socket `inode`: its name and PID (`None` when no readable fd is it).
pub fn holder(inode: u64) -> Option<(String, u32)> {
    let needle = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let held = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str())
        });
        if held {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            return Some((comm.trim().to_string(), pid));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::manifest::ports::parse_port_map;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0051 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5252 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0052 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5353 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_sockets_parse_with_their_ipv4_reach() {
        let v4 = parse(TCP, Proto::Tcp, false);
        assert_eq!(
            v4,
            [
                Listener {
                    proto: Proto::Tcp,
                    addr: Some(Ipv4Addr::LOCALHOST),
                    port: 8080,
                    inode: 4242
                },
                Listener {
                    proto: Proto::Tcp,
                    addr: None,
                    port: 22,
                    inode: 4343
                },
            ],
            "the established connection is no listener"
        );
        let v6: Vec<(Option<Ipv4Addr>, u16)> = parse(TCP6, Proto::Tcp, true)
            .iter()
            .map(|l| (l.addr, l.port))
            .collect();
        // `::` takes IPv4 too, `::1` does not, `::ffff:127.0.0.1` is 127.0.0.1.
        assert_eq!(v6, [(None, 80), (Some(Ipv4Addr::LOCALHOST), 82)]);
        let p = |s: &str| parse_port_map(s).unwrap();
        assert_eq!(conflict(&p("8080:80"), &v4).map(|l| l.inode), Some(4242));
        assert_eq!(conflict(&p("127.0.0.2:8080:80"), &v4), None);
        assert_eq!(
            conflict(&p("127.0.0.2:22:22"), &v4).map(|l| l.inode),
            Some(4343)
        );
        assert_eq!(conflict(&p("8080:80/udp"), &v4), None);
    }
}

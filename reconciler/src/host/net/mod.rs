//! Host networking for fort's networks and VM attachments, over netlink only: links,
//! addresses and bridge ports (rtnetlink), TAPs (the tun ioctls), nftables (nftnl), and the
//! sysctl and resolver files they depend on.

pub mod dns;
pub mod link;
pub mod listeners;
pub mod nft;
mod nft_dump;
pub mod nl;
pub mod ports;
pub mod tap;

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a route netlink connection")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {what}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}")]
    Netfilter {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables refused the change")]
    Refused {
        #[source]
        source: std::io::Error,
    },
    #[error("invalid name `{0}`")]
    Name(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Conflict(String),
}

impl NetError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> NetError {
        NetError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// `net.ipv4.ip_forward` of the current network namespace.
pub fn ip_forward() -> Result<bool, NetError> {
    let p = Path::new(IP_FORWARD);
    let v = std::fs::read_to_string(p).map_err(|e| NetError::io("cannot read", p, e))?;
    Ok(v.trim() == "1")
}

pub fn set_ip_forward(on: bool) -> Result<(), NetError> {
    let p = Path::new(IP_FORWARD);
    std::fs::write(p, if on { "1\n" } else { "0\n" })
        .map_err(|e| NetError::io("cannot write", p, e))
}

fn disable_ipv6_path(ifname: &str) -> std::path::PathBuf {
    Path::new("/proc/sys/net/ipv6/conf")
        .join(ifname)
        .join("disable_ipv6")
}

/// Whether IPv6 is off on `ifname` (`None` when the host has no IPv6 at all). A bridge with
/// IPv6 on has a link-local address guests could reach the host through, past fort's IPv4
/// rules.
pub fn ipv6_disabled(ifname: &str) -> Option<bool> {
    let v = std::fs::read_to_string(disable_ipv6_path(ifname)).ok()?;
    Some(v.trim() == "1")
}

/// Switch IPv6 off on `ifname` (nothing to do on a host without IPv6).
pub fn disable_ipv6(ifname: &str) -> Result<(), NetError> {
    let p = disable_ipv6_path(ifname);
    if !p.exists() {
        return Ok(());
    }
    std::fs::write(&p, "1\n").map_err(|e| NetError::io("cannot write", &p, e))
}

fn route_localnet_path(ifname: &str) -> std::path::PathBuf {
    Path::new("/proc/sys/net/ipv4/conf")
        .join(ifname)
        .join("route_localnet")
}

/// Whether `ifname` routes 127.0.0.0/8 (`None` when the interface is gone). A published port
/// reached from the host on 127.0.0.1 is DNATed out through the bridge with its loopback
/// source; without this the kernel refuses to route it.
pub fn route_localnet(ifname: &str) -> Option<bool> {
    let v = std::fs::read_to_string(route_localnet_path(ifname)).ok()?;
    Some(v.trim() == "1")
}

pub fn set_route_localnet(ifname: &str) -> Result<(), NetError> {
    let p = route_localnet_path(ifname);
    std::fs::write(&p, "1\n").map_err(|e| NetError::io("cannot write", &p, e))
}

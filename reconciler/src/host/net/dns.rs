//! The DNS servers a guest should use when its network says `dns = "from-host"`: the host's
//! upstream servers, never a loopback stub (systemd-resolved's 127.0.0.53 is unreachable
//! from a VM).

use std::net::IpAddr;
use std::path::Path;

/// Nameservers listed in a resolv.conf text, in order.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.split('%').next().and_then(|a| a.parse().ok()))
        .collect()
}

/// The host's upstream servers: `/etc/resolv.conf` without loopback addresses, and when that
/// leaves nothing (a local stub resolver), systemd-resolved's list of real upstreams.
pub fn from_host() -> Vec<IpAddr> {
    from_files(
        Path::new("/etc/resolv.conf"),
        Path::new("/run/systemd/resolve/resolv.conf"),
    )
}

pub fn from_files(resolv_conf: &Path, resolved_upstreams: &Path) -> Vec<IpAddr> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| parse_resolv_conf(&t))
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !a.is_loopback())
            .collect::<Vec<_>>()
    };
    let direct = read(resolv_conf);
    if !direct.is_empty() {
        return direct;
    }
    read(resolved_upstreams)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_local_stub_is_replaced_by_the_upstreams() {
        let d = tempfile::tempdir().unwrap();
        let stub = d.path().join("resolv.conf");
        let up = d.path().join("upstream.conf");
        std::fs::write(
            &stub,
            "# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n",
        )
        .unwrap();
        std::fs::write(
            &up,
            "nameserver 192.0.2.1\nnameserver 2001:db8::1\nnameserver fe80::1%eth0\n",
        )
        .unwrap();
        assert_eq!(
            from_files(&stub, &up),
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        std::fs::write(&stub, "nameserver 198.51.100.7\nnameserver ::1\n").unwrap();
        assert_eq!(
            from_files(&stub, &up),
            vec!["198.51.100.7".parse::<IpAddr>().unwrap()]
        );
        std::fs::write(&stub, "nameserver 127.0.0.53\n").unwrap();
        assert_eq!(
            from_files(&stub, &d.path().join("missing")),
            Vec::<IpAddr>::new()
        );
    }
}

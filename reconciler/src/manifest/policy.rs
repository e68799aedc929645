//! Network egress policy syntax (pure): `allow`/`deny` entries `CIDR[:PORT[-PORT]][/PROTO]`
//! and `host_ports` entries `PORT[-PORT][/PROTO]`, parsed into what the nftables rules match
//! and printed back in one normal form (what specs record and rule comments carry).

use std::fmt;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// What a network lets its guests reach beyond `allow`/`deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Public addresses only (the default with `nat = true`).
    Internet,
    /// Nothing leaves the network (the default without NAT).
    None,
    /// Everything the host can route to.
    All,
}

impl Egress {
    pub fn parse(s: &str) -> Result<Egress, String> {
        match s {
            "internet" => Ok(Egress::Internet),
            "none" => Ok(Egress::None),
            "all" => Ok(Egress::All),
            other => Err(format!(
                "egress must be \"internet\", \"none\" or \"all\", got \"{other}\""
            )),
        }
    }
}

/// The destinations `egress = "internet"` denies: private, shared, link-local (cloud
/// metadata), loopback, "this network", multicast and reserved ranges.
pub const NOT_INTERNET: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Ports and protocol: a port range, and tcp, udp or (None) both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
    pub proto: Option<Proto>,
}

impl Ports {
    /// The protocols the rule matches.
    pub fn protos(&self) -> Vec<Proto> {
        self.proto.map_or(vec![Proto::Tcp, Proto::Udp], |p| vec![p])
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)?;
        } else {
            write!(f, "{}-{}", self.first, self.last)?;
        }
        if let Some(p) = self.proto {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

/// One `allow`/`deny` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub cidr: Ipv4Net,
    pub ports: Option<Ports>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if let Some(p) = &self.ports {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

fn port(s: &str, what: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("{what} port {p} is outside 1-65535")),
        Err(_) => Err(format!("`{s}` is not a port number")),
    }
}

/// `PORT[-PORT][/tcp|/udp]`.
pub fn parse_ports(s: &str) -> Result<Ports, String> {
    let (range, proto) = match s.split_once('/') {
        Some((r, "tcp")) => (r, Some(Proto::Tcp)),
        Some((r, "udp")) => (r, Some(Proto::Udp)),
        Some((_, other)) => {
            return Err(format!(
                "protocol `{other}` is not tcp or udp (leave it out for both)"
            ))
        }
        None => (s, None),
    };
    let (first, last) = match range.split_once('-') {
        Some((a, b)) => (port(a, "the first")?, port(b, "the last")?),
        None => {
            let p = port(range, "the")?;
            (p, p)
        }
    };
    if first > last {
        return Err(format!("port range {first}-{last} is backwards"));
    }
    Ok(Ports { first, last, proto })
}

/// `CIDR[:PORT[-PORT][/tcp|/udp]]`; a bare address means `/32`.
pub fn parse_rule(s: &str) -> Result<Rule, String> {
    let (net, ports) = match s.split_once(':') {
        Some((n, p)) => (n, Some(parse_ports(p)?)),
        None => (s, None),
    };
    let cidr: Ipv4Net = if net.contains('/') {
        net.parse()
            .map_err(|_| format!("`{net}` is not an IPv4 CIDR such as 10.0.5.0/24"))?
    } else {
        let a: std::net::Ipv4Addr = net
            .parse()
            .map_err(|_| format!("`{net}` is not an IPv4 address or CIDR such as 10.0.5.0/24"))?;
        Ipv4Net::from(a)
    };
    if cidr.addr() != cidr.network() {
        return Err(format!(
            "`{net}` has host bits set: did you mean {}?",
            cidr.trunc()
        ));
    }
    Ok(Rule { cidr, ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_ports_parse_to_one_normal_form_or_say_what_is_wrong() {
        let ok = [
            ("10.0.5.0/24", "10.0.5.0/24"),
            ("192.168.1.10/32:5432/tcp", "192.168.1.10/32:5432/tcp"),
            ("192.168.1.10:5432", "192.168.1.10/32:5432"),
            (
                "198.51.100.0/24:8000-8010/udp",
                "198.51.100.0/24:8000-8010/udp",
            ),
        ];
        for (input, want) in ok {
            assert_eq!(
                parse_rule(input).map(|r| r.to_string()),
                Ok(want.to_string())
            );
        }
        let bad = [
            (
                "10.0.5.1/24",
                "`10.0.5.1/24` has host bits set: did you mean 10.0.5.0/24?",
            ),
            (
                "10.0.5/24",
                "`10.0.5/24` is not an IPv4 CIDR such as 10.0.5.0/24",
            ),
            (
                "example.org",
                "`example.org` is not an IPv4 address or CIDR such as 10.0.5.0/24",
            ),
            ("10.0.0.0/8:0", "the port 0 is outside 1-65535"),
            ("10.0.0.0/8:70000/tcp", "the port 70000 is outside 1-65535"),
            ("10.0.0.0/8:http", "`http` is not a port number"),
            (
                "10.0.0.0/8:53/icmp",
                "protocol `icmp` is not tcp or udp (leave it out for both)",
            ),
            ("10.0.0.0/8:90-80", "port range 90-80 is backwards"),
        ];
        for (input, want) in bad {
            assert_eq!(parse_rule(input), Err(want.to_string()), "{input}");
        }
        assert_eq!(
            parse_ports("53/udp").map(|p| p.to_string()),
            Ok("53/udp".into())
        );
        assert_eq!(
            parse_ports("53").map(|p| p.protos()),
            Ok(vec![Proto::Tcp, Proto::Udp])
        );
        assert_eq!(
            Egress::parse("open"),
            Err("egress must be \"internet\", \"none\" or \"all\", got \"open\"".into())
        );
    }
}

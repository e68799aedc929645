//! Published-port syntax (pure): a VM's `ports` entries `[ADDRESS:]HOST[-HOST]:GUEST[-GUEST][/tcp|/udp]`
//! parsed into what the DNAT rules match, printed back in one normal form (what specs record
//! and rule comments carry), and the overlap test duplicate checks use.

use std::fmt;
use std::net::Ipv4Addr;

use super::policy::Proto;

/// One `ports` entry: host ports (on one host address, or all of them) → guest ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMap {
    /// The host address it is published on; `None`: every address of the host.
    pub addr: Option<Ipv4Addr>,
    pub host: (u16, u16),
    pub guest: (u16, u16),
    pub proto: Proto,
}

impl PortMap {
    /// How many host ports the entry names.
    pub fn host_len(&self) -> u32 {
        u32::from(self.host.1) - u32::from(self.host.0) + 1
    }

    pub fn guest_len(&self) -> u32 {
        u32::from(self.guest.1) - u32::from(self.guest.0) + 1
    }

    /// Does a connection to some host address and port reach both? (Same protocol, host port
    /// ranges that meet, and addresses that meet: one of them is "every address", or equal.)
    pub fn overlaps(&self, other: &PortMap) -> bool {
        self.proto == other.proto
            && self.host.0 <= other.host.1
            && other.host.0 <= self.host.1
            && (self.addr.is_none() || other.addr.is_none() || self.addr == other.addr)
    }

    /// The mapping instance `index` of a pool gets: the `index`-th host port of the range, to
    /// the (single) guest port.
    pub fn instance(&self, index: u32) -> PortMap {
        let p = self.host.0.saturating_add(index as u16);
        PortMap {
            host: (p, p),
            ..*self
        }
    }

    /// The host port(s) in words: `8080/tcp`, `8000-8009/udp`.
    pub fn host_ports(&self) -> String {
        format!("{}/{}", range(self.host), self.proto)
    }

    /// For the plan: `127.0.0.1:2222/tcp → guest port 22`, `8080/tcp (every host address) → 80`.
    pub fn describe(&self) -> String {
        let at = match self.addr {
            Some(a) => format!("{a}:{}", self.host_ports()),
            None => format!("{} on every host address", self.host_ports()),
        };
        let to = if self.guest.0 == self.guest.1 {
            format!("guest port {}", self.guest.0)
        } else {
            format!("guest ports {}", range(self.guest))
        };
        format!("{at} → {to}")
    }
}

fn range((a, b): (u16, u16)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(a) = self.addr {
            write!(f, "{a}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            range(self.host),
            range(self.guest),
            self.proto
        )
    }
}

fn port(s: &str, what: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("the {what} port {p} is outside 1-65535")),
        Err(_) => Err(format!("`{s}` is not a port number")),
    }
}

fn ports(s: &str, what: &str) -> Result<(u16, u16), String> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (port(a, what)?, port(b, what)?),
        None => {
            let p = port(s, what)?;
            (p, p)
        }
    };
    if a > b {
        return Err(format!("{what} port range {a}-{b} is backwards"));
    }
    Ok((a, b))
}

/// `[ADDRESS:]HOST[-HOST]:GUEST[-GUEST][/tcp|/udp]`; tcp when no protocol is given (as
/// Docker reads it). `0.0.0.0` means every host address, like no address. Host and guest
/// counts are not compared here: a pool's entry maps a host range to one guest port.
pub fn parse_port_map(s: &str) -> Result<PortMap, String> {
    let (body, proto) = match s.rsplit_once('/') {
        Some((b, "tcp")) => (b, Proto::Tcp),
        Some((b, "udp")) => (b, Proto::Udp),
        Some((_, other)) => return Err(format!("protocol `{other}` is not tcp or udp")),
        None => (s, Proto::Tcp),
    };
    let parts: Vec<&str> = body.split(':').collect();
    let (addr, host, guest) = match parts.as_slice() {
        [h, g] => (None, *h, *g),
        [a, h, g] => {
            let ip: Ipv4Addr = a
                .parse()
                .map_err(|_| format!("`{a}` is not an IPv4 address such as 127.0.0.1"))?;
            (Some(ip).filter(|ip| !ip.is_unspecified()), *h, *g)
        }
        _ => {
            return Err(
                "expected [ADDRESS:]HOST_PORT:GUEST_PORT[/tcp|/udp], such as \"8080:80\"".into(),
            )
        }
    };
    Ok(PortMap {
        addr,
        host: ports(host, "host")?,
        guest: ports(guest, "guest")?,
        proto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_to_one_normal_form_or_say_what_is_wrong() {
        let ok = [
            ("8080:80", "8080:80/tcp"),
            ("127.0.0.1:2222:22/tcp", "127.0.0.1:2222:22/tcp"),
            ("5353:53/udp", "5353:53/udp"),
            ("0.0.0.0:8080:80", "8080:80/tcp"),
            ("8000-8009:80", "8000-8009:80/tcp"),
        ];
        for (input, want) in ok {
            assert_eq!(
                parse_port_map(input).map(|p| p.to_string()),
                Ok(want.to_string())
            );
        }
        let bad = [
            (
                "8080",
                "expected [ADDRESS:]HOST_PORT:GUEST_PORT[/tcp|/udp], such as \"8080:80\"",
            ),
            ("0:80", "the host port 0 is outside 1-65535"),
            ("8080:70000", "the guest port 70000 is outside 1-65535"),
            ("http:80", "`http` is not a port number"),
            ("8080:80/sctp", "protocol `sctp` is not tcp or udp"),
            (
                "localhost:8080:80",
                "`localhost` is not an IPv4 address such as 127.0.0.1",
            ),
            ("90-80:80", "host port range 90-80 is backwards"),
        ];
        for (input, want) in bad {
            assert_eq!(parse_port_map(input), Err(want.to_string()), "{input}");
        }
    }

    #[test]
    fn overlaps_need_the_same_protocol_meeting_ports_and_meeting_addresses() {
        let p = |s: &str| parse_port_map(s).unwrap_or_else(|e| panic!("{e}"));
        assert!(p("8080:80").overlaps(&p("127.0.0.1:8080:81")));
        assert!(p("8000-8009:80").overlaps(&p("8009:80")));
        assert!(!p("8080:80").overlaps(&p("8080:80/udp")));
        assert!(!p("127.0.0.1:8080:80").overlaps(&p("127.0.0.2:8080:80")));
        assert!(!p("8000-8009:80").overlaps(&p("8010:80")));
        assert_eq!(p("8000-8009:80").instance(3).to_string(), "8003:80/tcp");
    }
}

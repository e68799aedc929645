//! `fort port-forward` SPECs (`8080:80`, `127.0.0.1:5432:5432`, `[::1]:0:10.0.0.5:80`, …):
//! pure parsing into where to listen and where to connect in the guest, with exact errors.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// What every error says a SPEC looks like.
const FORMS: &str = "expected [BIND_ADDR:]HOST_PORT:[GUEST_ADDR:]GUEST_PORT or GUEST_PORT";

/// One forward: listen on `listen` (port 0: any free port), connect to `guest_port` on
/// `guest_addr` (None: the agent's default, 127.0.0.1) in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    /// The SPEC as written (error messages name it).
    pub text: String,
    pub listen: SocketAddr,
    pub guest_addr: Option<IpAddr>,
    pub guest_port: u16,
}

impl ForwardSpec {
    /// The guest side as `fort/tunnel` will connect to it: `127.0.0.1:80`, `[::1]:80`.
    pub fn guest(&self) -> SocketAddr {
        SocketAddr::new(
            self.guest_addr.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            self.guest_port,
        )
    }

    /// The guest side after a VM's name: `vm.a:80` (default address), `vm.a:10.0.0.5:80`.
    pub fn guest_label(&self, vm: &str) -> String {
        match self.guest_addr {
            None => format!("{vm}:{}", self.guest_port),
            Some(a) => format!("{vm}:{}", SocketAddr::new(a, self.guest_port)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("port forward `{spec}` is empty: {FORMS}")]
    Empty { spec: String },
    #[error("port forward `{spec}` has too many parts: {FORMS} (IPv6 addresses go in brackets: [::1]:8080:80)")]
    TooManyParts { spec: String },
    #[error("port forward `{spec}`: host port `{part}` is not a number from 0 to 65535")]
    HostPort { spec: String, part: String },
    #[error("port forward `{spec}`: guest port `{part}` is not a number from 1 to 65535")]
    GuestPort { spec: String, part: String },
    #[error("port forward `{spec}`: `{part}` is not an IP address to listen on")]
    BindAddr { spec: String, part: String },
    #[error("port forward `{spec}`: `{part}` is not an IP address in the guest")]
    GuestAddr { spec: String, part: String },
    #[error("port forward `{spec}`: `[` without its `]`, or `]` not followed by `:`")]
    Bracket { spec: String },
    #[error("--address `{0}` is not an IP address to listen on (e.g. 127.0.0.1, ::1, 0.0.0.0)")]
    Address(String),
}

/// The default address to listen on, from `--address` (`localhost` is 127.0.0.1).
pub fn parse_address(s: &str) -> Result<IpAddr, SpecError> {
    ip(s).ok_or_else(|| SpecError::Address(s.to_string()))
}

/// An IP address, bracketed or not, or `localhost`.
fn ip(s: &str) -> Option<IpAddr> {
    if s == "localhost" {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    // Brackets are for IPv6 only (`[1.2.3.4]` is a typo, not an address).
    match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(inner) => inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => s.parse().ok(),
    }
}

/// Digits only (`u16::from_str` would take `+80`).
fn number(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Split on `:` outside brackets; a bracketed part keeps its brackets.
fn parts(spec: &str) -> Result<Vec<&str>, SpecError> {
    let bad = || SpecError::Bracket {
        spec: spec.to_string(),
    };
    let mut out = Vec::new();
    let mut rest = spec;
    loop {
        let end = if rest.starts_with('[') {
            let close = rest.find(']').ok_or_else(bad)? + 1;
            match rest[close..].chars().next() {
                None | Some(':') => close,
                Some(_) => return Err(bad()),
            }
        } else {
            rest.find(':').unwrap_or(rest.len())
        };
        let part = &rest[..end];
        let inner = match part.strip_prefix('[') {
            Some(p) => p.strip_suffix(']').unwrap_or(p),
            None => part,
        };
        if inner.contains(['[', ']']) {
            return Err(bad());
        }
        out.push(part);
        if end == rest.len() {
            return Ok(out);
        }
        rest = &rest[end + 1..];
    }
}

/// Parse one SPEC; `default_bind` is where forms without a BIND_ADDR listen.
pub fn parse(spec: &str, default_bind: IpAddr) -> Result<ForwardSpec, SpecError> {
    let s = spec.to_string();
    if spec.is_empty() {
        return Err(SpecError::Empty { spec: s });
    }
    let p = parts(spec)?;
    let host_port = |part: &str| {
        number(part).ok_or_else(|| SpecError::HostPort {
            spec: s.clone(),
            part: part.to_string(),
        })
    };
    let guest_port = |part: &str| {
        number(part)
            .filter(|&n| n != 0)
            .ok_or_else(|| SpecError::GuestPort {
                spec: s.clone(),
                part: part.to_string(),
            })
    };
    let bind = |part: &str| {
        ip(part).ok_or_else(|| SpecError::BindAddr {
            spec: s.clone(),
            part: part.to_string(),
        })
    };
    let guest_addr = |part: &str| {
        // `localhost` in the guest is the default anyway; only addresses are sent.
        ip(part).ok_or_else(|| SpecError::GuestAddr {
            spec: s.clone(),
            part: part.to_string(),
        })
    };
    let (listen_ip, hp, ga, gp) = match p.as_slice() {
        [g] => {
            let g = guest_port(g)?;
            (default_bind, g, None, g)
        }
        [h, g] => (default_bind, host_port(h)?, None, guest_port(g)?),
        // Three parts: a number first is HOST_PORT:GUEST_ADDR:GUEST_PORT, else the first is
        // where to listen (ports are never addresses, so this cannot be ambiguous).
        [a, b, c] if number(a).is_some() => (
            default_bind,
            host_port(a)?,
            Some(guest_addr(b)?),
            guest_port(c)?,
        ),
        [a, b, c] => (bind(a)?, host_port(b)?, None, guest_port(c)?),
        [a, b, c, d] => (
            bind(a)?,
            host_port(b)?,
            Some(guest_addr(c)?),
            guest_port(d)?,
        ),
        _ => return Err(SpecError::TooManyParts { spec: s }),
    };
    Ok(ForwardSpec {
        text: s,
        listen: SocketAddr::new(listen_ip, hp),
        guest_addr: ga,
        guest_port: gp,
    })
}

impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

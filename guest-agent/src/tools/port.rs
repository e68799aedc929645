//! `port_check`: who listens on a guest TCP port (from /proc/net/tcp and tcp6) and whether a
//! connection to `host:port` works — the usual answer to "the port is open but unreachable".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use fort_agent_protocol::process::{PortCheck, PortStatus};
use fort_agent_protocol::tunnel::DEFAULT_HOST;

use super::{Output, ToolError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The addresses in LISTEN (state `0A`) on `port` in one /proc/net/tcp or tcp6 text.
pub fn listeners(proc_net_tcp: &str, port: u16) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in proc_net_tcp.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(state)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if state != "0A" {
            continue;
        }
        let Some((addr, p)) = local.split_once(':') else {
            continue;
        };
        if u16::from_str_radix(p, 16) != Ok(port) {
            continue;
        }
        if let Some(a) = parse_addr(addr) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// The kernel prints each 32-bit word of the address in host (little-endian) byte order.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let bytes: Vec<u8> = words?
        .into_iter()
        .flat_map(|w| w.swap_bytes().to_be_bytes())
        .collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            let v6 = Ipv6Addr::from(b);
            // A v4-mapped listener (::ffff:127.0.0.1) is that v4 address.
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

fn show(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Whether a listener on `l` accepts connections to `target`.
fn covers(l: IpAddr, target: Option<IpAddr>) -> bool {
    match (l, target) {
        (_, None) => true,
        (IpAddr::V4(a), Some(IpAddr::V4(_))) if a.is_unspecified() => true,
        // `[::]` takes v4 too unless the socket is v6-only, which /proc does not say.
        (IpAddr::V6(a), Some(_)) if a.is_unspecified() => true,
        (a, Some(t)) => a == t,
    }
}

/// The explanation for a result (pure, for the unit test).
pub fn explain(s: &PortStatus) -> String {
    let addrs = s.listeners.join(", ");
    let target = if s.host.contains(':') {
        format!("[{}]:{}", s.host, s.port)
    } else {
        format!("{}:{}", s.host, s.port)
    };
    let why = s.error.as_deref().unwrap_or("failed");
    match (s.listeners.is_empty(), s.connectable) {
        (false, true) => format!("listening on {addrs}; connected to {target}"),
        (true, false) => format!(
            "nothing is listening on TCP port {} in the VM (connecting to {target}: {why}): start the server, or check which port it uses",
            s.port
        ),
        (false, false) => {
            let host: Option<IpAddr> = s.host.parse().ok();
            let matching = s
                .listeners
                .iter()
                .filter_map(|l| l.rsplit_once(':').map(|(a, _)| a.trim_matches(['[', ']'])))
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .any(|a| covers(a, host));
            if matching {
                format!("listening on {addrs}, but connecting to {target} failed: {why} (a firewall, or the server is not accepting)")
            } else {
                format!("listening on {addrs} only, not on {target}'s address, so connecting to {target} failed: {why}; bind the server to 0.0.0.0 (or to {}), or check one of its addresses", s.host)
            }
        }
        (true, true) => format!(
            "connected to {target}, though /proc/net/tcp shows no listener on port {} (another network namespace?)",
            s.port
        ),
    }
}

pub async fn check(a: PortCheck) -> Result<Output, ToolError> {
    let host = a.host.unwrap_or_else(|| DEFAULT_HOST.to_string());
    let port = a.port;
    let mut found = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = tokio::fs::read_to_string(f).await.unwrap_or_default();
        for l in listeners(&text, port) {
            let s = show(l, port);
            if !found.contains(&s) {
                found.push(s);
            }
        }
    }
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let (connectable, error) = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(&target),
    )
    .await
    {
        Ok(Ok(_)) => (true, None),
        Ok(Err(e)) => (false, Some(io_reason(&e))),
        Err(_) => (false, Some("no answer within 2 s".to_string())),
    };
    let status = PortStatus {
        port,
        host,
        listeners: found,
        connectable,
        error,
    };
    Ok(Output {
        text: explain(&status),
        structured: serde_json::to_value(&status).unwrap_or_default(),
    })
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0050 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0200A8C0:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
";

    fn shown(text: &str, port: u16) -> Vec<String> {
        listeners(text, port)
            .into_iter()
            .map(|a| show(a, port))
            .collect()
    }

    #[test]
    fn parses_listeners() {
        // Port 80: two listeners (the established connection on line 2 is not one).
        assert_eq!(shown(TCP, 80), ["0.0.0.0:80", "192.168.0.2:80"]);
        assert_eq!(shown(TCP, 8080), ["127.0.0.1:8080"]);
        assert_eq!(shown(TCP, 443), Vec::<String>::new());
        assert_eq!(shown(TCP6, 80), ["[::]:80"]);
        assert_eq!(shown(TCP6, 8080), ["[::1]:8080"]);
        assert_eq!(shown(TCP6, 3000), ["127.0.0.1:3000"]);
    }

    #[test]
    fn explains_the_mismatch() {
        let s = |listeners: &[&str], host: &str, ok: bool| PortStatus {
            port: 8080,
            host: host.into(),
            listeners: listeners.iter().map(|s| s.to_string()).collect(),
            connectable: ok,
            error: (!ok).then(|| "connection refused".to_string()),
        };
        assert_eq!(
            explain(&s(&[], "127.0.0.1", false)),
            "nothing is listening on TCP port 8080 in the VM (connecting to 127.0.0.1:8080: connection refused): start the server, or check which port it uses"
        );
        assert_eq!(
            explain(&s(&["[::1]:8080"], "127.0.0.1", false)),
            "listening on [::1]:8080 only, not on 127.0.0.1:8080's address, so connecting to 127.0.0.1:8080 failed: connection refused; bind the server to 0.0.0.0 (or to 127.0.0.1), or check one of its addresses"
        );
        assert_eq!(
            explain(&s(&["0.0.0.0:8080"], "127.0.0.1", true)),
            "listening on 0.0.0.0:8080; connected to 127.0.0.1:8080"
        );
    }
}

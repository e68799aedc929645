//! The `fort port-forward` SPEC parser (pure): every form and every error, exactly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fort::cli::forward_spec::{parse, parse_address, SpecError};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Where it listens, the guest address given (if any), the guest port.
type Parsed = (SocketAddr, Option<IpAddr>, u16);

fn ok(spec: &str, default: IpAddr) -> Parsed {
    let f = parse(spec, default).unwrap_or_else(|e| panic!("{spec}: {e}"));
    assert_eq!(f.text, spec);
    (f.listen, f.guest_addr, f.guest_port)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn forms() {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let ten: IpAddr = "10.0.0.5".parse().unwrap();
    let table: &[(&str, IpAddr, Parsed)] = &[
        ("80", LO, (sa("127.0.0.1:80"), None, 80)),
        ("8080:80", LO, (sa("127.0.0.1:8080"), None, 80)),
        ("0:80", LO, (sa("127.0.0.1:0"), None, 80)),
        ("8080:80", any, (sa("0.0.0.0:8080"), None, 80)),
        (
            "127.0.0.2:5432:5432",
            any,
            (sa("127.0.0.2:5432"), None, 5432),
        ),
        ("localhost:8080:80", any, (sa("127.0.0.1:8080"), None, 80)),
        ("[::1]:8080:80", LO, (sa("[::1]:8080"), None, 80)),
        (
            "8080:10.0.0.5:80",
            LO,
            (sa("127.0.0.1:8080"), Some(ten), 80),
        ),
        ("8080:[::1]:80", LO, (sa("127.0.0.1:8080"), Some(v6), 80)),
        (
            "0.0.0.0:0:10.0.0.5:80",
            LO,
            (sa("0.0.0.0:0"), Some(ten), 80),
        ),
        (
            "[::1]:9000:[::1]:9001",
            LO,
            (sa("[::1]:9000"), Some(v6), 9001),
        ),
        ("08080:080", LO, (sa("127.0.0.1:8080"), None, 80)),
        ("65535:65535", LO, (sa("127.0.0.1:65535"), None, 65535)),
    ];
    for (spec, default, want) in table {
        assert_eq!(ok(spec, *default), *want, "{spec}");
    }
    let f = parse("8080:10.0.0.5:80", LO).unwrap();
    assert_eq!(f.guest(), sa("10.0.0.5:80"));
    assert_eq!(f.guest_label("vm.a"), "vm.a:10.0.0.5:80");
    let f = parse("8080:[::1]:80", LO).unwrap();
    assert_eq!(f.guest_label("vm.a"), "vm.a:[::1]:80");
    let f = parse("8080:80", LO).unwrap();
    assert_eq!(
        (f.guest(), f.guest_label("vm.a")),
        (sa("127.0.0.1:80"), "vm.a:80".into())
    );
}

#[test]
fn errors() {
    let forms = "expected [BIND_ADDR:]HOST_PORT:[GUEST_ADDR:]GUEST_PORT or GUEST_PORT";
    let table: &[(&str, String)] = &[
        ("", format!("port forward `` is empty: {forms}")),
        ("1:2:3:4:5", format!("port forward `1:2:3:4:5` has too many parts: {forms} (IPv6 addresses go in brackets: [::1]:8080:80)")),
        ("::1:8080:80", format!("port forward `::1:8080:80` has too many parts: {forms} (IPv6 addresses go in brackets: [::1]:8080:80)")),
        ("0", "port forward `0`: guest port `0` is not a number from 1 to 65535".into()),
        ("8080:0", "port forward `8080:0`: guest port `0` is not a number from 1 to 65535".into()),
        ("8080:http", "port forward `8080:http`: guest port `http` is not a number from 1 to 65535".into()),
        ("8080:65536", "port forward `8080:65536`: guest port `65536` is not a number from 1 to 65535".into()),
        ("70000:80", "port forward `70000:80`: host port `70000` is not a number from 0 to 65535".into()),
        ("+80:80", "port forward `+80:80`: host port `+80` is not a number from 0 to 65535".into()),
        (":80", "port forward `:80`: host port `` is not a number from 0 to 65535".into()),
        ("8080:", "port forward `8080:`: guest port `` is not a number from 1 to 65535".into()),
        ("-1:80", "port forward `-1:80`: host port `-1` is not a number from 0 to 65535".into()),
        ("web:8080:80", "port forward `web:8080:80`: `web` is not an IP address to listen on".into()),
        ("8080:db:80", "port forward `8080:db:80`: `db` is not an IP address in the guest".into()),
        ("1.2.3:8080:db:80", "port forward `1.2.3:8080:db:80`: `1.2.3` is not an IP address to listen on".into()),
        ("[::1:8080:80", "port forward `[::1:8080:80`: `[` without its `]`, or `]` not followed by `:`".into()),
        ("[::1]8080:80", "port forward `[::1]8080:80`: `[` without its `]`, or `]` not followed by `:`".into()),
        ("8080]:80", "port forward `8080]:80`: `[` without its `]`, or `]` not followed by `:`".into()),
        ("[1.2.3.4]:8080:80", "port forward `[1.2.3.4]:8080:80`: `[1.2.3.4]` is not an IP address to listen on".into()),
        ("[]:8080:80", "port forward `[]:8080:80`: `[]` is not an IP address to listen on".into()),
    ];
    for (spec, want) in table {
        match parse(spec, LO) {
            Ok(f) => panic!("{spec}: parsed as {f:?}"),
            Err(e) => assert_eq!(e.to_string(), *want, "{spec}"),
        }
    }
}

#[test]
fn addresses() {
    assert_eq!(
        parse_address("0.0.0.0").unwrap(),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    );
    assert_eq!(
        parse_address("::1").unwrap(),
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    );
    assert_eq!(
        parse_address("[::1]").unwrap(),
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    );
    assert_eq!(parse_address("localhost").unwrap(), LO);
    assert_eq!(
        parse_address("eth0").unwrap_err(),
        SpecError::Address("eth0".into())
    );
    assert_eq!(
        parse_address("eth0").unwrap_err().to_string(),
        "--address `eth0` is not an IP address to listen on (e.g. 127.0.0.1, ::1, 0.0.0.0)"
    );
}

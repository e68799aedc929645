//! Tests of `fort/identity`: argument checks, and every step for real in fresh namespaces.

#![allow(clippy::unwrap_used)]

use super::*;
use std::cell::Cell;
use std::process::Command;

/// A clock that records what it was set to instead of setting the host's.
struct FakeClock {
    now: i128,
    set: Cell<Option<u64>>,
}

impl Clock for FakeClock {
    fn now_ns(&self) -> std::io::Result<i128> {
        Ok(self.now)
    }
    fn set_ns(&self, ns: u64) -> std::io::Result<()> {
        self.set.set(Some(ns));
        Ok(())
    }
}

fn args(time: u64) -> IdentityArgs {
    IdentityArgs {
        time_unix_ns: time,
        entropy: String::new(),
        hostname: None,
        network: None,
        machine_id: None,
    }
}

#[test]
fn bad_arguments_are_named_exactly() {
    assert_eq!(
        parse_machine_id("xyz").unwrap_err().to_string(),
        r#"machine_id: expected 32 lowercase hex characters, got "xyz""#
    );
    assert!(parse_machine_id("0123456789ABCDEF0123456789abcdef").is_err());
    assert!(parse_machine_id("0123456789abcdef0123456789abcdef").is_ok());
    assert_eq!(
        parse_ip("10.77.0.5").unwrap_err().to_string(),
        r#"ip: expected an IPv4 address with a prefix length like 10.77.0.5/24, got "10.77.0.5""#
    );
    assert!(parse_ip("10.77.0.5/33").is_err());
    assert_eq!(
        parse_ip("10.77.0.5/24").unwrap(),
        ("10.77.0.5".parse().unwrap(), 24)
    );
    assert!(parse_mac("02:00:00:00:00").is_err());
    assert!(parse_mac("02:00:00:00:00:01:02").is_err());
    assert_eq!(
        parse_mac("02:aB:00:00:00:ff").unwrap(),
        [2, 0xab, 0, 0, 0, 0xff]
    );
    assert!(parse_entropy("!!!")
        .unwrap_err()
        .to_string()
        .starts_with("entropy: not base64: "));
    assert_eq!(
        parse_entropy("AAAA").unwrap_err().to_string(),
        "entropy: expected at least 32 bytes, got 3"
    );
    assert!(parse_hostname("a b").is_err());
}

#[test]
fn bad_arguments_go_to_errors_and_the_other_steps_still_run() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let clock = FakeClock {
        now: 1_000_000_000_000,
        set: Cell::new(None),
    };
    let mut a = args(1_000_250_000_000);
    a.entropy = "AAAA".into();
    a.machine_id = Some("xyz".into());
    a.network = Some(NetIdentity {
        interface: "eth0".into(),
        mac: "nope".into(),
        ip: "10.0.0.1".into(),
        gateway: None,
        dns: vec![],
    });
    let r = apply(&a, root.path(), &clock);
    assert_eq!(r.clock_step_ms, 250);
    assert_eq!(clock.set.get(), Some(1_000_250_000_000));
    assert!(!r.reseeded);
    assert_eq!(
        r.errors,
        vec![
            "entropy: expected at least 32 bytes, got 3".to_string(),
            r#"mac: expected six colon-separated hex bytes like 02:00:00:00:00:01, got "nope""#.to_string(),
            r#"ip: expected an IPv4 address with a prefix length like 10.77.0.5/24, got "10.0.0.1""#.to_string(),
            r#"machine_id: expected 32 lowercase hex characters, got "xyz""#.to_string(),
        ]
    );
    assert!(!root.path().join("etc/machine-id").exists());
    // A clock behind the host's steps back: negative.
    let r = apply(&args(0), root.path(), &clock);
    assert_eq!(r.clock_step_ms, -1_000_000);
}

fn is_root() {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "this test needs root (CI runs as root)");
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Everything for real, as root, on a thread in fresh network and UTS namespaces (a veth
/// pair with both ends inside, no route out, nothing sent): all but the clock, which is
/// faked, and the files, which go to a temporary root.
#[test]
fn applies_mac_ip_route_hostname_machine_id_and_reseeds_in_namespaces() {
    is_root();
    std::thread::spawn(|| {
        // SAFETY: unshare(2) of net and UTS namespaces only affects this thread.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWUTS) };
        assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
        sh("ip link add eth0 type veth peer name peer0 && ip addr add 10.1.0.9/16 dev eth0 && ip addr add 10.2.0.9/24 dev eth0 && ip link set eth0 up && ip route add default via 10.1.0.1");
        let root = tempfile::tempdir().unwrap();
        let r0 = root.path();
        std::fs::create_dir_all(r0.join("etc")).unwrap();
        std::fs::create_dir_all(r0.join("var/lib/dbus")).unwrap();
        std::fs::write(r0.join("etc/machine-id"), "old\n").unwrap();
        std::fs::write(r0.join("var/lib/dbus/machine-id"), "old\n").unwrap();
        std::os::unix::fs::symlink("/run/x", r0.join("etc/resolv.conf")).unwrap();
        let clock = FakeClock {
            now: 2_000_000_000_000,
            set: Cell::new(None),
        };
        let id = "0123456789abcdef0123456789abcdef";
        let a = IdentityArgs {
            time_unix_ns: 1_999_999_000_000,
            entropy: base64::engine::general_purpose::STANDARD.encode([7u8; 48]),
            hostname: Some("clone-7".into()),
            network: Some(NetIdentity {
                interface: "eth0".into(),
                mac: "02:fc:00:00:00:07".into(),
                ip: "10.77.0.5/24".into(),
                gateway: Some("10.77.0.1".into()),
                dns: vec!["10.77.0.1".into(), "9.9.9.9".into()],
            }),
            machine_id: Some(id.into()),
        };
        let r = apply(&a, r0, &clock);
        assert_eq!(r.errors, Vec::<String>::new());
        assert_eq!(r.clock_step_ms, -1);
        assert!(r.reseeded);
        assert_eq!(r.hostname.as_deref(), Some("clone-7"));
        assert_eq!(r.machine_id.as_deref(), Some(id));
        // Not /sys/class/net: sysfs shows the namespace it was mounted in (the host's).
        let link: serde_json::Value =
            serde_json::from_str(&sh("ip -j link show dev eth0")).unwrap();
        assert_eq!(link[0]["address"], "02:fc:00:00:00:07");
        let addrs: serde_json::Value =
            serde_json::from_str(&sh("ip -j -4 addr show dev eth0")).unwrap();
        let got: Vec<String> = addrs[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
        assert_eq!(got, vec!["10.77.0.5/24"]);
        let routes: serde_json::Value =
            serde_json::from_str(&sh("ip -j -4 route show default")).unwrap();
        let routes = routes.as_array().unwrap();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0]["gateway"], "10.77.0.1");
        assert_eq!(routes[0]["dev"], "eth0");
        assert_eq!(
            rustix::system::uname().nodename().to_str().unwrap(),
            "clone-7"
        );
        let read = |p: &str| std::fs::read_to_string(r0.join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "clone-7\n");
        assert_eq!(read("etc/machine-id"), format!("{id}\n"));
        assert_eq!(read("var/lib/dbus/machine-id"), format!("{id}\n"));
        assert_eq!(read("etc/resolv.conf"), "nameserver 10.77.0.1\nnameserver 9.9.9.9\n");
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// A warm builder's link may be down when it is saved: the clone's comes up with its new
/// address and its default route.
#[test]
fn brings_a_link_that_is_down_up_with_its_route() {
    is_root();
    std::thread::spawn(|| {
        // SAFETY: unshare(2) of a net namespace only affects this thread.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
        sh("ip link add eth0 type veth peer name peer0");
        let root = tempfile::tempdir().unwrap();
        let a = IdentityArgs {
            time_unix_ns: 2_000_000_000_000,
            entropy: String::new(),
            hostname: None,
            network: Some(NetIdentity {
                interface: "eth0".into(),
                mac: "02:fc:00:00:00:08".into(),
                ip: "10.77.0.6/24".into(),
                gateway: Some("10.77.0.1".into()),
                dns: vec![],
            }),
            machine_id: None,
        };
        let clock = FakeClock {
            now: 2_000_000_000_000,
            set: Cell::new(None),
        };
        let r = apply(&a, root.path(), &clock);
        assert_eq!(r.errors, Vec::<String>::new());
        let link: serde_json::Value =
            serde_json::from_str(&sh("ip -j link show dev eth0")).unwrap();
        assert_eq!(link[0]["address"], "02:fc:00:00:00:08");
        let flags: Vec<&str> = link[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(flags.contains(&"UP"), "{flags:?}");
        let routes: serde_json::Value =
            serde_json::from_str(&sh("ip -j -4 route show default")).unwrap();
        assert_eq!(routes[0]["gateway"], "10.77.0.1", "{routes}");
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

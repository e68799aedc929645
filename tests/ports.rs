//! Published ports, tried for real: a VM (QEMU/TCG) runs an HTTP server, and its published
//! ports answer from an "outside" namespace (another host) and from the host itself — on a
//! non-loopback host address and on 127.0.0.1 — also under `egress = "none"`, while the guest
//! still cannot open a connection out; changing `ports` on the running VM takes effect in
//! place (its PID unchanged); a deleted port table is drift the next apply repairs; and plan
//! refuses a port a host socket already serves, naming the process.
//!
//! Safe by construction, as tests/fence.rs: fort, its bridge and the VM live in a network
//! namespace this test made, linked only to an "outside" namespace it also made (198.51.100.1,
//! TEST-NET-2); before anything starts the test checks that no route leads anywhere else.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fort::Workspace;
use common::netns::{in_netns, sh, Killed, Namespaces};
use common::rootfs::static_agent;
use common::vms::{assets, ConsoleOnFailure, ONE_AT_A_TIME};

/// This namespace ↔ `out` (198.51.100.2 here, 198.51.100.1 there), and nothing else: every
/// route of both leads to that veth only.
fn outside(out: &str) {
    sh(&format!(
        "ip netns add {out} && ip link add vout type veth peer name eth0 netns {out} && \
         ip addr add 198.51.100.2/24 dev vout && ip link set vout up && \
         ip -n {out} link set lo up && ip -n {out} addr add 198.51.100.1/24 dev eth0 && \
         ip -n {out} link set eth0 up"
    ));
    let routes = |args: &[&str]| {
        String::from_utf8(Command::new("ip").args(args).output().unwrap().stdout).unwrap()
    };
    for l in routes(&["-4", "route", "show"]).lines() {
        assert!(
            l.contains("dev vout"),
            "unexpected route in the test namespace: {l}"
        );
    }
    let r = routes(&["-n", out, "-4", "route", "show"]);
    assert!(!r.contains("default"), "{out} has a default route: {r}");
    for l in r.lines() {
        assert!(l.contains("dev eth0"), "unexpected route in {out}: {l}");
    }
}

fn manifest(ws: &Workspace, dir: &Path, policy: &str, ports: &str) {
    ws.write_manifest(&format!(
        "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n\
         [rootfs.bb]\nurl = \"file://{r}\"\n\n\
         [template.t]\nrootfs = \"bb\"\nsize = \"128MiB\"\n\n\
         [network.lan]\ncidr = \"10.84.0.0/24\"\nnat = true\ndns = [\"198.51.100.53\"]\n{policy}\n\n\
         [vm.a]\nvmm = \"qemu\"\nkernel = \"deb\"\nroot = {{ template = \"t\", size = \"256MiB\" }}\nmemory = \"192MiB\"\nnetwork = \"lan\"\nports = {ports}\n",
        k = dir.join("vmlinuz").display(),
        i = dir.join("initrd.cpio.gz").display(),
        r = dir.join("rootfs.tar.gz").display(),
    ));
}

/// An HTTP GET from this namespace: the body, or None when nothing answers within 5 s.
fn get(addr: &str) -> Option<String> {
    let a: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let body = r.split_once("\r\n\r\n")?.1.trim().to_string();
    Some(body)
}

/// The same GET from the outside namespace (another host, as far as fort's can tell).
fn get_from(ns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-m", "5", url])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What the guest gets from `url` (None: nothing within a few seconds).
fn fetch_in_guest(ws: &Workspace, url: &str) -> Option<String> {
    let r = ws.run(&[
        "exec",
        "--timeout",
        "5",
        "vm.a",
        "--",
        "wget",
        "-q",
        "-O",
        "-",
        url,
    ]);
    (r.code == 0).then(|| r.stdout.trim().to_string())
}

fn vm_pid(ws: &Workspace) -> u64 {
    let s: serde_json::Value =
        serde_json::from_str(&ws.run(&["state", "show", "vm.a", "--json"]).ok().stdout).unwrap();
    s["outputs"]["started"]["vmm"]["pid"].as_u64().unwrap()
}

fn port_table(ws: &Workspace) -> String {
    let s: serde_json::Value =
        serde_json::from_str(&ws.run(&["state", "show", "vm.a", "--json"]).ok().stdout).unwrap();
    s["outputs"]["ports_table"].as_str().unwrap().to_string()
}

fn tables() -> String {
    String::from_utf8(
        Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

#[test]
fn published_ports_answer_from_outside_and_from_the_host_and_change_in_place() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    let dir = assets();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let out = format!("fort-p{}-out", std::process::id());
        let _ns = Namespaces(vec![out.clone()]);
        outside(&out);
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("index.html"), "outside\n").unwrap();
        let _servers = Killed(vec![Command::new("ip")
            .args([
                "netns",
                "exec",
                &out,
                "python3",
                "-m",
                "http.server",
                "8081",
            ])
            .args(["--bind", "198.51.100.1", "--directory"])
            .arg(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()]);

        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        manifest(&ws, &dir, "", r#"["8080:80", "127.0.0.1:2222:80/tcp"]"#);
        let p = ws.run(&["plan"]);
        assert!(
            p.stdout
                .contains("publishes 8080/tcp on every host address → guest port 80")
                && p.stdout
                    .contains("publishes 127.0.0.1:2222/tcp → guest port 80"),
            "{}",
            p.stdout
        );
        ws.run(&["apply", "--yes"]).ok();
        let pid = vm_pid(&ws);
        ws.run(&[
            "exec",
            "vm.a",
            "--",
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo guest > /tmp/www/index.html && busybox httpd -p 80 -h /tmp/www",
        ])
        .ok();
        let guest_ip = {
            let s: serde_json::Value =
                serde_json::from_str(&ws.run(&["state", "show", "vm.a", "--json"]).ok().stdout)
                    .unwrap();
            s["outputs"]["network"]["ip"].as_str().unwrap().to_string()
        };
        assert_eq!(
            get(&format!("{guest_ip}:80")).as_deref(),
            Some("guest"),
            "the guest serves"
        );

        // Another host, through the host's outside address.
        assert_eq!(
            get_from(&out, "http://198.51.100.2:8080/").as_deref(),
            Some("guest"),
            "from outside"
        );
        // The host itself: its outside address, its gateway address, and loopback.
        assert_eq!(get("198.51.100.2:8080").as_deref(), Some("guest"));
        assert_eq!(get("10.84.0.1:8080").as_deref(), Some("guest"));
        assert_eq!(get("127.0.0.1:8080").as_deref(), Some("guest"), "loopback");
        assert_eq!(
            get("127.0.0.1:2222").as_deref(),
            Some("guest"),
            "127.0.0.1 only"
        );
        // Published on 127.0.0.1 only: not on the outside address.
        assert_eq!(get_from(&out, "http://198.51.100.2:2222/"), None);
        // The guest reaches the outside (egress internet), to compare with `none` below.
        assert_eq!(
            fetch_in_guest(&ws, "http://198.51.100.1:8081/").as_deref(),
            Some("outside")
        );

        // Drift: the port table deleted behind fort's back is put back.
        let t = port_table(&ws);
        sh(&format!("nft delete table ip {t}"));
        let p = ws.run(&["plan"]);
        assert!(
            p.stdout.contains("published-ports table") && p.stdout.contains("~ vm.a"),
            "{}",
            p.stdout
        );
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(get("127.0.0.1:8080").as_deref(), Some("guest"));

        // egress = "none": inbound connections to the published port still pass, and their
        // replies; the guest cannot open a connection out.
        manifest(
            &ws,
            &dir,
            "egress = \"none\"",
            r#"["8080:80", "127.0.0.1:2222:80/tcp"]"#,
        );
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(
            fetch_in_guest(&ws, "http://198.51.100.1:8081/"),
            None,
            "egress none"
        );
        assert_eq!(
            get_from(&out, "http://198.51.100.2:8080/").as_deref(),
            Some("guest"),
            "from outside under egress none"
        );
        assert_eq!(get("127.0.0.1:2222").as_deref(), Some("guest"));

        // Changing the ports of the running VM: in place.
        manifest(&ws, &dir, "egress = \"none\"", r#"["9090:80"]"#);
        let p = ws.run(&["plan"]);
        assert!(
            p.stdout.contains("  ~ vm.a\n") && !p.stdout.contains("~restart"),
            "{}",
            p.stdout
        );
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(
            get_from(&out, "http://198.51.100.2:9090/").as_deref(),
            Some("guest")
        );
        assert_eq!(
            get_from(&out, "http://198.51.100.2:8080/"),
            None,
            "unpublished"
        );
        assert_eq!(get("127.0.0.1:2222"), None, "unpublished");
        assert_eq!(vm_pid(&ws), pid, "the VM never restarted");
        ws.run(&["plan", "--detailed-exitcode"]).ok();

        ws.run(&["destroy", "--yes"]).ok();
        assert!(!tables().contains("fort-ports-"), "{}", tables());
    });
}

#[test]
fn plan_refuses_a_port_a_host_socket_already_serves() {
    let dir = assets();
    in_netns(move || {
        let listener = Command::new("python3")
            .args(["-m", "http.server", "8080", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = listener.id();
        let _l = Killed(vec![listener]);
        let ws = Workspace::new();
        manifest(&ws, &dir, "", r#"["8080:80"]"#);
        // python needs a moment to bind.
        let mut r = ws.run(&["plan"]);
        for _ in 0..50 {
            if r.code != 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            r = ws.run(&["plan"]);
        }
        assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "vm.a: port 8080/tcp on 127.0.0.1 is already bound on the host by python3 (pid {pid})"
            )),
            "{}",
            r.stderr
        );
        // Another host port is free: the plan goes through.
        manifest(&ws, &dir, "", r#"["8081:80"]"#);
        ws.run(&["plan"]).ok();
    });
}

//! Guests fenced in, tried from inside a real VM (QEMU/TCG) with `fort exec`: the egress
//! policy of its network (public addresses only by default, `allow`, `deny`, `none`), and the
//! host closed but for `host_ports` — all changed on a running network without restarting the
//! VM.
//!
//! Safe by construction: fort, its bridge and the VM live in a network namespace this test
//! made; its only other links are veth pairs to two more namespaces the test made — an
//! "outside" one with a public test address (198.51.100.1, TEST-NET-2) and a "private" one
//! with 10.99.0.1 and 169.254.169.254 — each running a small HTTP server. Before anything
//! starts, the test checks that no route leads anywhere else, so no packet can leave the
//! machine even if a rule is wrong.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::fort::Workspace;
use common::netns::{in_netns, sh, Killed, Namespaces};
use common::rootfs::static_agent;
use common::vms::{assets, ConsoleOnFailure, ONE_AT_A_TIME};

/// An HTTP server answering `body` on `addr:port`, run in namespace `ns` (None: here).
fn server(ns: Option<&str>, addr: &str, port: u16, body: &str, dir: &Path) -> Child {
    let d = dir.join(format!("{}-{addr}-{port}", ns.unwrap_or("host")));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("index.html"), format!("{body}\n")).unwrap();
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    c.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        addr,
        "--directory",
    ])
    .arg(&d)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap()
}

fn manifest(ws: &Workspace, dir: &Path, policy: &str) {
    ws.write_manifest(&format!(
        "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n\
         [rootfs.bb]\nurl = \"file://{r}\"\n\n\
         [template.t]\nrootfs = \"bb\"\nsize = \"128MiB\"\n\n\
         [network.lan]\ncidr = \"10.83.0.0/24\"\nnat = true\ndns = [\"198.51.100.53\"]\n{policy}\n\n\
         [vm.a]\nvmm = \"qemu\"\nkernel = \"deb\"\nroot = {{ template = \"t\", size = \"256MiB\" }}\nmemory = \"192MiB\"\nnetwork = \"lan\"\n",
        k = dir.join("vmlinuz").display(),
        i = dir.join("initrd.cpio.gz").display(),
        r = dir.join("rootfs.tar.gz").display(),
    ));
}

/// What the guest gets from `url` (None: nothing within a few seconds; fort exec kills the
/// wget — busybox's own `-T` crashes).
fn fetch(ws: &Workspace, url: &str) -> Option<String> {
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
    if r.code != 0 {
        eprintln!("fence: {url}: exit {}: {}", r.code, r.stderr.trim());
    }
    (r.code == 0).then(|| r.stdout.trim().to_string())
}

fn vm_pid(ws: &Workspace) -> u64 {
    let s: serde_json::Value =
        serde_json::from_str(&ws.run(&["state", "show", "vm.a", "--json"]).ok().stdout).unwrap();
    s["outputs"]["started"]["vmm"]["pid"].as_u64().unwrap()
}

#[test]
fn a_guest_reaches_what_its_network_allows_and_nothing_else() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    let dir = assets();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let id = std::process::id();
        let (out, private) = (format!("fort-t{id}-out"), format!("fort-t{id}-priv"));
        let _ns = Namespaces(vec![out.clone(), private.clone()]);
        // This (fort's) namespace ↔ outside, and ↔ private; nothing else.
        sh(&format!(
            "ip netns add {out} && ip netns add {private} && \
             ip link add vout type veth peer name eth0 netns {out} && \
             ip link add vpriv type veth peer name eth0 netns {private} && \
             ip addr add 198.51.100.2/24 dev vout && ip link set vout up && \
             ip addr add 10.99.0.2/24 dev vpriv && ip link set vpriv up && \
             ip route add 169.254.169.254/32 dev vpriv && \
             ip -n {out} link set lo up && ip -n {out} addr add 198.51.100.1/24 dev eth0 && ip -n {out} link set eth0 up && \
             ip -n {private} link set lo up && ip -n {private} addr add 10.99.0.1/24 dev eth0 && \
             ip -n {private} addr add 169.254.169.254/32 dev eth0 && ip -n {private} link set eth0 up && \
             ip -n {private} route add 10.99.0.0/24 dev eth0 2>/dev/null; true"
        ));
        // No route leads anywhere but the test's own veths (no default route, nothing else).
        let routes = String::from_utf8(
            Command::new("ip")
                .args(["-4", "route", "show"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        for l in routes.lines() {
            assert!(
                l.contains("dev vout") || l.contains("dev vpriv"),
                "unexpected route in the test namespace: {l}"
            );
        }
        for ns in [&out, &private] {
            let r = String::from_utf8(
                Command::new("ip")
                    .args(["-n", ns, "-4", "route", "show"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap();
            assert!(!r.contains("default"), "{ns} has a default route: {r}");
        }

        let www = tempfile::tempdir().unwrap();
        let _servers = Killed(vec![
            server(Some(&out), "198.51.100.1", 8080, "outside", www.path()),
            server(Some(&private), "10.99.0.1", 8080, "private", www.path()),
            server(
                Some(&private),
                "169.254.169.254",
                80,
                "metadata",
                www.path(),
            ),
            // On the host: reached through the bridge's (gateway) address.
            server(None, "0.0.0.0", 8081, "host", www.path()),
        ]);
        std::thread::sleep(std::time::Duration::from_millis(800));

        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        // NAT: egress = "internet" by default.
        manifest(&ws, &dir, "");
        ws.run(&["apply", "--yes"]).ok();
        let pid = vm_pid(&ws);
        assert_eq!(
            fetch(&ws, "http://198.51.100.1:8080/").as_deref(),
            Some("outside")
        );
        assert_eq!(
            fetch(&ws, "http://10.99.0.1:8080/"),
            None,
            "a private range"
        );
        assert_eq!(
            fetch(&ws, "http://169.254.169.254/"),
            None,
            "cloud metadata"
        );
        assert_eq!(fetch(&ws, "http://10.83.0.1:8081/"), None, "the host");
        // The guest agent is not IP: it works whatever the policy.
        ws.run(&["exec", "vm.a", "--", "true"]).ok();

        // allow opens exactly the listed address and port; host_ports exactly that port.
        manifest(
            &ws,
            &dir,
            "allow = [\"10.99.0.1/32:8080/tcp\"]\nhost_ports = [\"8081/tcp\"]",
        );
        let p = ws.run(&["plan"]);
        assert!(
            p.stdout.contains("  ~ network.lan\n")
                && p.stdout
                    .contains("~ allow: (none) → [\"10.99.0.1/32:8080/tcp\"]")
                && !p.stdout.contains("vm.a"),
            "{}",
            p.stdout
        );
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(
            fetch(&ws, "http://10.99.0.1:8080/").as_deref(),
            Some("private")
        );
        assert_eq!(
            fetch(&ws, "http://169.254.169.254/"),
            None,
            "still not metadata"
        );
        assert_eq!(
            fetch(&ws, "http://10.83.0.1:8081/").as_deref(),
            Some("host")
        );
        assert_eq!(
            fetch(&ws, "http://198.51.100.1:8080/").as_deref(),
            Some("outside")
        );

        // deny wins, even over allow.
        manifest(
            &ws,
            &dir,
            "allow = [\"10.99.0.1/32:8080/tcp\", \"198.51.100.1\"]\ndeny = [\"198.51.100.0/24\"]",
        );
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(fetch(&ws, "http://198.51.100.1:8080/"), None, "denied");
        assert_eq!(
            fetch(&ws, "http://10.99.0.1:8080/").as_deref(),
            Some("private")
        );

        // egress = "none": nothing leaves, the agent still answers.
        manifest(&ws, &dir, "egress = \"none\"");
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(fetch(&ws, "http://198.51.100.1:8080/"), None, "egress none");
        ws.run(&["exec", "vm.a", "--", "true"]).ok();

        // egress = "all": today's behaviour, for people who mean it (the host stays closed).
        manifest(&ws, &dir, "egress = \"all\"");
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(
            fetch(&ws, "http://10.99.0.1:8080/").as_deref(),
            Some("private")
        );
        assert_eq!(
            fetch(&ws, "http://169.254.169.254/").as_deref(),
            Some("metadata"),
            "the metadata server answers when the policy lets it (so its refusals above were the fence)"
        );
        assert_eq!(fetch(&ws, "http://10.83.0.1:8081/"), None, "the host");

        // Every change was applied to the running network: the VM never restarted.
        assert_eq!(vm_pid(&ws), pid);
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        ws.run(&["destroy", "--yes"]).ok();
    });
}

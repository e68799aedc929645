//! Sandboxes in real VMs (QEMU under TCG), driven by the official MCP Python SDK
//! (tests/sandbox_client.py) through `fort mcp --host` and through `fort serve` over
//! Streamable HTTP: two made concurrently, used, listed, one destroyed, one expired; then
//! nothing of them is left and the history says why each went.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::fort::{Workspace, FORT};
use common::leaks::{fort_links, fort_tables, leases, names, processes_of};
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::server::Server;
use common::vms::{busybox_base, vmm, ConsoleOnFailure, ONE_AT_A_TIME};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sandbox_client.py");

fn manifest(ws: &Workspace, srv: &Server) {
    let base = busybox_base(srv, "10.79.0.0/24");
    ws.write_manifest(&format!(
        r#"{base}[sandbox.ci]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "192MiB"
network = "lan"
max_ttl = "1h"
"#,
        vmm = vmm(),
    ));
}

/// Run the Python client; its last line is `{"destroyed": ID, "expired": ID}`.
fn client(ws: &Workspace, args: &[&str]) -> (String, String) {
    let out = Command::new("python3")
        .arg(CLIENT)
        .args(args)
        .env("FORT_MANIFEST", ws.manifest())
        .env("FORT_STATE_DIR", ws.state_dir())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sandbox_client.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    (
        last["destroyed"].as_str().unwrap().to_string(),
        last["expired"].as_str().unwrap().to_string(),
    )
}

/// Nothing of the sandboxes `ids` is left, and each one's history says why it went.
fn gone(
    ws: &Workspace,
    destroyed: &str,
    expired: &str,
    links: &std::collections::BTreeSet<String>,
) {
    let state = ws.state_dir();
    for id in [destroyed, expired] {
        let rows = ws.run(&["state", "list"]).ok().stdout.clone();
        assert!(!rows.contains(id), "{id} still in state:\n{rows}");
        assert!(!names(&state.join("drives")).iter().any(|n| n.contains(id)));
        assert!(!names(&state.join("sandboxes"))
            .iter()
            .any(|n| n.contains(id)));
        assert!(
            !fort_links().contains(&format!("fort-{id}")),
            "TAP of {id} left"
        );
    }
    assert_eq!(&fort_links(), links, "interfaces");
    assert!(leases(&state).is_empty(), "leases: {:?}", leases(&state));
    let vmms: Vec<u32> = processes_of(&state.join("run")).into_iter().collect();
    assert!(vmms.is_empty(), "processes left: {vmms:?}");
    let h = ws
        .run(&["history", &format!("vm.{destroyed}")])
        .ok()
        .stdout
        .clone();
    assert!(h.contains("destroyed: sandbox_destroy was called"), "{h}");
    let h = ws
        .run(&["history", &format!("vm.{expired}")])
        .ok()
        .stdout
        .clone();
    assert!(h.contains("expired: its ttl ran out at"), "{h}");
    // The host is converged: the plan is empty.
    ws.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn sandboxes_through_mcp_host_and_fort_serve_with_the_python_sdk() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let srv = Server::start();
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        manifest(&ws, &srv);
        ws.run(&["apply", "--yes"]).ok();
        let links = fort_links();
        let tables = fort_tables();

        // stdio: `fort mcp --host`, as `claude mcp add fort -- fort mcp --host` runs it.
        let (destroyed, expired) = client(&ws, &["stdio", FORT]);
        gone(&ws, &destroyed, &expired, &links);
        assert_eq!(fort_tables(), tables);

        // Streamable HTTP: `fort serve` on loopback with a bearer token.
        let token = ws.path().join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let mut serve = ws
            .command(&[
                "serve",
                "--listen",
                "tcp:127.0.0.1:0",
                "--token-file",
                token.to_str().unwrap(),
                "--interval",
                "2s",
            ])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(serve.stderr.take().unwrap());
        let addr = loop {
            let mut line = String::new();
            assert!(err.read_line(&mut line).unwrap() > 0, "fort serve exited");
            if let Some(a) = line.trim().strip_prefix("listening on tcp:") {
                break a.to_string();
            }
        };
        let log = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            rest
        });
        // No token, a wrong token: 401 and nothing done.
        for auth in ["", "Authorization: Bearer wrong\r\n"] {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sandbox_create","arguments":{"template":"ci"}}}"#;
            write!(s, "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        }
        assert!(
            !ws.state_dir().join("sandboxes").exists()
                || names(&ws.state_dir().join("sandboxes"))
                    .iter()
                    .all(|n| n.starts_with('.'))
        );
        let t0 = Instant::now();
        let (destroyed, expired) = client(
            &ws,
            &["http", &format!("http://{addr}/mcp"), "s3cret-token"],
        );
        eprintln!("http client: {:.1} s", t0.elapsed().as_secs_f64());
        gone(&ws, &destroyed, &expired, &links);
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(serve.id() as i32).unwrap(),
            rustix::process::Signal::Term,
        )
        .unwrap();
        let status = serve.wait().unwrap();
        let log = log.join().unwrap();
        assert!(status.success(), "fort serve: {status}\n{log}");
        // Every tool call is logged with its sandbox.
        assert!(
            log.contains(&format!("tool sandbox_destroy sandbox {destroyed}: ok")),
            "{log}"
        );
        assert!(
            log.contains(&format!("sandbox {expired}: expired: its ttl ran out")),
            "{log}"
        );
    });
}

//! Sandboxes' limits and lifecycle in real VMs (QEMU under TCG), through `fort mcp --host`:
//! max_instances and memory refusals, `fort plan`/`fort status` seeing instances as ordinary
//! resources, a hand-edited file held alone, the idle timeout, 20 create/destroy cycles
//! without a leak, and a `fort serve` killed with SIGKILL mid-create.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::fort::{Workspace, FORT};
use common::gitrepo::Repo;
use common::host_mcp::HostMcp;
use common::leaks::{fort_links, fort_tables, leases, names, processes_of};
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::server::Server;
use common::vms::{busybox_base, vmm, ConsoleOnFailure, ONE_AT_A_TIME};
use serde_json::{json, Value};

fn manifest(ws: &Workspace, srv: &Server) {
    let base = busybox_base(srv, "10.80.0.0/24");
    ws.write_manifest(&format!(
        r#"{base}[sandbox.ci]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "192MiB"
network = "lan"
max_instances = 2

[sandbox.idle]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "192MiB"
idle_timeout = "6s"

[kernel.junk]
url = "file://{junk}"

# Its VMM cannot start: creates fail, and say so.
[sandbox.bad]
vmm = "{vmm}"
kernel = "junk"
root = {{ template = "base", size = "256MiB" }}
memory = "192MiB"

[sandbox.big]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "64GiB"
"#,
        vmm = vmm(),
        junk = ws.path().join("junk-kernel").display(),
    ));
    std::fs::write(ws.path().join("junk-kernel"), "this is not a kernel\n").unwrap();
}

fn setup() -> (Server, Workspace, ConsoleOnFailure) {
    std::env::set_var("FORT_GUEST_AGENT", static_agent());
    let srv = Server::start();
    let ws = Workspace::new();
    let console = ConsoleOnFailure(ws.state_dir().join("run"));
    manifest(&ws, &srv);
    ws.run(&["apply", "--yes"]).ok();
    (srv, ws, console)
}

/// What a sandbox may leave on the host, to compare with before it was made.
#[derive(Debug, PartialEq)]
struct Host {
    links: BTreeSet<String>,
    tables: BTreeSet<String>,
    leases: Vec<String>,
    processes: BTreeSet<u32>,
    drives: BTreeSet<String>,
    sandbox_files: BTreeSet<String>,
    rows: String,
}

fn host(ws: &Workspace) -> Host {
    let state = ws.state_dir();
    Host {
        links: fort_links(),
        tables: fort_tables(),
        leases: leases(&state),
        processes: processes_of(&state.join("run")),
        drives: names(&state.join("drives")),
        sandbox_files: names(&state.join("sandboxes"))
            .into_iter()
            .filter(|n| n.ends_with(".toml"))
            .collect(),
        rows: ws.run(&["state", "list"]).ok().stdout.clone(),
    }
}

fn listed(m: &mut HostMcp) -> Vec<Value> {
    m.call("sandbox_list", json!({})).unwrap()["sandboxes"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn limits_plan_status_a_bad_file_and_the_idle_timeout() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    in_netns(|| {
        let (_srv, ws, _console) = setup();
        let before = host(&ws);
        let mut m = HostMcp::start(&ws);
        let (a, b) = (
            m.start_call("sandbox_create", json!({"template": "ci"})),
            m.start_call("sandbox_create", json!({"template": "ci"})),
        );
        let a = m.result(a).unwrap()["id"].as_str().unwrap().to_string();
        let b = m.result(b).unwrap()["id"].as_str().unwrap().to_string();
        assert_eq!(
            m.call("sandbox_create", json!({"template": "ci"}))
                .unwrap_err(),
            "sandbox.ci has 2 instances (max_instances = 2): destroy one first"
        );
        let big = m
            .call(
                "sandbox_create",
                json!({"template": "big", "name": "big-1"}),
            )
            .unwrap_err();
        assert!(
            big.starts_with(
                "no room on this host for sandbox big-1: vm.big-1: the manifest wants "
            ) && big.contains("of VM memory running on this host")
                && big.ends_with("it has in total"),
            "{big}"
        );
        assert!(!ws.state_dir().join("sandboxes/big-1.toml").exists());
        // A VM that does not start: the error, and nothing left of it.
        let bad = m
            .call(
                "sandbox_create",
                json!({"template": "bad", "name": "bad-1"}),
            )
            .unwrap_err();
        assert!(bad.starts_with("sandbox bad-1 did not start: "), "{bad}");
        assert!(!ws.state_dir().join("sandboxes/bad-1.toml").exists());
        let h = ws.run(&["history", "vm.bad-1"]).ok().stdout.clone();
        assert!(h.contains("create failed: "), "{h}");

        // The host sees them as ordinary resources, desired from their files.
        ws.run(&["plan", "--detailed-exitcode"]).code(0);
        let status = ws.run(&["status"]).ok().stdout.clone();
        for id in [&a, &b] {
            let line = status
                .lines()
                .find(|l| l.contains(&format!("vm.{id}")))
                .unwrap();
            assert!(
                line.contains("running") && line.contains("sandbox.ci expires in 59m"),
                "{line}"
            );
        }

        // A hand-edited file that does not validate: that sandbox is left as it is (not
        // destroyed, not changed), the others are unaffected; fixing the file ends it.
        let file = ws.state_dir().join(format!("sandboxes/{b}.toml"));
        let good = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, format!("{good}colour = \"red\"\n")).unwrap();
        let plan = ws.run(&["plan", "--detailed-exitcode"]);
        plan.code(0);
        let line = good.lines().count() + 1;
        let want = format!("{}:{line}:1: unknown field `colour`", file.display());
        let out = format!("{}{}", plan.stdout, plan.stderr);
        assert!(
            out.contains(&want) && out.contains("left as it is"),
            "{out}"
        );
        let err = m
            .call("run_command", json!({"sandbox": b, "argv": ["true"]}))
            .unwrap_err();
        assert!(
            err.starts_with(&format!("sandbox {b}'s file does not validate")),
            "{err}"
        );
        let ok = m
            .call("run_command", json!({"sandbox": a, "command": "echo fine"}))
            .unwrap();
        assert_eq!(ok["stdout"], "fine\n");
        assert!(
            processes_of(&ws.state_dir().join("run")).len() >= 4,
            "b's VM was stopped"
        );
        std::fs::write(&file, &good).unwrap();
        ws.run(&["plan", "--detailed-exitcode"]).code(0);
        m.call("run_command", json!({"sandbox": b, "argv": ["true"]}))
            .unwrap();

        // Idle: no request for idle_timeout (6s) and it is gone, with the reason.
        let made = Instant::now();
        m.call(
            "sandbox_create",
            json!({"template": "idle", "name": "idle-1"}),
        )
        .unwrap();
        while listed(&mut m).iter().any(|s| s["id"] == "idle-1") {
            assert!(
                made.elapsed() < Duration::from_secs(60),
                "idle-1 never expired"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let h = ws.run(&["history", "vm.idle-1"]).ok().stdout.clone();
        assert!(h.contains("expired: idle: no agent request for"), "{h}");

        m.call("sandbox_destroy", json!({"id": a})).unwrap();
        // `fort destroy` of a sandbox takes its file too: the next pass does not make it again.
        ws.run(&["destroy", "--yes", "--target", &format!("vm.{b}")])
            .ok();
        assert!(!ws.state_dir().join(format!("sandboxes/{b}.toml")).exists());
        assert!(listed(&mut m).is_empty(), "{:?}", listed(&mut m));
        assert_eq!(
            m.call("sandbox_destroy", json!({"id": a})).unwrap_err(),
            format!("no sandbox `{a}`: sandbox_list shows the sandboxes there are (it may have expired)")
        );
        m.close();
        assert_eq!(host(&ws), before);

        // With no loop running, an expired sandbox file is noted by `fort plan` and reaped by
        // `fort apply` before it plans: it is never made again.
        let file = ws.state_dir().join("sandboxes/old-1.toml");
        std::fs::write(
            &file,
            "[instance]\nsandbox = \"idle\"\ncreated = \"2026-01-01T00:00:00Z\"\nexpires = \"2026-01-01T01:00:00Z\"\n\n[vm.old-1]\nvmm = \"qemu\"\nkernel = \"deb\"\nroot = { template = \"base\", size = \"256MiB\" }\nmemory = \"192MiB\"\n",
        )
        .unwrap();
        let plan = ws.run(&["plan"]);
        let out = format!("{}{}", plan.stdout, plan.stderr);
        assert!(
            out.contains("vm.old-1: its sandbox expired; the next `fort apply`"),
            "{out}"
        );
        ws.run(&["apply", "--yes"]).ok();
        assert!(!file.exists());
        let h = ws.run(&["history", "vm.old-1"]).ok().stdout.clone();
        assert!(
            h.contains("expired: its ttl ran out at 2026-01-01T01:00:00Z"),
            "{h}"
        );
        assert_eq!(host(&ws), before);
    });
}

#[test]
fn twenty_create_destroy_cycles_leave_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    in_netns(|| {
        let (_srv, ws, _console) = setup();
        let before = host(&ws);
        let mut m = HostMcp::start(&ws);
        for i in 0..20 {
            let s = m.call("sandbox_create", json!({"template": "ci"})).unwrap();
            let id = s["id"].as_str().unwrap().to_string();
            let out = m
                .call(
                    "run_command",
                    json!({"sandbox": id, "command": format!("echo {i}")}),
                )
                .unwrap();
            assert_eq!(out["stdout"], format!("{i}\n"));
            m.call("sandbox_destroy", json!({"id": id})).unwrap();
        }
        m.close();
        assert_eq!(host(&ws), before);
        ws.run(&["plan", "--detailed-exitcode"]).code(0);
    });
}

/// One request to `fort serve` over its unix socket: (status line, headers, body).
fn http(sock: &Path, session: Option<&str>, body: &Value) -> (String, String, Value) {
    let mut s = UnixStream::connect(sock).unwrap();
    let body = body.to_string();
    let sid = session.map_or_else(String::new, |s| format!("Mcp-Session-Id: {s}\r\n"));
    write!(s, "POST /mcp HTTP/1.1\r\nHost: fort\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{sid}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, rest) = answer.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_string(),
        headers.to_string(),
        serde_json::from_str(rest).unwrap_or(Value::Null),
    )
}

fn serve(ws: &Workspace, sock: &Path) -> (std::process::Child, String) {
    let child = ws
        .command(&[
            "serve",
            "--listen",
            &format!("unix:{}", sock.display()),
            "--interval",
            "2s",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    // After a SIGKILL the old socket file is still there: wait for one that answers.
    while UnixStream::connect(sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "no socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, headers, _) = http(
        sock,
        None,
        &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}),
    );
    assert!(status.contains("200"), "{status}");
    let sid = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("mcp-session-id: ")
                .or_else(|| l.strip_prefix("Mcp-Session-Id: "))
        })
        .unwrap()
        .trim()
        .to_string();
    (child, sid)
}

fn tool(sock: &Path, sid: &str, name: &str, args: Value) -> Value {
    let (status, _, v) = http(
        sock,
        Some(sid),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args}}),
    );
    assert!(status.contains("200"), "{status}");
    v["result"].clone()
}

#[test]
fn kill_9_of_fort_serve_mid_create_and_an_expiry_during_the_downtime() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    in_netns(|| {
        let (_srv, ws, _console) = setup();
        let before = host(&ws);
        let sock = ws.path().join("fort.sock");
        let (mut child, sid) = serve(&ws, &sock);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let r = tool(
            &sock,
            &sid,
            "sandbox_create",
            json!({"template": "ci", "name": "short", "ttl": "12s"}),
        );
        assert_eq!(r["isError"], false, "{r}");
        // A create in flight: its file is written, then fort is killed.
        let (s2, id2) = (sock.clone(), sid.clone());
        let inflight = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&s2).unwrap();
            let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "sandbox_create", "arguments": {"template": "ci", "name": "mid"}}}).to_string();
            let _ = write!(s, "POST /mcp HTTP/1.1\r\nHost: fort\r\nContent-Type: application/json\r\nAccept: application/json\r\nMcp-Session-Id: {id2}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer
        });
        let mid = ws.state_dir().join("sandboxes/mid.toml");
        let t = Instant::now();
        while !mid.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "mid.toml never written"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(700));
        child.kill().unwrap();
        child.wait().unwrap();
        let answer = inflight.join().unwrap();
        assert!(!answer.contains("\"isError\":false"), "{answer}");
        // Down past `short`'s expiry.
        std::thread::sleep(Duration::from_secs(13));
        let (mut child, sid) = serve(&ws, &sock);
        let t = Instant::now();
        let list = loop {
            let l = tool(&sock, &sid, "sandbox_list", json!({}))["structuredContent"]["sandboxes"]
                .clone();
            let states: Vec<(String, String)> = l
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap().to_string(),
                        s["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            if states == [("mid".to_string(), "running".to_string())] {
                break states;
            }
            assert!(t.elapsed() < Duration::from_secs(90), "{states:?}");
            std::thread::sleep(Duration::from_millis(500));
        };
        eprintln!(
            "after the restart: {list:?} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let h = ws.run(&["history", "vm.short"]).ok().stdout.clone();
        assert!(h.contains("expired: its ttl ran out"), "{h}");
        // `mid` is whole: its agent answers.
        let r = tool(
            &sock,
            &sid,
            "run_command",
            json!({"sandbox": "mid", "command": "echo whole"}),
        );
        assert_eq!(r["structuredContent"]["stdout"], "whole\n", "{r}");
        let r = tool(&sock, &sid, "sandbox_destroy", json!({"id": "mid"}));
        assert_eq!(r["isError"], false, "{r}");
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::Term,
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
        assert!(!sock.exists(), "the socket file is removed on exit");
        assert_eq!(host(&ws), before);
    });
}

#[test]
fn a_host_following_git_keeps_its_sandboxes_and_reaps_them() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    in_netns(|| {
        let (_srv, ws, _console) = setup();
        let repo = Repo::new(&ws.path().join("git"));
        let text = std::fs::read_to_string(ws.manifest()).unwrap();
        repo.commit(&[("fort.toml", Some(&text))], "the fleet");
        // `--git` reads the manifest from the branch: no -f.
        let git_apply = || {
            let out = std::process::Command::new(FORT)
                .arg("--state-dir")
                .arg(ws.state_dir())
                .args(["apply", "--git", &repo.url(), "--yes"])
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            text
        };
        git_apply();
        let before = host(&ws);
        let mut m = HostMcp::start(&ws);
        let id = m
            .call("sandbox_create", json!({"template": "ci", "ttl": "10m"}))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        m.close();
        // A pass at the branch's commit keeps the sandbox: it is desired from its file.
        let out = git_apply();
        assert!(!out.contains(&format!("vm.{id}")), "{out}");
        let status = ws.run(&["status"]).ok().stdout.clone();
        let line = status
            .lines()
            .find(|l| l.contains(&format!("vm.{id}")))
            .unwrap();
        assert!(line.contains("running"), "{line}");
        // Expired while no loop ran: the next `fort apply --git` reaps it before planning.
        let file = ws.state_dir().join(format!("sandboxes/{id}.toml"));
        let t = std::fs::read_to_string(&file).unwrap();
        let t: String = t
            .lines()
            .map(|l| {
                if l.starts_with("expires") {
                    "expires = \"2026-01-01T00:00:00Z\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&file, t).unwrap();
        git_apply();
        assert!(!file.exists());
        let h = ws
            .run(&["history", &format!("vm.{id}")])
            .ok()
            .stdout
            .clone();
        assert!(
            h.contains("expired: its ttl ran out at 2026-01-01T00:00:00Z"),
            "{h}"
        );
        assert_eq!(host(&ws), before);
    });
}

//! Issue 15 in real VMs (QEMU under TCG): background processes through `fort mcp` outlive the
//! client that started them, `fort shell` runs on a guest PTY, and `fort port-forward` reaches
//! busybox httpd in a VM with a network and in one with none.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::fort::{sha256_hex, Workspace};
use common::netns::in_netns;
use common::pty::Pty;
use common::rootfs::static_agent;
use common::server::{Reply, Server};
use common::vms::{assets, kernel_file, vmm, ConsoleOnFailure, ONE_AT_A_TIME};
use serde_json::{json, Value};

fn manifest(ws: &Workspace, srv: &Server) {
    let dir = assets();
    let rootfs = std::fs::read(dir.join("rootfs.tar.gz")).unwrap();
    let sha = sha256_hex(&rootfs);
    srv.route("/rootfs.tar.gz", Reply::ok(rootfs));
    let vmm = vmm();
    ws.write_manifest(&format!(
        r#"[kernel.deb]
url = "file://{k}"
initrd = {{ url = "file://{i}" }}

[rootfs.bb]
url = "{url}/rootfs.tar.gz"
sha256 = "{sha}"

[template.base]
rootfs = "bb"
size = "128MiB"

[network.lan]
cidr = "10.78.0.0/24"
isolated = true

[vm.a]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "192MiB"
network = "lan"

# No network at all: only vsock reaches it.
[vm.n]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "192MiB"
"#,
        k = dir.join(kernel_file()).display(),
        i = dir.join("initrd.cpio.gz").display(),
        url = srv.url("").trim_end_matches('/'),
    ));
}

/// `fort mcp vm.NAME` as an MCP client sees it: JSON lines on its stdin and stdout.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next: i64,
}

impl Mcp {
    fn start(ws: &Workspace, vm: &str) -> Mcp {
        let mut child = ws
            .command(&["mcp", vm])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut m = Mcp {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            next: 1,
        };
        let init = m.request("initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "agent_vm", "version": "0"}}));
        assert_eq!(init["result"]["serverInfo"]["name"], "fort-guest-agent");
        writeln!(
            m.stdin,
            r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
        )
        .unwrap();
        m
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        writeln!(
            self.stdin,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        )
        .unwrap();
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "fort mcp closed"
            );
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }

    /// A tool's structured result; an error fails the test.
    fn call(&mut self, tool: &str, args: Value) -> Value {
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        assert_eq!(r["result"]["isError"], false, "{tool} {args}: {r}");
        r["result"]["structuredContent"].clone()
    }

    /// Output of process `id` from `cursor` until it ends (or `until` is in what was read).
    fn read(&mut self, id: u64, cursor: &mut u64, until: Option<&str>) -> (String, usize, Value) {
        let mut text = String::new();
        let mut chunks = 0;
        let t = Instant::now();
        loop {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "process {id}: {text}"
            );
            let o = self.call(
                "process_output",
                json!({"id": id, "cursor": *cursor, "wait_ms": 5000}),
            );
            for c in o["chunks"].as_array().unwrap() {
                text.push_str(c["data"].as_str().unwrap());
                chunks += 1;
            }
            *cursor = o["cursor"].as_u64().unwrap();
            if o["eof"] == true || until.is_some_and(|u| text.contains(u)) {
                return (text, chunks, o);
            }
        }
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exec(ws: &Workspace, vm: &str, cmd: &str) -> String {
    ws.run(&["exec", vm, "--", "sh", "-c", cmd])
        .ok()
        .stdout
        .clone()
}

/// `fort port-forward vm.NAME 0:80`, and the host port it chose.
fn forward(ws: &Workspace, vm: &str) -> (Child, u16) {
    let mut child = ws
        .command(&["port-forward", vm, "0:80"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // "Forwarding from 127.0.0.1:PORT -> vm.NAME:80"
    let want = format!(" -> {vm}:80\n");
    assert!(
        line.starts_with("Forwarding from 127.0.0.1:") && line.ends_with(&want),
        "{line:?}"
    );
    let port = line["Forwarding from 127.0.0.1:".len()..line.len() - want.len()]
        .parse()
        .unwrap();
    // Keep reading so fort never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    (child, port)
}

fn curl(port: u16, path: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "120"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn processes_shell_and_port_forwarding_in_real_vms() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let srv = Server::start();
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        manifest(&ws, &srv);
        ws.run(&["apply", "--yes"]).ok();
        for vm in ["vm.a", "vm.n"] {
            // The rootfs links a few applets only; httpd, seq, tty, stty come from busybox.
            exec(&ws, vm, "busybox --install -s /bin");
        }

        // Background processes outlive the client: read some output, disconnect, reconnect.
        let mut m = Mcp::start(&ws, "vm.n");
        let started = m.call(
            "process_start",
            json!({"command": "for i in $(seq 5); do echo $i; sleep 1; done"}),
        );
        let id = started["id"].as_u64().unwrap();
        let mut cursor = 0;
        let (first, first_chunks, _) = m.read(id, &mut cursor, Some("2\n"));
        assert!(first.starts_with("1\n"), "{first:?}");
        drop(m);
        let mut m = Mcp::start(&ws, "vm.n");
        let list = m.call("process_list", json!({}));
        let entry = list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("process {id} not listed: {list}"))
            .clone();
        assert_eq!(
            entry["argv"],
            json!([
                "/bin/sh",
                "-c",
                "for i in $(seq 5); do echo $i; sleep 1; done"
            ])
        );
        let (rest, rest_chunks, end) = m.read(id, &mut cursor, None);
        assert_eq!(format!("{first}{rest}"), "1\n2\n3\n4\n5\n");
        assert!(
            first_chunks + rest_chunks >= 3,
            "{first_chunks} + {rest_chunks} chunks"
        );
        assert_eq!(end["exit"]["exit_code"], 0, "{end}");

        // TERM ends a sleep with signal 15; stdin reaches cat and its EOF ends it.
        let sleep = m.call("process_start", json!({"argv": ["sleep", "1000"]}))["id"]
            .as_u64()
            .unwrap();
        m.call("process_signal", json!({"id": sleep, "signal": "TERM"}));
        let (_, _, end) = m.read(sleep, &mut 0, None);
        assert_eq!(end["exit"]["signal"], 15, "{end}");
        let cat = m.call("process_start", json!({"argv": ["cat"]}))["id"]
            .as_u64()
            .unwrap();
        m.call(
            "process_input",
            json!({"id": cat, "data": "through the VM\n", "close": true}),
        );
        let (out, _, end) = m.read(cat, &mut 0, None);
        assert_eq!(out, "through the VM\n");
        assert_eq!(end["exit"]["exit_code"], 0, "{end}");

        // fort shell on a guest PTY: size, resize, Ctrl-C, exit status, the terminal restored.
        let mut pty = Pty::open(30, 100);
        let before = pty.mode();
        let (manifest, state) = (
            ws.manifest().display().to_string(),
            ws.state_dir().display().to_string(),
        );
        let mut shell = pty.spawn(&["-f", &manifest, "--state-dir", &state, "shell", "vm.n"]);
        pty.wait_ready();
        let out = pty.run("tty", 1);
        assert!(
            out.lines().any(|l| l.starts_with("/dev/pts/")),
            "no /dev/pts path in {out:?}"
        );
        assert!(pty.run("stty size", 2).contains("\r\n30 100\r\n"));
        pty.resize(40, 120);
        let mut n = 10;
        while !pty.run("stty size", n).contains("\r\n40 120\r\n") {
            assert!(n < 60, "the new size never reached the guest");
            n += 2;
        }
        // (The only sleep in vm.n now.) ^C must find sleep in the foreground: typed while the shell's line editor still
        // holds the terminal, it would be read as a character instead of raising SIGINT.
        pty.send(b"sleep 100\r");
        let sleeping = |ws: &Workspace| ws.run(&["exec", "vm.n", "--", "pidof", "sleep"]).code == 0;
        let t = Instant::now();
        while !sleeping(&ws) {
            assert!(t.elapsed() < Duration::from_secs(60), "sleep 100 never ran");
        }
        pty.send(b"\x03");
        // The shell answers within PATIENCE (30 s), well before the 100 s are up.
        assert!(pty
            .run("echo still here", 100)
            .contains("\r\nstill here\r\n"));
        pty.send(b"exit 3\r");
        assert_eq!(shell.wait().unwrap().code(), Some(3));
        assert_eq!(pty.mode(), before, "the terminal's mode was not restored");

        // Port forwarding to busybox httpd, with a network (vm.a) and without (vm.n).
        for vm in ["vm.a", "vm.n"] {
            let sum = exec(
                &ws,
                vm,
                &format!(
                    "mkdir -p /www && echo 'hello from {vm}' > /www/index.html && \
                     dd if=/dev/urandom of=/www/big bs=1M count=50 2>/dev/null && \
                     sha256sum /www/big"
                ),
            );
            let sum = sum.split_whitespace().next().unwrap().to_string();
            let mut m = Mcp::start(&ws, vm);
            let httpd = m.call(
                "process_start",
                json!({"argv": ["httpd", "-f", "-p", "80", "-h", "/www"]}),
            )["id"]
                .as_u64()
                .unwrap();
            let t = Instant::now();
            while m.call("port_check", json!({"port": 80}))["connectable"] != true {
                assert!(t.elapsed() < Duration::from_secs(30), "httpd did not start");
                std::thread::sleep(Duration::from_millis(200));
            }
            let (mut pf, port) = forward(&ws, vm);
            let bodies: Vec<Vec<u8>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..20).map(|_| s.spawn(|| curl(port, "/"))).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for b in &bodies {
                assert_eq!(String::from_utf8_lossy(b), format!("hello from {vm}\n"));
            }
            // busybox httpd's 404 has no Content-Length: its end is the server's close,
            // which must reach curl through the vsock (the backends pass no half-close).
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "60",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .arg(format!("http://127.0.0.1:{port}/missing"))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "404",
                "{vm}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let big = curl(port, "/big");
            assert_eq!(big.len(), 50 << 20);
            assert_eq!(sha256_hex(&big), sum, "{vm}: the 50 MiB download differs");
            pf.kill().unwrap();
            pf.wait().unwrap();
            m.call("process_signal", json!({"id": httpd}));
        }

        ws.run(&["destroy", "--yes"]).ok();
    });
}

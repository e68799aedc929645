//! `fort port-forward` against a real guest agent on a unix socket, with loopback TCP servers
//! in the test playing the guest's: bodies, concurrency, half-close, refused ports, ports in
//! use; and `fort/tunnel` spoken to the agent directly.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "port_forward/spec.rs"]
mod spec;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::fort::{sha256_hex, AgentProcess, FORT};
use common::server::{Reply, Server};
use serde_json::{json, Value};

/// A running `fort port-forward`: its printed forwards, its stderr in a file, killed on drop.
struct Forward {
    child: Child,
    /// `Forwarding from …` lines as printed.
    lines: Vec<String>,
    /// The host port of each forward, in SPEC order.
    ports: Vec<u16>,
    stderr: PathBuf,
    _stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Forward {
    fn start(agent: &AgentProcess, args: &[&str]) -> Forward {
        Forward::at(&agent.endpoint(), args)
    }

    /// `fort port-forward --connect ENDPOINT ARGS…`, once it printed its forwards.
    fn at(endpoint: &str, args: &[&str]) -> Forward {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr");
        let mut child = Command::new(FORT)
            .args(["port-forward", "--connect", endpoint])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let specs = args.iter().filter(|a| a.contains(':')).count();
        let mut lines = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..specs {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            assert!(
                l.starts_with("Forwarding from "),
                "{l:?}; stderr: {}",
                std::fs::read_to_string(&stderr).unwrap()
            );
            let local = l["Forwarding from ".len()..].split(' ').next().unwrap();
            ports.push(local.rsplit(':').next().unwrap().parse().unwrap());
            lines.push(l.trim_end().to_string());
        }
        Forward {
            child,
            lines,
            ports,
            stderr,
            _stdout: out,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }

    /// Wait until fort has written `n` lines on stderr (it writes one per failed connection).
    fn stderr_lines(&self, n: usize) -> String {
        let t = Instant::now();
        loop {
            let s = self.stderr();
            if s.lines().count() >= n || t.elapsed() > Duration::from_secs(30) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(port: u16, path: &str) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--noproxy", "*", "--max-time", "120"])
        .arg(format!("http://127.0.0.1:{port}{path}"));
    c
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A one-connection server that reads to EOF, then answers `got N bytes: DATA` and closes.
fn read_all_then_answer() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        let answer = format!("got {} bytes: {}", got.len(), String::from_utf8_lossy(&got));
        c.write_all(answer.as_bytes()).unwrap();
    });
    (port, t)
}

#[test]
fn twenty_concurrent_curls_each_get_their_body() {
    let agent = AgentProcess::start();
    let server = Server::start();
    for i in 0..20 {
        server.route(
            &format!("/f{i}"),
            Reply::ok(format!("body {i}\n").repeat(1000)),
        );
    }
    let spec = format!("0:{}", server.url("").rsplit(':').next().unwrap());
    let fwd = Forward::start(&agent, &["vm.a", &spec]);
    let port = fwd.ports[0];
    let children: Vec<_> = (0..20)
        .map(|i| {
            curl(port, &format!("/f{i}"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "curl {i}: {out:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("body {i}\n").repeat(1000)
        );
    }
    assert_eq!(server.total_hits(), 20);
    assert_eq!(fwd.stderr(), "");
}

#[test]
fn a_50_mib_download_has_the_right_sha256() {
    let agent = AgentProcess::start();
    let server = Server::start();
    let body: Vec<u8> = (0..50u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let want = sha256_hex(&body);
    server.route("/big", Reply::ok(body));
    let spec = format!("0:{}", server.url("").rsplit(':').next().unwrap());
    let fwd = Forward::start(&agent, &[&spec]);
    let out = curl(fwd.ports[0], "/big").output().unwrap();
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 50 << 20);
    assert_eq!(sha256_hex(&out.stdout), want);
}

#[test]
fn a_half_close_reaches_the_guest_server_and_its_answer_comes_back() {
    let agent = AgentProcess::start();
    let (port, server) = read_all_then_answer();
    let fwd = Forward::start(&agent, &[&format!("0:{port}")]);
    let mut c = TcpStream::connect(("127.0.0.1", fwd.ports[0])).unwrap();
    c.write_all(b"a request without a length").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "got 26 bytes: a request without a length");
    server.join().unwrap();
}

#[test]
fn an_agent_on_tcp_forwards_and_half_closes_too() {
    // Both relays splice TCP to TCP here (fort's tunnel and the agent's connection).
    let ep_port = free_port();
    // fort's start-up check retries until the agent listens.
    let mut agent = Command::new(common::fort::agent_binary())
        .args(["--listen", &format!("tcp:127.0.0.1:{ep_port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (port, server) = read_all_then_answer();
    let fwd = Forward::at(&format!("tcp:127.0.0.1:{ep_port}"), &[&format!("0:{port}")]);
    let mut c = TcpStream::connect(("127.0.0.1", fwd.ports[0])).unwrap();
    c.write_all(b"over tcp").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "got 8 bytes: over tcp");
    server.join().unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn a_refused_guest_port_closes_the_connection_says_why_and_the_forward_goes_on() {
    let agent = AgentProcess::start();
    let closed = free_port();
    let server = Server::start();
    server.route("/", Reply::ok("still here\n"));
    let live = server.url("").rsplit(':').next().unwrap().to_string();
    let fwd = Forward::start(
        &agent,
        &["vm.a", &format!("0:{closed}"), &format!("0:{live}")],
    );
    let want = format!(
        "fort: vm.a: 127.0.0.1:{closed} in the guest refused the connection (nothing listens there? try the port_check tool)\n"
    );
    for n in 1..=2 {
        let mut c = TcpStream::connect(("127.0.0.1", fwd.ports[0])).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut got = Vec::new();
        // Closed with a FIN (an empty reply), not a reset: the request was read and dropped.
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"");
        assert_eq!(fwd.stderr_lines(n), want.repeat(n));
        let out = curl(fwd.ports[1], "/").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
    }
    // curl's view of it: an empty reply.
    let out = curl(fwd.ports[0], "/").output().unwrap();
    assert_eq!(out.status.code(), Some(52));
    assert_eq!(fwd.stderr_lines(3), want.repeat(3));
}

#[test]
fn a_host_port_in_use_is_named_and_fort_exits_1() {
    let agent = AgentProcess::start();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let free = free_port();
    let out = Command::new(FORT)
        .args(["port-forward", "--connect", &agent.endpoint()])
        .args([format!("{free}:80"), format!("{port}:80")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: cannot listen on 127.0.0.1:{port} (for {port}:80): address already in use\n"
        )
    );
    // The forward bound before the failure was let go with it.
    TcpListener::bind(("127.0.0.1", free)).unwrap();
}

#[test]
fn several_specs_forms_and_address() {
    let agent = AgentProcess::start();
    let servers: Vec<Server> = (0..3).map(|_| Server::start()).collect();
    let ports: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.route("/", Reply::ok(format!("server {i}\n")));
            s.url("").rsplit(':').next().unwrap().to_string()
        })
        .collect();
    let specs = [
        format!("0:{}", ports[0]),
        format!("127.0.0.1:0:{}", ports[1]),
        format!("0:127.0.0.1:{}", ports[2]),
    ];
    let mut args = vec!["vm.web", "--address", "localhost"];
    args.extend(specs.iter().map(String::as_str));
    let fwd = Forward::start(&agent, &args);
    assert_eq!(
        fwd.lines,
        [
            format!(
                "Forwarding from 127.0.0.1:{} -> vm.web:{}",
                fwd.ports[0], ports[0]
            ),
            format!(
                "Forwarding from 127.0.0.1:{} -> vm.web:{}",
                fwd.ports[1], ports[1]
            ),
            format!(
                "Forwarding from 127.0.0.1:{} -> vm.web:127.0.0.1:{}",
                fwd.ports[2], ports[2]
            ),
        ]
    );
    for (i, p) in fwd.ports.iter().enumerate() {
        let out = curl(*p, "/").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("server {i}\n")
        );
    }
}

#[test]
fn sigterm_ends_the_forward_with_exit_0() {
    let agent = AgentProcess::start();
    let mut fwd = Forward::start(&agent, &["0:80"]);
    let pid = libc::pid_t::try_from(fwd.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(fwd.child.wait().unwrap().code(), Some(0));
}

#[test]
fn an_unreachable_agent_fails_before_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("unix:{}", dir.path().join("none.sock").display());
    let out = Command::new(FORT)
        .args([
            "port-forward",
            "--connect",
            &ep,
            "--connect-timeout",
            "300ms",
            "0:80",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(&format!(
            "error: cannot reach the guest agent at {ep} within 300ms: No such file or directory"
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(FORT)
        .args(["port-forward", "8080:80"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: name a VM first (fort port-forward vm.NAME SPEC…) or give --connect ENDPOINT\n"
    );
}

// ---- fort/tunnel spoken to the agent directly ----

fn tunnel(agent: &AgentProcess, first: &[u8]) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(first).unwrap();
    (BufReader::new(s), w)
}

fn reply(r: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn tunnel_bytes_pipelined_after_the_request_line_arrive() {
    let agent = AgentProcess::start();
    let (port, server) = read_all_then_answer();
    let first = format!(
        "{}\nsent with the request",
        json!({"jsonrpc": "2.0", "id": 7, "method": "fort/tunnel", "params": {"port": port}})
    );
    let (mut r, mut w) = tunnel(&agent, first.as_bytes());
    w.write_all(b", and after").unwrap();
    w.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        reply(&mut r),
        json!({"jsonrpc": "2.0", "id": 7, "result": {"connected": true}})
    );
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got 32 bytes: sent with the request, and after");
    server.join().unwrap();
}

#[test]
fn tunnel_errors_are_exact_and_close_the_connection() {
    let agent = AgentProcess::start();
    let closed = free_port();
    let cases = [
        (
            json!({"port": closed}),
            json!({"code": -32010, "message": format!("cannot connect to 127.0.0.1:{closed} in the guest: connection refused"), "data": {"reason": "refused"}}),
        ),
        (
            json!({"port": closed, "host": "::1"}),
            json!({"code": -32010, "message": format!("cannot connect to [::1]:{closed} in the guest: connection refused"), "data": {"reason": "refused"}}),
        ),
        (
            json!({"port": 0}),
            json!({"code": -32602, "message": "invalid params: fort/tunnel: port 0 is not a port (1-65535)"}),
        ),
        (
            json!({"port": 80, "host": "db"}),
            json!({"code": -32602, "message": "invalid params: fort/tunnel: host `db` is not an IP address"}),
        ),
        (
            json!({"port": 80, "hots": "x"}),
            json!({"code": -32602, "message": "invalid params: fort/tunnel takes {\"port\": 1-65535, \"host\": IP}: unknown field `hots`, expected `port` or `host`"}),
        ),
    ];
    for (params, want) in cases {
        let line = json!({"jsonrpc": "2.0", "id": "t", "method": "fort/tunnel", "params": params});
        let (mut r, _w) = tunnel(&agent, format!("{line}\n").as_bytes());
        assert_eq!(
            reply(&mut r),
            json!({"jsonrpc": "2.0", "id": "t", "error": want}),
            "{params}"
        );
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"", "{params}");
    }
}

#[test]
fn tunnel_later_on_an_mcp_connection_is_refused_and_the_session_goes_on() {
    let agent = AgentProcess::start();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let t = json!({"jsonrpc": "2.0", "id": 2, "method": "fort/tunnel", "params": {"port": 80}});
    let ping2 = json!({"jsonrpc": "2.0", "id": 3, "method": "ping"});
    let (mut r, _w) = tunnel(&agent, format!("{ping}\n{t}\n{ping2}\n").as_bytes());
    assert_eq!(
        reply(&mut r),
        json!({"jsonrpc": "2.0", "id": 1, "result": {}})
    );
    assert_eq!(
        reply(&mut r),
        json!({"jsonrpc": "2.0", "id": 2, "error": {"code": -32600, "message": "invalid request: fort/tunnel must be the first request on a new connection"}})
    );
    assert_eq!(
        reply(&mut r),
        json!({"jsonrpc": "2.0", "id": 3, "result": {}})
    );
}

//! `fort exec`, `fort cp` and `fort mcp` against a real guest agent on a unix socket.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::fort::{AgentProcess, Run, FORT};

fn fort(args: &[&str]) -> Run {
    Run::from(
        Command::new(FORT)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

#[test]
fn exec_propagates_output_and_exit_code() {
    let agent = AgentProcess::start();
    let ep = agent.endpoint();
    let r = fort(&[
        "exec",
        "--connect",
        &ep,
        "--env",
        "WHO=fort",
        "--",
        "sh",
        "-c",
        "echo hi $WHO; echo oops >&2; exit 7",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (7, "hi fort\n", "oops\n")
    );
    let r = fort(&[
        "exec",
        "--connect",
        &ep,
        "--timeout",
        "0.5",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(r.code, 124, "{r:?}");
    assert!(r.stderr.contains("timed out after 0.5s"), "{}", r.stderr);
    let r = fort(&["exec", "--connect", &ep, "--", "/no/such/thing"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: cannot run `/no/such/thing`: No such file or directory (os error 2)\n"
    );
    let r = fort(&["exec", "--", "true"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("name a VM (vm.NAME) or give --connect ENDPOINT"),
        "{}",
        r.stderr
    );
}

#[test]
fn exec_on_an_unreachable_agent_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let ep = format!("unix:{}", sock.display());
    let r = fort(&[
        "exec",
        "--connect",
        &ep,
        "--connect-timeout",
        "300ms",
        "--",
        "true",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with(&format!(
            "error: cannot reach the guest agent at {ep} within 300ms: No such file or directory"
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn cp_round_trips_a_file_bigger_than_one_chunk() {
    let agent = AgentProcess::start();
    let ep = agent.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let data: Vec<u8> = (0..9 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let remote = dir.path().join("in-vm.bin");
    let r = fort(&[
        "cp",
        "--connect",
        &ep,
        src.to_str().unwrap(),
        &format!(":{}", remote.display()),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read(&remote).unwrap(), data);
    let back = dir.path().join("back.bin");
    let r = fort(&[
        "cp",
        "--connect",
        &ep,
        &format!(":{}", remote.display()),
        back.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let r = fort(&["cp", "--connect", &ep, "a", "b"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "error: exactly one of SRC and DST must be in a VM (vm.NAME:/path, or :/path with --connect)\n");
}

#[test]
fn mcp_relays_stdio_to_the_agent() {
    let agent = AgentProcess::start();
    let mut child = Command::new(FORT)
        .args(["mcp", "--connect", &agent.endpoint()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            concat!(
                r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#,
                "\n",
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                "\n",
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run_command","arguments":{"argv":["echo","relayed"]}}}"#,
                "\n"
            )
            .as_bytes(),
        )
        .unwrap();
    // Wait for both answers before closing stdin (closing ends the session).
    let mut out = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.iter().filter(|&&b| b == b'\n').count() < 2 {
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(
            n > 0,
            "fort mcp closed early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let lines: Vec<serde_json::Value> = String::from_utf8(got)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["result"]["serverInfo"]["name"], "fort-guest-agent");
    assert_eq!(
        lines[1]["result"]["structuredContent"]["stdout"],
        "relayed\n"
    );
}

#[test]
fn the_official_python_sdk_talks_to_the_agent_through_fort_mcp() {
    let agent = AgentProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/mcp_client.py");
    let out = Command::new("python3")
        .args([
            script,
            FORT,
            &agent.endpoint(),
            dir.path().to_str().unwrap(),
        ])
        .output()
        .expect("python3 is needed (.ci/run installs it and the `mcp` package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the MCP SDK client failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout,
        "initialized: fort-guest-agent protocol 2025-11-25\n\
         tools: run_command,file_read,file_write,file_delete,list_dir,stat,process_start,process_output,process_input,process_signal,process_resize,process_list,port_check,shutdown\n\
         run_command stdout: hello from the agent\n\
         process_output: ['one', 'two'] exit code 0\n\
         file_read: read me\n\
         ok\n"
    );
}

#[test]
fn exec_streams_output_while_the_command_runs() {
    let agent = AgentProcess::start();
    let mut child = Command::new(FORT)
        .args([
            "exec",
            "--connect",
            &agent.endpoint(),
            "--",
            "sh",
            "-c",
            "echo first; sleep 3; echo second",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let t = std::time::Instant::now();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "first\n");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "the first line waited for the command to end"
    );
    assert!(child.try_wait().unwrap().is_none());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "second\n");
    assert!(child.wait().unwrap().success());
}

/// A stand-in for Firecracker's hybrid vsock socket: reads `CONNECT 52\n`, answers `OK <n>\n`
/// and then splices the connection to the agent (as vhost-device-vsock does for QEMU VMs).
fn hybrid_vsock_proxy(
    agent_socket: std::path::PathBuf,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    use std::os::unix::net::{UnixListener, UnixStream};
    let path = dir.join("vsock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut host) = conn else { continue };
            let agent_socket = agent_socket.clone();
            std::thread::spawn(move || {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while std::io::Read::read(&mut host, &mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                if line != b"CONNECT 52" {
                    return; // Firecracker just closes on a bad handshake
                }
                let guest = UnixStream::connect(&agent_socket).unwrap();
                host.write_all(b"OK 1073741824\n").unwrap();
                let (mut h2, mut g2) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
                let (mut host, mut guest) = (host, guest);
                std::thread::spawn(move || std::io::copy(&mut h2, &mut g2));
                let _ = std::io::copy(&mut guest, &mut host);
                let _ = host.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    path
}

#[test]
fn exec_through_a_hybrid_vsock_socket() {
    let agent = AgentProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let vsock = hybrid_vsock_proxy(agent.socket.clone(), dir.path());
    let r = fort(&[
        "exec",
        "--connect",
        &format!("vsock-uds:{}", vsock.display()),
        "--",
        "echo",
        "via vsock",
    ]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "via vsock\n"), "{r:?}");
}

#[test]
fn exec_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let mut child = Command::new(common::fort::agent_binary())
        .args(["--listen", "tcp:127.0.0.1:0"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(a) = text
            .lines()
            .find_map(|l| l.strip_prefix("fort-guest-agent: listening on tcp:"))
        {
            break a.to_string();
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "no listening line: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let r = fort(&[
        "exec",
        "--connect",
        &format!("tcp:{addr}"),
        "--",
        "echo",
        "via tcp",
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((r.code, r.stdout.as_str()), (0, "via tcp\n"), "{r:?}");
    // Non-loopback addresses need an explicit opt-in.
    let out = Command::new(common::fort::agent_binary())
        .args(["--listen", "tcp:0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "fort-guest-agent: 0.0.0.0:0 is not a loopback address; pass --allow-remote to serve it anyway\n"
    );
}

//! The guest agent as a normal process on a unix socket: protocol, tools, and bad input —
//! each asserted exactly, and the agent must survive all of it.

#![allow(clippy::unwrap_used)]

#[path = "common/agent_conn.rs"]
mod agent_conn;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_conn::Agent;
use serde_json::{json, Value};

fn err(r: &Value) -> (i64, String) {
    (
        r["error"]["code"].as_i64().unwrap(),
        r["error"]["message"].as_str().unwrap().to_string(),
    )
}

fn tool_error(r: &Value) -> String {
    assert_eq!(r["result"]["isError"], true, "{r}");
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn protocol_errors_are_exact_and_the_connection_survives() {
    let mut agent = Agent::start();
    let mut c = agent.connect();
    c.send_raw(b"{not json");
    let r = c.recv();
    assert_eq!(r["id"], Value::Null);
    assert_eq!(err(&r).0, -32700);
    assert!(err(&r).1.starts_with("parse error: "), "{r}");

    c.send_raw(b"[1,2]");
    assert_eq!(
        err(&c.recv()),
        (
            -32600,
            "invalid request: expected a JSON object (batches are not supported)".into()
        )
    );
    c.send_raw(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#);
    assert_eq!(
        err(&c.recv()),
        (
            -32600,
            "invalid request: \"jsonrpc\" must be \"2.0\"".into()
        )
    );

    // Before initialize: ping works, everything else is refused.
    assert_eq!(c.request("ping", json!({}))["result"], json!({}));
    assert_eq!(
        err(&c.request("tools/list", json!({}))),
        (
            -32002,
            "not initialized: send \"initialize\" before \"tools/list\"".into()
        )
    );

    // Version negotiation: an unknown revision gets ours.
    let init = c.request("initialize", json!({"protocolVersion": "1999-01-01", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}));
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(init["result"]["serverInfo"]["name"], "fort-guest-agent");
    assert_eq!(
        init["result"]["capabilities"]["tools"],
        json!({"listChanged": false})
    );

    assert_eq!(
        err(&c.request("resources/list", json!({}))),
        (-32601, "method not found: resources/list".into())
    );
    assert_eq!(
        err(&c.call("format_disk", json!({}))),
        (
            -32602,
            "invalid params: unknown tool \"format_disk\"".into()
        )
    );
    assert_eq!(
        err(&c.call("file_read", json!({"path": 7}))),
        (
            -32602,
            "invalid params: invalid type: integer `7`, expected a string".into()
        )
    );
    assert_eq!(err(&c.call("file_read", json!({"paht": "/x"}))), (-32602, "invalid params: unknown field `paht`, expected one of `path`, `offset`, `length`, `encoding`".into()));
    assert_eq!(
        err(&c.call("run_command", json!({}))),
        (
            -32602,
            "invalid params: give exactly one of `argv` (non-empty) or `command`".into()
        )
    );

    // A 10 MiB line is rejected; the connection goes on.
    let mut big = br#"{"jsonrpc":"2.0","id":99,"method":"ping","params":{"pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 10 << 20));
    big.extend_from_slice(br#""}}"#);
    c.send_raw(&big);
    assert_eq!(
        err(&c.recv()),
        (
            -32600,
            "request too large: lines are limited to 8 MiB".into()
        )
    );
    assert_eq!(c.request("ping", json!({}))["result"], json!({}));
    assert!(agent.alive());
}

#[test]
fn tools_list_has_schemas() {
    let agent = Agent::start();
    let mut c = agent.session();
    let tools = c.request("tools/list", json!({}))["result"]["tools"].clone();
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "run_command",
            "file_read",
            "file_write",
            "file_delete",
            "list_dir",
            "stat",
            "process_start",
            "process_output",
            "process_input",
            "process_signal",
            "process_resize",
            "process_list",
            "port_check",
            "shutdown"
        ]
    );
    for t in tools.as_array().unwrap() {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(t["description"].as_str().unwrap().len() > 20);
    }
}

#[test]
fn file_tools() {
    let agent = Agent::start();
    let mut c = agent.session();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();

    assert_eq!(
        tool_error(&c.call("file_read", json!({"path": format!("{d}/missing")}))),
        format!("cannot read {d}/missing: no such file or directory")
    );
    assert_eq!(
        tool_error(&c.call("file_read", json!({"path": d}))),
        format!("cannot read {d}: it is a directory (use list_dir)")
    );
    std::fs::write(dir.path().join("bin"), [b'o', b'k', 0xff, 0xfe]).unwrap();
    assert_eq!(
        tool_error(&c.call("file_read", json!({"path": format!("{d}/bin")}))),
        format!("{d}/bin is not valid UTF-8 (at byte 2): read it with encoding = \"base64\"")
    );
    let b = c.call(
        "file_read",
        json!({"path": format!("{d}/bin"), "encoding": "base64"}),
    );
    assert_eq!(b["result"]["structuredContent"]["content"], "b2v//g==");

    assert_eq!(
        tool_error(&c.call("file_write", json!({"path": format!("{d}/a/b/c.txt"), "content": "x"}))),
        format!("cannot write {d}/a/b/c.txt: directory {d}/a/b does not exist (set create_parents = true)")
    );
    let w = c.call("file_write", json!({"path": format!("{d}/a/b/c.txt"), "content": "hello\n", "create_parents": true, "mode": "0600"}));
    assert_eq!(w["result"]["structuredContent"]["bytes_written"], 6, "{w}");
    c.call(
        "file_write",
        json!({"path": format!("{d}/a/b/c.txt"), "content": "world\n", "append": true}),
    );
    let r = c.call(
        "file_read",
        json!({"path": format!("{d}/a/b/c.txt"), "offset": 6}),
    );
    assert_eq!(r["result"]["content"][0]["text"], "world\n");
    assert_eq!(r["result"]["structuredContent"]["size"], 12);
    assert_eq!(r["result"]["structuredContent"]["eof"], true);
    let s = c.call("stat", json!({"path": format!("{d}/a/b/c.txt")}));
    assert_eq!(s["result"]["structuredContent"]["mode"], "0600");
    assert_eq!(s["result"]["structuredContent"]["type"], "file");
    let l = c.call("list_dir", json!({"path": format!("{d}/a")}));
    assert_eq!(l["result"]["structuredContent"]["entries"][0]["name"], "b");
    assert_eq!(
        l["result"]["structuredContent"]["entries"][0]["type"],
        "directory"
    );

    assert_eq!(
        tool_error(&c.call("file_delete", json!({"path": format!("{d}/a")}))),
        format!("cannot delete {d}/a: directory is not empty (set recursive = true)")
    );
    c.call(
        "file_delete",
        json!({"path": format!("{d}/a"), "recursive": true}),
    );
    assert!(!dir.path().join("a").exists());
    assert_eq!(
        err(&c.call(
            "file_write",
            json!({"path": "/x", "content": "%%%", "encoding": "base64"})
        ))
        .0,
        -32602
    );
}

#[test]
fn commands_exit_codes_stdin_env_and_cwd() {
    let agent = Agent::start();
    let mut c = agent.session();
    let r = c.call("run_command", json!({"command": "echo \"$FOO\" $(pwd); cat; echo err >&2; exit 3", "env": {"FOO": "bar"}, "cwd": "/tmp", "stdin": "piped\n"}));
    let s = &r["result"]["structuredContent"];
    assert_eq!(s["exit_code"], 3, "{r}");
    assert_eq!(s["stdout"], "bar /tmp\npiped\n");
    assert_eq!(s["stderr"], "err\n");
    assert_eq!(s["timed_out"], false);
    let r = c.call("run_command", json!({"argv": ["/no/such/program"]}));
    assert_eq!(
        tool_error(&r),
        "cannot run `/no/such/program`: No such file or directory (os error 2)"
    );
    let r = c.call("run_command", json!({"command": "kill -9 $$"}));
    assert_eq!(r["result"]["structuredContent"]["signal"], 9);
}

#[test]
fn a_command_that_never_ends_is_killed_with_its_children() {
    let agent = Agent::start();
    let mut c = agent.session();
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let t = Instant::now();
    let r = c.call("run_command", json!({"command": format!("sleep 1000 & echo $! > {}; wait", pidfile.path().display()), "timeout_secs": 1}));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(r["result"]["structuredContent"]["timed_out"], true, "{r}");
    let pid: i32 = std::fs::read_to_string(pidfile.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let gone = !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(gone, "the background child {pid} survived the timeout");
}

#[test]
fn huge_output_is_capped_and_memory_stays_bounded() {
    let mut agent = Agent::start();
    let mut c = agent.session();
    let r = c.call(
        "run_command",
        json!({"command": "head -c 104857600 /dev/zero | tr '\\0' x"}),
    );
    let s = &r["result"]["structuredContent"];
    assert_eq!(s["stdout_truncated"], true);
    assert_eq!(s["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(s["exit_code"], 0);
    let rss = agent.rss_kib();
    assert!(
        rss < 64 * 1024,
        "agent RSS {rss} KiB after 100 MiB of output"
    );
    assert!(agent.alive());
}

#[test]
fn two_hundred_concurrent_calls_on_twenty_connections() {
    let mut agent = Agent::start();
    let socket = agent.socket.clone();
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let s = UnixStream::connect(&socket).unwrap();
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\"}}\n").unwrap();
                // Ten calls written at once, answered in any order, matched by id.
                for i in 1..=10 {
                    let req = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "run_command", "arguments": {"argv": ["echo", format!("{t}-{i}")]}}});
                    w.write_all(format!("{req}\n").as_bytes()).unwrap();
                }
                let mut seen = std::collections::BTreeMap::new();
                for _ in 0..11 {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let v: Value = serde_json::from_str(&line).unwrap();
                    seen.insert(v["id"].as_i64().unwrap(), v);
                }
                for i in 1..=10 {
                    assert_eq!(seen[&i]["result"]["structuredContent"]["stdout"], format!("{t}-{i}\n"));
                }
                seen.len() - 1
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 200);
    assert!(agent.alive());
}

#[test]
fn shutdown_outside_a_vm_exits() {
    let mut agent = Agent::start();
    let mut c = agent.session();
    let r = c.call("shutdown", json!({}));
    assert_eq!(r["result"]["structuredContent"]["shutting_down"], true);
    let t = Instant::now();
    while agent.alive() {
        assert!(t.elapsed() < Duration::from_secs(5), "agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

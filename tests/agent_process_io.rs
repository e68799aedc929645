//! Background processes of the guest agent on terminals (size, resize, the login shell),
//! their output rings (dropping, `--output-buffer`, UTF-8 never split, streams in order) and
//! `port_check`, with the agent as a normal process on a unix socket.

#![allow(clippy::unwrap_used)]

#[path = "common/agent_conn.rs"]
mod agent_conn;
#[path = "common/process_calls.rs"]
mod process_calls;

use agent_conn::Agent;
use process_calls::*;
use serde_json::json;

#[test]
fn a_shell_on_a_terminal_sees_its_size_and_resizes() {
    let agent = Agent::start();
    let mut c = agent.session();
    let r = ok(
        &mut c,
        "process_start",
        json!({"argv": ["/bin/sh"], "pty": {"rows": 24, "cols": 80}}),
    );
    assert_eq!(r["pty"], true);
    let id = r["id"].as_u64().unwrap();
    let mut cursor = 0;
    ok(
        &mut c,
        "process_input",
        json!({"id": id, "data": "tty; echo TERM=$TERM\n"}),
    );
    let out = read_until(&mut c, id, &mut cursor, "TERM=xterm-256color\r\n");
    // `tty` prints /dev/pts/N (the typed-ahead echo and prompt may come in any order).
    let pts = out.find("/dev/pts/").map(|i| &out[i + 9..]);
    assert!(
        pts.is_some_and(|rest| rest.starts_with(|ch: char| ch.is_ascii_digit())),
        "{out:?}"
    );
    ok(
        &mut c,
        "process_input",
        json!({"id": id, "data": "stty size\n"}),
    );
    read_until(&mut c, id, &mut cursor, "24 80\r\n");
    let r = ok(
        &mut c,
        "process_resize",
        json!({"id": id, "rows": 40, "cols": 120}),
    );
    assert_eq!(r, json!({"id": id, "rows": 40, "cols": 120}));
    ok(
        &mut c,
        "process_input",
        json!({"id": id, "data": "stty size\n"}),
    );
    read_until(&mut c, id, &mut cursor, "40 120\r\n");
    let chunk = ok(
        &mut c,
        "process_output",
        json!({"id": id, "cursor": 0, "max_bytes": 1}),
    );
    assert_eq!(chunk["chunks"][0]["stream"], "pty");
    // `close` sends ^D: the shell exits at the start of a line.
    ok(&mut c, "process_input", json!({"id": id, "close": true}));
    let (_, last) = read_to_eof(&mut c, id, cursor);
    assert_eq!(last["exit"]["exit_code"], 0);
}

#[test]
fn a_terminal_without_a_program_runs_the_login_shell() {
    let agent = Agent::start();
    let mut c = agent.session();
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let shell = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[2] == uid)
        .map(|f| f[6].clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into());
    let id = start(&mut c, json!({"pty": {"rows": 24, "cols": 80}}));
    let info = &ok(&mut c, "process_list", json!({}))["processes"][0];
    assert_eq!(info["argv"], json!([shell]));
    ok(
        &mut c,
        "process_input",
        json!({"id": id, "data": "echo \"zero=$0\"\n"}),
    );
    let mut cursor = 0;
    let name = shell.rsplit('/').next().unwrap();
    read_until(&mut c, id, &mut cursor, &format!("zero=-{name}\r\n"));
    ok(
        &mut c,
        "process_input",
        json!({"id": id, "data": "exit 3\n"}),
    );
    assert_eq!(read_to_eof(&mut c, id, cursor).1["exit"]["exit_code"], 3);
}

#[test]
fn rings_drop_oldest_first_and_utf8_is_not_split() {
    let agent = Agent::start_with(&["--output-buffer", "10"]);
    let mut c = agent.session();
    let id = start(&mut c, json!({"argv": ["printf", "0123456789abcdef"]}));
    read_to_eof(&mut c, id, 0);
    let out = ok(&mut c, "process_output", json!({"id": id, "cursor": 0}));
    assert_eq!(text_of(&out), "6789abcdef");
    assert_eq!(
        (out["dropped"].clone(), out["cursor"].clone()),
        (json!(6), json!(16))
    );
    let out = ok(&mut c, "process_output", json!({"id": id, "cursor": 3}));
    assert_eq!(out["dropped"], 3);
    // buffer_bytes overrides the agent's default.
    let id = start(
        &mut c,
        json!({"argv": ["printf", "0123456789abcdef"], "buffer_bytes": 100}),
    );
    assert_eq!(read_to_eof(&mut c, id, 0).0, "0123456789abcdef");

    // An é whose second byte comes later is never returned half.
    let id = start(
        &mut c,
        json!({"command": "printf '\\303'; sleep 1; printf '\\251\\n'", "buffer_bytes": 100}),
    );
    let mut cursor = 0;
    let mut text = String::new();
    loop {
        let out = ok(
            &mut c,
            "process_output",
            json!({"id": id, "cursor": cursor, "wait_ms": 300}),
        );
        let t = text_of(&out);
        assert!(!t.contains('\u{fffd}'), "{out}");
        text.push_str(&t);
        cursor = out["cursor"].as_u64().unwrap();
        if out["eof"] == true {
            break;
        }
    }
    assert_eq!(text, "é\n");
    let b64 = ok(
        &mut c,
        "process_output",
        json!({"id": id, "encoding": "base64"}),
    );
    assert_eq!(b64["chunks"][0]["data"], "w6kK");
    // stdout and stderr in order, each its own chunk.
    let id = start(
        &mut c,
        json!({"command": "echo out; sleep 0.2; echo err >&2", "buffer_bytes": 100}),
    );
    read_to_eof(&mut c, id, 0);
    let out = ok(&mut c, "process_output", json!({"id": id}));
    assert_eq!(
        out["chunks"],
        json!([
            {"stream": "stdout", "cursor": 0, "data": "out\n"},
            {"stream": "stderr", "cursor": 4, "data": "err\n"}
        ])
    );
}

#[test]
fn port_check_finds_listeners_and_explains_a_wrong_address() {
    let agent = Agent::start();
    let mut c = agent.session();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let r = c.call("port_check", json!({"port": port}));
    assert_eq!(
        r["result"]["structuredContent"],
        json!({"port": port, "host": "127.0.0.1", "listeners": [format!("127.0.0.1:{port}")], "connectable": true})
    );
    assert_eq!(
        r["result"]["content"][0]["text"],
        format!("listening on 127.0.0.1:{port}; connected to 127.0.0.1:{port}")
    );
    // Listening on loopback only; the VM's other address (here 127.0.0.2) is not served.
    let r = c.call("port_check", json!({"port": port, "host": "127.0.0.2"}));
    assert_eq!(r["result"]["structuredContent"]["connectable"], false);
    assert_eq!(
        r["result"]["content"][0]["text"],
        format!("listening on 127.0.0.1:{port} only, not on 127.0.0.2:{port}'s address, so connecting to 127.0.0.2:{port} failed: connection refused; bind the server to 0.0.0.0 (or to 127.0.0.2), or check one of its addresses")
    );
    drop(l);
    let r = c.call("port_check", json!({"port": port}));
    assert_eq!(
        r["result"]["content"][0]["text"],
        format!("nothing is listening on TCP port {port} in the VM (connecting to 127.0.0.1:{port}: connection refused): start the server, or check which port it uses")
    );
    assert_eq!(
        params_error(&mut c, "port_check", json!({"port": 70000})),
        "invalid value: integer `70000`, expected u16"
    );
}

//! Background processes of the guest agent (`process_*` tools) with the agent as a normal
//! process on a unix socket: output read incrementally and across connections, signals,
//! stdin, terminals, limits and bad input — each asserted exactly.

#![allow(clippy::unwrap_used)]

#[path = "common/agent_conn.rs"]
mod agent_conn;

use agent_conn::{Agent, Conn};
use serde_json::{json, Value};

/// A successful tool call's structured result.
fn ok(c: &mut Conn, tool: &str, args: Value) -> Value {
    let r = c.call(tool, args);
    let brief: String = r.to_string().chars().take(600).collect();
    assert!(
        r["result"]["isError"] == false && r["error"].is_null(),
        "{tool}: {brief}"
    );
    r["result"]["structuredContent"].clone()
}

/// A tool call's `isError` text.
fn failed(c: &mut Conn, tool: &str, args: Value) -> String {
    let r = c.call(tool, args);
    assert_eq!(r["result"]["isError"], true, "{tool}: {r}");
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A tool call's JSON-RPC -32602 message.
fn params_error(c: &mut Conn, tool: &str, args: Value) -> String {
    let r = c.call(tool, args);
    assert_eq!(r["error"]["code"], -32602, "{tool}: {r}");
    let m = r["error"]["message"].as_str().unwrap();
    m.strip_prefix("invalid params: ")
        .unwrap_or_else(|| panic!("{m}"))
        .to_string()
}

fn start(c: &mut Conn, args: Value) -> u64 {
    ok(c, "process_start", args)["id"].as_u64().unwrap()
}

fn text_of(out: &Value) -> String {
    out["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data"].as_str().unwrap())
        .collect()
}

/// Read from `cursor` to the end of the process's output; returns (text, final result).
fn read_to_eof(c: &mut Conn, id: u64, mut cursor: u64) -> (String, Value) {
    let mut text = String::new();
    loop {
        let out = ok(
            c,
            "process_output",
            json!({"id": id, "cursor": cursor, "wait_ms": 10_000}),
        );
        text.push_str(&text_of(&out));
        cursor = out["cursor"].as_u64().unwrap();
        if out["eof"] == true {
            return (text, out);
        }
    }
}

/// Read until the output so far contains `want`; returns the output and the cursor.
fn read_until(c: &mut Conn, id: u64, cursor: &mut u64, want: &str) -> String {
    let mut text = String::new();
    // Bounded so a missing line fails the test instead of hanging it (each read waits up to
    // 10 s for output; a shell answers in milliseconds).
    for _ in 0..50 {
        if text.contains(want) {
            return text;
        }
        let out = ok(
            c,
            "process_output",
            json!({"id": id, "cursor": *cursor, "wait_ms": 10_000}),
        );
        assert_eq!(out["eof"], false, "ended before {want:?}: {text:?}");
        text.push_str(&text_of(&out));
        *cursor = out["cursor"].as_u64().unwrap();
    }
    panic!("no {want:?} in {text:?}");
}

#[test]
fn output_comes_in_chunks_and_survives_a_reconnect() {
    let agent = Agent::start();
    let mut c = agent.session();
    let id = start(
        &mut c,
        json!({"command": "for i in $(seq 5); do echo $i; sleep 1; done"}),
    );
    // Three reads that each return something new (the lines come a second apart).
    let mut cursor = 0;
    let mut seen = String::new();
    let mut reads = 0;
    while reads < 3 {
        let out = ok(
            &mut c,
            "process_output",
            json!({"id": id, "cursor": cursor, "wait_ms": 5000}),
        );
        assert_eq!(out["running"], true, "{out}");
        let chunks = out["chunks"].as_array().unwrap();
        assert!(!chunks.is_empty(), "{out}");
        assert_eq!(chunks[0]["stream"], "stdout");
        assert_eq!(chunks[0]["cursor"], cursor);
        seen.push_str(&text_of(&out));
        cursor = out["cursor"].as_u64().unwrap();
        assert_eq!(cursor as usize, seen.len());
        reads += 1;
    }
    assert!("1\n2\n3\n4\n5\n".starts_with(&seen), "{seen:?}");
    drop(c);

    // The process belongs to the agent, not to the connection that started it.
    let mut c = agent.session();
    let list = ok(&mut c, "process_list", json!({}));
    let procs = list["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{list}");
    assert_eq!(procs[0]["id"], id);
    assert_eq!(
        procs[0]["argv"],
        json!([
            "/bin/sh",
            "-c",
            "for i in $(seq 5); do echo $i; sleep 1; done"
        ])
    );
    let (rest, last) = read_to_eof(&mut c, id, cursor);
    assert_eq!(format!("{seen}{rest}"), "1\n2\n3\n4\n5\n");
    assert_eq!(last["running"], false);
    assert_eq!(
        last["exit"],
        json!({"exit_code": 0, "signal": null, "timed_out": false})
    );
    assert_eq!(last["dropped"], 0);
}

#[test]
fn term_ends_a_sleep_with_signal_15_and_signal_names_are_checked() {
    let agent = Agent::start();
    let mut c = agent.session();
    let id = start(&mut c, json!({"argv": ["sleep", "1000"]}));
    assert_eq!(
        params_error(&mut c, "process_signal", json!({"id": id, "signal": "TERMINATE"})),
        "unknown signal \"TERMINATE\": use TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP or CONT (with or without SIG), or one of their numbers 15, 9, 2, 1, 3, 10, 12, 19, 18"
    );
    // STOP and CONT by number and with SIG, then TERM by default.
    ok(&mut c, "process_signal", json!({"id": id, "signal": "19"}));
    ok(
        &mut c,
        "process_signal",
        json!({"id": id, "signal": "SIGCONT"}),
    );
    let r = ok(&mut c, "process_signal", json!({"id": id}));
    assert_eq!(r, json!({"id": id, "signal": 15, "process_only": false}));
    let (text, last) = read_to_eof(&mut c, id, 0);
    assert_eq!(text, "");
    assert_eq!(
        last["exit"],
        json!({"exit_code": null, "signal": 15, "timed_out": false})
    );
    assert_eq!(
        failed(
            &mut c,
            "process_signal",
            json!({"id": id, "signal": "KILL"})
        ),
        format!("process {id} has exited (killed by signal 15); there is nothing to signal")
    );
}

#[test]
fn stdin_round_trip_through_cat() {
    let agent = Agent::start();
    let mut c = agent.session();
    let id = start(&mut c, json!({"argv": ["cat"]}));
    let r = ok(
        &mut c,
        "process_input",
        json!({"id": id, "data": "hello\n"}),
    );
    assert_eq!(r, json!({"id": id, "bytes_written": 6, "stdin_open": true}));
    let mut cursor = 0;
    assert_eq!(read_until(&mut c, id, &mut cursor, "\n"), "hello\n");
    ok(
        &mut c,
        "process_input",
        json!({"id": id, "data": "aGkK", "encoding": "base64", "close": true}),
    );
    let (rest, last) = read_to_eof(&mut c, id, cursor);
    assert_eq!(rest, "hi\n");
    assert_eq!(last["exit"]["exit_code"], 0);
    assert_eq!(
        failed(&mut c, "process_input", json!({"id": id, "data": "more"})),
        format!("process {id}'s stdin is closed")
    );
    // Without stdin it is closed from the start.
    let id = start(&mut c, json!({"argv": ["cat"], "stdin": false}));
    assert_eq!(read_to_eof(&mut c, id, 0).1["exit"]["exit_code"], 0);
    assert_eq!(
        failed(&mut c, "process_input", json!({"id": id, "data": "x"})),
        format!("process {id}'s stdin is closed")
    );
}

#[test]
fn a_hundred_mib_printer_keeps_memory_bounded_and_reports_dropped_output() {
    let agent = Agent::start();
    let mut c = agent.session();
    let id = start(
        &mut c,
        json!({"command": "head -c 104857600 /dev/zero | tr '\\0' x; echo END"}),
    );
    // Read along (from the start each time: the ring lost most of it).
    let total = 104_857_600u64 + 4;
    let (_, last) = loop {
        let out = ok(
            &mut c,
            "process_output",
            json!({"id": id, "cursor": 0, "wait_ms": 10_000, "max_bytes": 16}),
        );
        if out["running"] == false {
            break read_to_eof(&mut c, id, 0);
        }
    };
    assert_eq!(last["exit"]["exit_code"], 0);
    let out = ok(
        &mut c,
        "process_output",
        json!({"id": id, "cursor": 0, "max_bytes": 4}),
    );
    // The default ring is 8 MiB: everything before its last 8 MiB is gone.
    assert_eq!(out["dropped"], total - (8 << 20));
    assert_eq!(out["chunks"][0]["cursor"], total - (8 << 20));
    assert_eq!(text_of(&out), "xxxx");
    let tail = ok(
        &mut c,
        "process_output",
        json!({"id": id, "cursor": total - 6}),
    );
    assert_eq!(text_of(&tail), "xxEND\n");
    assert_eq!(tail["dropped"], 0);
    assert_eq!(tail["eof"], true);
    let info = &ok(&mut c, "process_list", json!({}))["processes"][0];
    assert_eq!(info["output_bytes"], total);
    assert_eq!(info["dropped_bytes"], total - (8 << 20));
    // Peak RSS: the 8 MiB ring (16 MiB while its VecDeque grows from 4 to 8 MiB, old and
    // new buffer at once) plus the agent's ~4 MiB (debug build) and 64 KiB reads: far below
    // the 100 MiB that went through it.
    let peak = agent.status_kib("VmHWM");
    assert!(peak < 32 * 1024, "agent peak RSS {peak} KiB");
}

#[test]
fn the_running_limit_is_256_and_the_agent_survives_a_thousand_starts() {
    let agent = Agent::start();
    let mut c = agent.session();
    let mut ids = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        let r = c.call("process_start", json!({"argv": ["sleep", "1000"]}));
        if r["result"]["isError"] == true {
            assert_eq!(
                r["result"]["content"][0]["text"],
                "too many running processes: 256 (the agent's limit); end some with process_signal first"
            );
            refused += 1;
        } else {
            ids.push(r["result"]["structuredContent"]["id"].as_u64().unwrap());
        }
    }
    assert_eq!((ids.len(), refused), (256, 744));
    assert_eq!(c.request("ping", json!({}))["result"], json!({}));
    assert_eq!(
        ok(&mut c, "process_list", json!({}))["processes"]
            .as_array()
            .unwrap()
            .len(),
        256
    );
    // Each read right after its kill: only 64 finished ones are kept.
    for &id in &ids {
        ok(
            &mut c,
            "process_signal",
            json!({"id": id, "signal": "KILL"}),
        );
        assert_eq!(read_to_eof(&mut c, id, 0).1["exit"]["signal"], 9);
    }
    // Room again; and only 64 finished ones are kept (the oldest forgotten).
    let id = start(&mut c, json!({"argv": ["true"]}));
    read_to_eof(&mut c, id, 0);
    let list = ok(&mut c, "process_list", json!({}));
    let kept: Vec<u64> = list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(kept.len(), 64);
    assert!(kept.contains(&id));
}

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
fn bad_input_gets_exact_errors() {
    let agent = Agent::start();
    let mut c = agent.session();
    assert_eq!(
        failed(&mut c, "process_output", json!({"id": 42})),
        "no process 42 (process_list shows the ids; finished processes are kept for 10 minutes)"
    );
    for tool in ["process_input", "process_signal"] {
        assert_eq!(
            failed(&mut c, tool, json!({"id": 42})),
            "no process 42 (process_list shows the ids; finished processes are kept for 10 minutes)"
        );
    }
    let id = start(&mut c, json!({"argv": ["printf", "hello world\\n"]}));
    let (text, _) = read_to_eof(&mut c, id, 0);
    assert_eq!(text, "hello world\n");
    assert_eq!(
        failed(&mut c, "process_output", json!({"id": id, "cursor": 999})),
        format!("cursor 999 is past the end of process {id}'s output (12 bytes so far)")
    );
    // The end itself is fine: nothing more, eof.
    let end = ok(&mut c, "process_output", json!({"id": id, "cursor": 12}));
    assert_eq!(
        (end["chunks"].clone(), end["eof"].clone()),
        (json!([]), json!(true))
    );
    assert_eq!(
        failed(&mut c, "process_input", json!({"id": id, "data": "x"})),
        format!("process {id} has exited; its stdin is gone")
    );
    assert_eq!(
        failed(
            &mut c,
            "process_resize",
            json!({"id": id, "rows": 10, "cols": 10})
        ),
        format!("process {id} has no terminal (it was started without pty)")
    );
    for (rows, cols, msg) in [
        (
            0,
            0,
            "a terminal of 0 rows × 0 columns: rows and cols must each be 1 to 10000",
        ),
        (
            24,
            100_000,
            "a terminal of 24 rows × 100000 columns: rows and cols must each be 1 to 10000",
        ),
    ] {
        assert_eq!(
            params_error(
                &mut c,
                "process_start",
                json!({"argv": ["true"], "pty": {"rows": rows, "cols": cols}})
            ),
            msg
        );
        assert_eq!(
            params_error(
                &mut c,
                "process_resize",
                json!({"id": id, "rows": rows, "cols": cols})
            ),
            msg
        );
    }
    assert_eq!(
        params_error(&mut c, "process_start", json!({})),
        "give exactly one of `argv` (non-empty) or `command` (or neither, with `pty`, for a login shell)"
    );
    assert_eq!(
        params_error(
            &mut c,
            "process_start",
            json!({"argv": ["true"], "buffer_bytes": 0})
        ),
        "`buffer_bytes` must be 1 to 67108864, got 0"
    );
    assert_eq!(
        params_error(
            &mut c,
            "process_output",
            json!({"id": id, "wait_ms": 60001})
        ),
        "`wait_ms` must be at most 60000"
    );
    assert_eq!(
        params_error(&mut c, "process_output", json!({"id": id, "max_bytes": 0})),
        "`max_bytes` must be 1 to 4194304"
    );
    assert_eq!(
        params_error(&mut c, "process_list", json!({"all": true})),
        "unknown field `all`, there are no fields"
    );
    assert_eq!(
        failed(
            &mut c,
            "process_start",
            json!({"argv": ["/nonexistent/prog"]})
        ),
        "cannot run `/nonexistent/prog`: No such file or directory (os error 2)"
    );
    // A finished process is still listed and readable.
    let info = ok(&mut c, "process_list", json!({}))["processes"][0].clone();
    assert_eq!(info["id"], id);
    assert_eq!(info["running"], false);
    assert_eq!(info["exit"]["exit_code"], 0);
    assert_eq!(info["output_bytes"], 12);
    assert_eq!(info["stdin_open"], false);
    assert!(info["finished_at_ms"].as_u64().unwrap() >= info["started_at_ms"].as_u64().unwrap());
    assert_eq!(read_to_eof(&mut c, id, 6).0, "world\n");
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
fn a_timeout_kills_the_group() {
    let agent = Agent::start();
    let mut c = agent.session();
    let id = start(
        &mut c,
        json!({"command": "sleep 1000 & echo started; wait", "timeout_secs": 0.5}),
    );
    let (text, last) = read_to_eof(&mut c, id, 0);
    assert_eq!(text, "started\n");
    assert_eq!(
        last["exit"],
        json!({"exit_code": null, "signal": 9, "timed_out": true})
    );
}

#[test]
fn idle_rss_stays_small_with_ten_finished_processes() {
    let agent = Agent::start();
    let mut c = agent.session();
    // Warm up (the runtime's threads, the first spawn), then measure what 10 add.
    let id = start(&mut c, json!({"argv": ["true"]}));
    read_to_eof(&mut c, id, 0);
    let before = agent.status_kib("VmRSS");
    for i in 0..10 {
        let id = start(
            &mut c,
            json!({"command": format!("seq 1 {}", 1000 * (i + 1))}),
        );
        read_to_eof(&mut c, id, 0);
    }
    assert_eq!(
        ok(&mut c, "process_list", json!({}))["processes"]
            .as_array()
            .unwrap()
            .len(),
        11
    );
    // The absolute bound (< 5 MiB) is for the static release build: agent_system.rs. Here
    // (a debug build): what 10 finished processes with 4-50 KiB of output each add.
    let rss = agent.status_kib("VmRSS");
    assert!(
        rss < before + 1024,
        "RSS {before} KiB before, {rss} KiB with 10 finished processes"
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

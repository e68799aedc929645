//! Background processes of the guest agent (`process_*` tools) with the agent as a normal
//! process on a unix socket: output read incrementally and across connections, signals,
//! stdin, limits, retention and bad input — each asserted exactly. Terminals, rings and
//! `port_check` are in agent_process_io.rs.

#![allow(clippy::unwrap_used)]

#[path = "common/agent_conn.rs"]
mod agent_conn;
#[path = "common/process_calls.rs"]
mod process_calls;

use agent_conn::Agent;
use process_calls::*;
use serde_json::json;

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
fn children_get_the_usual_open_files_limit_back() {
    // The agent raises its own soft limit to the hard one; its children run with the limit
    // the agent started with, like under systemd.
    let agent = Agent::start_with_nofile(256);
    let mut c = agent.session();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        f[3], f[4],
        "the agent's soft limit is its hard limit: {line}"
    );
    let id = start(&mut c, json!({"command": "ulimit -Sn"}));
    assert_eq!(read_to_eof(&mut c, id, 0).0, "256\n");
}

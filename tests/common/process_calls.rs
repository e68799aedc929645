//! Calls of the `process_*` tools for the agent test files: results, errors, reading a
//! process's output to its end or until a text appears.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::{json, Value};

use super::agent_conn::Conn;

/// A successful tool call's structured result.
pub fn ok(c: &mut Conn, tool: &str, args: Value) -> Value {
    let r = c.call(tool, args);
    let brief: String = r.to_string().chars().take(600).collect();
    assert!(
        r["result"]["isError"] == false && r["error"].is_null(),
        "{tool}: {brief}"
    );
    r["result"]["structuredContent"].clone()
}

/// A tool call's `isError` text.
pub fn failed(c: &mut Conn, tool: &str, args: Value) -> String {
    let r = c.call(tool, args);
    assert_eq!(r["result"]["isError"], true, "{tool}: {r}");
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A tool call's JSON-RPC -32602 message.
pub fn params_error(c: &mut Conn, tool: &str, args: Value) -> String {
    let r = c.call(tool, args);
    assert_eq!(r["error"]["code"], -32602, "{tool}: {r}");
    let m = r["error"]["message"].as_str().unwrap();
    m.strip_prefix("invalid params: ")
        .unwrap_or_else(|| panic!("{m}"))
        .to_string()
}

pub fn start(c: &mut Conn, args: Value) -> u64 {
    ok(c, "process_start", args)["id"].as_u64().unwrap()
}

pub fn text_of(out: &Value) -> String {
    out["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data"].as_str().unwrap())
        .collect()
}

/// Read from `cursor` to the end of the process's output; returns (text, final result).
pub fn read_to_eof(c: &mut Conn, id: u64, mut cursor: u64) -> (String, Value) {
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
pub fn read_until(c: &mut Conn, id: u64, cursor: &mut u64, want: &str) -> String {
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

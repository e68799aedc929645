//! `fort mcp --host` as an MCP client sees it, from Rust: JSON lines on its stdin and stdout,
//! several requests in flight at once (answers matched by id).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use serde_json::{json, Value};

use super::fort::Workspace;

pub struct HostMcp {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next: i64,
    early: HashMap<i64, Value>,
}

impl HostMcp {
    pub fn start(ws: &Workspace) -> HostMcp {
        let mut child = ws
            .command(&["mcp", "--host"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut m = HostMcp {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            next: 1,
            early: HashMap::new(),
        };
        let id = m.send("initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}));
        let init = m.wait(id);
        assert_eq!(init["result"]["serverInfo"]["name"], "fort", "{init}");
        writeln!(
            m.stdin,
            r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
        )
        .unwrap();
        m
    }

    /// Send a request; its id.
    pub fn send(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next;
        self.next += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.stdin, "{line}").unwrap();
        id
    }

    /// The answer to request `id` (answers to others that come first are kept).
    pub fn wait(&mut self, id: i64) -> Value {
        if let Some(v) = self.early.remove(&id) {
            return v;
        }
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "fort mcp --host closed"
            );
            let v: Value = serde_json::from_str(&line).unwrap();
            match v["id"].as_i64() {
                Some(i) if i == id => return v,
                Some(i) => {
                    self.early.insert(i, v);
                }
                None => {}
            }
        }
    }

    /// Start a tool call; its id.
    pub fn start_call(&mut self, tool: &str, args: Value) -> i64 {
        self.send("tools/call", json!({"name": tool, "arguments": args}))
    }

    /// A tool call's result: `Ok(structuredContent)`, or `Err(text)` of an `isError` result.
    pub fn result(&mut self, id: i64) -> Result<Value, String> {
        let v = self.wait(id);
        let r = &v["result"];
        assert!(r.is_object(), "not a result: {v}");
        if r["isError"] == true {
            Err(r["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string())
        } else {
            Ok(r["structuredContent"].clone())
        }
    }

    pub fn call(&mut self, tool: &str, args: Value) -> Result<Value, String> {
        let id = self.start_call(tool, args);
        self.result(id)
    }

    /// Close stdin and wait for fort to exit (it finishes its pass first).
    pub fn close(mut self) {
        drop(self.stdin);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "fort mcp --host: {status}");
    }
}

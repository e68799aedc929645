//! `process_output` latency: a line printed by a background process reaches a client waiting
//! in `process_output` over a unix socket, against the same printer read directly from a
//! pipe, in the same run (alternating rounds). Also the agent's idle RSS with 10 finished
//! processes retained. Run: `cargo bench -p fort-guest-agent --bench process_output`
//! (`FORT_AGENT_BIN=$(scripts/build-agent)` measures the static release binary instead).
//!
//! The printer is this binary itself (`FORT_BENCH_PRINTER=N`): N lines, one every 20 ms, each
//! the CLOCK_REALTIME nanoseconds at the moment it is written, so the reader's latency is
//! "now minus the line".

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const LINES_PER_ROUND: usize = 100;
const ROUNDS: usize = 3;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn printer(n: usize) {
    let mut out = std::io::stdout().lock();
    for _ in 0..n {
        std::thread::sleep(Duration::from_millis(20));
        writeln!(out, "{}", now_ns()).unwrap();
        out.flush().unwrap();
    }
}

struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
    id: i64,
}

impl Conn {
    fn req(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let line = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params})
            .to_string()
            + "\n";
        self.w.write_all(line.as_bytes()).unwrap();
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap();
        serde_json::from_str(&s).unwrap()
    }

    fn tool(&mut self, name: &str, args: Value) -> Value {
        let r = self.req("tools/call", json!({"name": name, "arguments": args}));
        assert_ne!(r["result"]["isError"], true, "{r}");
        r["result"]["structuredContent"].clone()
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Latencies (µs) of every complete line in `text` (partial lines are carried in `buf`).
fn take_lines(buf: &mut String, text: &str, out: &mut Vec<f64>) {
    let now = now_ns();
    buf.push_str(text);
    while let Some(i) = buf.find('\n') {
        let line: String = buf.drain(..=i).collect();
        let ts: u128 = line.trim().parse().unwrap();
        out.push((now.saturating_sub(ts)) as f64 / 1e3);
    }
}

fn direct_round(exe: &std::path::Path, out: &mut Vec<f64>) {
    let mut child = std::process::Command::new(exe)
        .env("FORT_BENCH_PRINTER", LINES_PER_ROUND.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut buf = String::new();
    while r.read_line(&mut line).unwrap() > 0 {
        take_lines(&mut buf, &line, out);
        line.clear();
    }
    child.wait().unwrap();
}

fn agent_round(c: &mut Conn, exe: &std::path::Path, out: &mut Vec<f64>) {
    let id = c.tool(
        "process_start",
        json!({"argv": [exe], "env": {"FORT_BENCH_PRINTER": LINES_PER_ROUND.to_string()}}),
    )["id"]
        .as_u64()
        .unwrap();
    let mut cursor = 0u64;
    let mut buf = String::new();
    loop {
        let o = c.tool(
            "process_output",
            json!({"id": id, "cursor": cursor, "wait_ms": 5000}),
        );
        let text: String = o["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ch| ch["data"].as_str().unwrap())
            .collect();
        take_lines(&mut buf, &text, out);
        cursor = o["cursor"].as_u64().unwrap();
        if o["eof"] == true {
            break;
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

fn main() {
    if let Ok(n) = std::env::var("FORT_BENCH_PRINTER") {
        printer(n.parse().unwrap());
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let exe = std::env::current_exe().unwrap();
    let agent = std::env::var("FORT_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_fort-guest-agent").to_string());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let mut child = std::process::Command::new(&agent)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while UnixStream::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = UnixStream::connect(&sock).unwrap();
    let mut c = Conn {
        r: BufReader::new(s.try_clone().unwrap()),
        w: s,
        id: 0,
    };
    c.req("initialize", json!({"protocolVersion": "2025-11-25"}));

    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        direct_round(&exe, &mut direct);
        agent_round(&mut c, &exe, &mut via);
    }
    let (d50, d95) = (pct(&mut direct, 0.5), pct(&mut direct, 0.95));
    let (v50, v95) = (pct(&mut via, 0.5), pct(&mut via, 0.95));
    println!(
        "line to reader, {} lines each: direct pipe p50 {d50:.0} µs p95 {d95:.0} µs; \
         process_output (waiting, unix socket) p50 {v50:.0} µs p95 {v95:.0} µs; ratio p50 {:.1}",
        direct.len(),
        v50 / d50
    );

    // Idle with 10 finished processes retained (3 of the rounds above are among them).
    for _ in 0..7 {
        let id = c.tool("process_start", json!({"command": "seq 1 2000"}))["id"].clone();
        loop {
            let o = c.tool("process_output", json!({"id": id, "wait_ms": 5000}));
            if o["eof"] == true {
                break;
            }
        }
    }
    let n = c.tool("process_list", json!({}))["processes"]
        .as_array()
        .unwrap()
        .len();
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "idle RSS with {n} finished processes retained: {} KiB ({agent})",
        rss_kib(child.id())
    );
    let size = std::fs::metadata(&agent).unwrap().len();
    println!("agent binary: {size} bytes");
    let _ = child.kill();
    let _ = child.wait();
}

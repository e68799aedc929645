//! Agent benchmarks over a unix socket: ping round trip, `run_command ["true"]` against
//! spawning `true` directly (same run), and `file_read` throughput of a 64 MiB file in 1 MiB
//! base64 chunks. Run: `cargo bench -p fort-guest-agent --bench agent`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fort-guest-agent"))
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

    let mut pings = Vec::new();
    for i in 0..5000 {
        let t = Instant::now();
        c.req("ping", json!({}));
        if i >= 500 {
            pings.push(t.elapsed());
        }
    }
    println!(
        "ping round trip: p50 {:.1} µs, p99 {:.1} µs (4500 samples)",
        us(pct(pings.clone(), 0.5)),
        us(pct(pings, 0.99))
    );

    let mut direct = Vec::new();
    let mut via = Vec::new();
    for i in 0..600 {
        // Interleaved so both see the same machine conditions.
        let t = Instant::now();
        std::process::Command::new("true").status().unwrap();
        let d = t.elapsed();
        let t = Instant::now();
        let r = c.req(
            "tools/call",
            json!({"name": "run_command", "arguments": {"argv": ["true"]}}),
        );
        let v = t.elapsed();
        assert_eq!(r["result"]["structuredContent"]["exit_code"], 0);
        if i >= 100 {
            direct.push(d);
            via.push(v);
        }
    }
    let (d50, v50) = (pct(direct, 0.5), pct(via, 0.5));
    println!(
        "spawn `true` directly: p50 {:.0} µs; run_command [\"true\"]: p50 {:.0} µs; ratio {:.2}",
        us(d50),
        us(v50),
        v50.as_secs_f64() / d50.as_secs_f64()
    );

    let file = dir.path().join("big");
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut off = 0usize;
        while off < data.len() {
            let r = c.req("tools/call", json!({"name": "file_read", "arguments": {"path": file, "offset": off, "length": 1 << 20, "encoding": "base64"}}));
            let n = r["result"]["structuredContent"]["length"].as_u64().unwrap() as usize;
            assert!(n > 0);
            off += n;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "file_read 64 MiB in 1 MiB base64 chunks: best of 5 {:.0} ms = {:.0} MB/s",
        best * 1e3,
        64.0 * 1.048576 / best
    );
    let _ = child.kill();
    let _ = child.wait();
}

//! A real HTTP/1.1 server on 127.0.0.1 for tests: routes set at runtime, every request
//! counted, with delays and early closes to simulate slow and broken servers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Arc<Vec<u8>>,
    /// Sleep this long between 64 KiB chunks of the body.
    pub chunk_delay: Duration,
    /// Close the connection after this many body bytes (Content-Length still says all).
    pub truncate_at: Option<usize>,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: 200,
            body: Arc::new(body.into()),
            chunk_delay: Duration::ZERO,
            truncate_at: None,
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: Arc::new(format!("status {status}\n").into_bytes()),
            chunk_delay: Duration::ZERO,
            truncate_at: None,
        }
    }

    pub fn truncated(mut self, at: usize) -> Reply {
        self.truncate_at = Some(at);
        self
    }

    pub fn slow(mut self, chunk_delay: Duration) -> Reply {
        self.chunk_delay = chunk_delay;
        self
    }
}

#[derive(Default)]
struct Shared {
    routes: HashMap<String, Reply>,
    hits: HashMap<String, usize>,
}

pub struct Server {
    port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (shared.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                thread::spawn(move || serve(conn, s3));
            }
        });
        Server { port, shared, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn route(&self, path: &str, reply: Reply) {
        self.shared
            .lock()
            .expect("lock")
            .routes
            .insert(path.to_string(), reply);
    }

    /// Requests seen for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .lock()
            .expect("lock")
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests seen for every path.
    pub fn total_hits(&self) -> usize {
        self.shared.lock().expect("lock").hits.values().sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, shared: Arc<Mutex<Shared>>) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let reply = {
        let mut s = shared.lock().expect("lock");
        *s.hits.entry(path.clone()).or_default() += 1;
        s.routes
            .get(&path)
            .cloned()
            .unwrap_or_else(|| Reply::status(404))
    };
    let mut conn = conn;
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.body.len()
    );
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let body = &reply.body[..reply
        .truncate_at
        .unwrap_or(reply.body.len())
        .min(reply.body.len())];
    for chunk in body.chunks(64 * 1024) {
        if !reply.chunk_delay.is_zero() {
            thread::sleep(reply.chunk_delay);
        }
        if conn.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = conn.flush();
}

//! `fort/tunnel` on the agent's side: a connection whose first request is `fort/tunnel` stops
//! being JSON-RPC and becomes a raw byte stream to a TCP address in the guest (what
//! `fort port-forward` opens per accepted connection; the wire format is in
//! `fort_agent_protocol::tunnel` and docs/guest-agent.md).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fort_agent_protocol::rpc::{INVALID_PARAMS, TUNNEL_FAILED};
use fort_agent_protocol::tunnel::{FailReason, Tunnel, METHOD};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::rpc;

/// How long the connect to the guest address may take: a filtered port or an address that does
/// not answer must not hold the host's connection open for the kernel's minutes-long default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes per read in each direction of the splice: large reads keep the per-syscall cost low
/// on bulk transfers (docs/benchmarks.md, "Port forwarding").
pub const SPLICE_BUFFER: usize = 256 * 1024;

/// A first request line that asks for a tunnel: its id and what it asks for.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub id: Value,
    pub params: Result<Tunnel, String>,
}

/// `Some` when `line` is a `fort/tunnel` request (only a connection's first line is asked).
pub fn request(line: &[u8]) -> Option<Request> {
    // Cheap test first: every other connection starts with `initialize` and should not pay
    // for a second JSON parse.
    let needle = METHOD.as_bytes();
    if !line.windows(needle.len()).any(|w| w == needle) {
        return None;
    }
    let msg: Value = serde_json::from_slice(line).ok()?;
    if msg.get("method").and_then(Value::as_str) != Some(METHOD) {
        return None;
    }
    let id = msg
        .get("id")
        .filter(|i| i.is_string() || i.is_i64() || i.is_u64())
        .cloned()
        .unwrap_or(Value::Null);
    let params = msg
        .get("params")
        .cloned()
        .ok_or_else(|| "fort/tunnel needs params {\"port\": N}".to_string())
        .and_then(|p| {
            serde_json::from_value::<Tunnel>(p)
                .map_err(|e| format!("fort/tunnel takes {{\"port\": 1-65535, \"host\": IP}}: {e}"))
        });
    Some(Request { id, params })
}

/// The guest address a tunnel connects to: `host` must be an IP address (the agent is a
/// static binary and resolves no names); `localhost` is 127.0.0.1.
pub fn target(t: &Tunnel) -> Result<SocketAddr, String> {
    if t.port == 0 {
        return Err("fort/tunnel: port 0 is not a port (1-65535)".into());
    }
    let ip = match t.host.as_deref() {
        None | Some("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("fort/tunnel: host `{h}` is not an IP address"))?,
    };
    Ok(SocketAddr::new(ip, t.port))
}

/// An I/O error as a short lower-case reason, without the `(os error N)` suffix: it ends up
/// in one line on the user's terminal.
pub fn reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut c = text.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Connect to `addr` within [`CONNECT_TIMEOUT`]; the error is the reply's message and reason.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, (String, FailReason)> {
    let fail = |why: String, r| (format!("cannot connect to {addr} in the guest: {why}"), r);
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(fail(reason(&e), FailReason::Refused))
        }
        Ok(Err(e)) => Err(fail(reason(&e), FailReason::Other)),
        Err(_) => Err(fail(
            format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            FailReason::TimedOut,
        )),
    }
}

/// A byte stream of any type, behind one vtable.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A client connection by socket type: unix and TCP ones (the agent outside a VM) are
/// spliced, the rest (vsock) copied. Sorting it out once keeps the tunnel code from being
/// compiled per stream type (the agent must stay under 3 MiB).
enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(TcpStream),
    Other(Box<dyn Duplex>),
}

impl Conn {
    fn of<S: Duplex + 'static>(stream: S) -> Conn {
        let mut slot = Some(stream);
        let any: &mut dyn std::any::Any = &mut slot;
        if let Some(u) = any
            .downcast_mut::<Option<tokio::net::UnixStream>>()
            .and_then(Option::take)
        {
            return Conn::Unix(u);
        }
        if let Some(t) = any
            .downcast_mut::<Option<TcpStream>>()
            .and_then(Option::take)
        {
            return Conn::Tcp(t);
        }
        match slot {
            Some(s) => Conn::Other(Box::new(s)),
            // Taken only by a downcast that returned above.
            None => unreachable!("a downcast took the stream and returned"),
        }
    }

    fn io(&mut self) -> &mut dyn Duplex {
        match self {
            Conn::Unix(s) => s,
            Conn::Tcp(s) => s,
            Conn::Other(s) => s,
        }
    }
}

/// Serve a tunnel on `stream`: connect, answer one line, then splice. `pending` are bytes the
/// client sent after its request line that the server's line reader already took in: they
/// are the first bytes of the stream.
pub async fn serve<S: Duplex + 'static>(stream: S, pending: Vec<u8>, req: Request) {
    serve_conn(Conn::of(stream), pending, req).await;
}

async fn serve_conn(mut conn: Conn, pending: Vec<u8>, req: Request) {
    let stream = conn.io();
    let tcp = match req.params.and_then(|t| target(&t)) {
        Err(msg) => {
            let line = rpc::error(req.id, INVALID_PARAMS, format!("invalid params: {msg}"));
            answer_and_close(stream, line).await;
            return;
        }
        Ok(addr) => match connect(addr).await {
            Ok(tcp) => tcp,
            Err((msg, why)) => {
                let mut line = rpc::error(req.id, TUNNEL_FAILED, msg);
                line["error"]["data"] = json!({ "reason": why });
                answer_and_close(stream, line).await;
                return;
            }
        },
    };
    let mut tcp = tcp;
    let _ = tcp.set_nodelay(true);
    let ok = json!({"jsonrpc": "2.0", "id": req.id, "result": {"connected": true}});
    if write_line(stream, &ok).await.is_err() {
        return;
    }
    if !pending.is_empty() && tcp.write_all(&pending).await.is_err() {
        return;
    }
    // EOF on one side becomes shutdown(Write) on the other while the other direction goes on:
    // half-closed protocols keep working.
    let _ = match &mut conn {
        Conn::Unix(u) => crate::splice::both_ways(u, &tcp).await,
        Conn::Tcp(t) => crate::splice::both_ways(t, &tcp).await,
        Conn::Other(s) => {
            vsock_relay(s, tcp).await;
            Ok((0, 0))
        }
    };
}

/// Relay over vsock. The vsock backends pass no half-close from the guest to the host
/// (vhost-device-vsock 0.3 acts on a SHUTDOWN only when it carries both flags), so a
/// shutdown(SHUT_WR) here would leave the host side waiting forever for the end of an answer
/// that has ended (an HTTP server closing after its reply). So: once the guest server has
/// sent everything and closed, the whole tunnel is closed; the host's EOF is passed to the
/// server as shutdown(Write) while its answer goes on.
async fn vsock_relay(s: &mut Box<dyn Duplex>, tcp: TcpStream) {
    let (sr, mut sw) = tokio::io::split(s);
    let (tr, mut tw) = tcp.into_split();
    let to_server = async {
        let mut sr = tokio::io::BufReader::with_capacity(SPLICE_BUFFER, sr);
        if tokio::io::copy_buf(&mut sr, &mut tw).await.is_ok() {
            let _ = tw.shutdown().await;
        }
        // The answer may still be coming: only the other direction ends the tunnel.
        std::future::pending::<()>().await
    };
    let to_host = async {
        let mut tr = tokio::io::BufReader::with_capacity(SPLICE_BUFFER, tr);
        let _ = tokio::io::copy_buf(&mut tr, &mut sw).await;
        let _ = sw.flush().await;
    };
    tokio::select! {
        () = to_server => {}
        () = to_host => {}
    }
}

async fn write_line(stream: &mut dyn Duplex, msg: &Value) -> std::io::Result<()> {
    let mut line = msg.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).await?;
    stream.flush().await
}

async fn answer_and_close(stream: &mut dyn Duplex, msg: Value) {
    if write_line(stream, &msg).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

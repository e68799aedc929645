//! The host side of `fort/tunnel` (port forwarding without the network): listen on a host
//! address, open a raw stream through the guest agent to a TCP address in the guest, and
//! splice the two with half-closes passed on.

use std::net::SocketAddr;
use std::time::Duration;

use fort_agent_protocol::rpc::TUNNEL_FAILED;
use fort_agent_protocol::tunnel::{FailData, FailReason, Tunnel, METHOD};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::agent::{self, AgentError, Endpoint, Stream};

/// The agent's zero-copy socket splice, shared (one implementation, tested once).
#[path = "../../../guest-agent/src/splice.rs"]
mod splice;

/// The longest `fort/tunnel` reply accepted (one short JSON line; more is a broken agent).
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot listen on {addr} (for {spec}): {reason}")]
    Listen {
        addr: SocketAddr,
        spec: String,
        reason: String,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{guest} in the guest refused the connection (nothing listens there? try the port_check tool)")]
    Refused { guest: SocketAddr },
    /// The agent could not connect for another reason; its message names the address.
    #[error("{0}")]
    Failed(String),
    #[error("the guest agent refused fort/tunnel with error {code}: {message}")]
    Rejected { code: i64, message: String },
    #[error("the guest agent answered fort/tunnel with something that is not a reply: {0:?}")]
    Protocol(String),
}

/// An I/O error as a short lower-case reason without `(os error N)`: it is printed inside a
/// sentence (`cannot listen on …: address already in use`).
pub fn reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.find(" (os error").map_or(&text[..], |i| &text[..i]);
    let mut c = text.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

/// Bind `addr` for the forward `spec`; the error names both.
pub async fn listen(addr: SocketAddr, spec: &str) -> Result<TcpListener, ForwardError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ForwardError::Listen {
            addr,
            spec: spec.to_string(),
            reason: reason(&e),
        })
}

/// Open a tunnel to `guest` (`host: None` means the agent's default address) through the
/// agent at `endpoint`: a fresh connection, the request, and its one reply line.
pub async fn open(
    endpoint: &Endpoint,
    timeout: Duration,
    guest: SocketAddr,
    host: Option<String>,
) -> Result<Stream, ForwardError> {
    let mut stream = agent::connect_stream(endpoint, timeout).await?;
    match &mut stream {
        Stream::Unix(s) => handshake(s, guest, host).await?,
        Stream::Tcp(s) => handshake(s, guest, host).await?,
    }
    Ok(stream)
}

/// Send the `fort/tunnel` request and read its reply line.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    guest: SocketAddr,
    host: Option<String>,
) -> Result<(), ForwardError> {
    let params = Tunnel {
        port: guest.port(),
        host,
    };
    let mut line = json!({"jsonrpc": "2.0", "id": 1, "method": METHOD, "params": params})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    s.write_all(&line).await.map_err(AgentError::Io)?;
    // Byte by byte: what follows the newline is the guest server's (a banner, say).
    let mut reply = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.map_err(AgentError::Io)? == 0 {
            return Err(AgentError::Closed.into());
        }
        if b[0] == b'\n' {
            break;
        }
        if reply.len() >= MAX_REPLY {
            return Err(ForwardError::Protocol(
                String::from_utf8_lossy(&reply[..80]).into_owned(),
            ));
        }
        reply.push(b[0]);
    }
    verdict(&reply, guest)
}

/// What a `fort/tunnel` reply line says: connected, or why not.
pub fn verdict(reply: &[u8], guest: SocketAddr) -> Result<(), ForwardError> {
    let text = || String::from_utf8_lossy(reply).into_owned();
    let v: Value = serde_json::from_slice(reply).map_err(|_| ForwardError::Protocol(text()))?;
    if v.pointer("/result/connected") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    let Some(e) = v.get("error") else {
        return Err(ForwardError::Protocol(text()));
    };
    let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if code != TUNNEL_FAILED {
        return Err(ForwardError::Rejected { code, message });
    }
    let why = e
        .get("data")
        .and_then(|d| serde_json::from_value::<FailData>(d.clone()).ok())
        .map(|d| d.reason);
    Err(match why {
        Some(FailReason::Refused) => ForwardError::Refused { guest },
        _ => ForwardError::Failed(message),
    })
}

/// Copy both ways until both directions ended: EOF from one side becomes shutdown(Write) on
/// the other while the other direction goes on. splice(2), so no byte passes through fort.
/// Through a VM's vsock (`over_vsock`) the host client's EOF is not passed on: the vsock
/// backends turn a half-close into a full close in the guest, which would cut off the
/// answer still coming (docs/cli.md, "fort port-forward"); the guest side's close ends the
/// connection.
pub async fn splice(host: &TcpStream, tunnel: &Stream, over_vsock: bool) -> std::io::Result<()> {
    let _ = host.set_nodelay(true);
    match tunnel {
        Stream::Unix(t) => splice::both_ways_with(host, t, !over_vsock).await,
        Stream::Tcp(t) => splice::both_ways(host, t).await,
    }
    .map(|_| ())
}

/// An error with its causes, `: `-joined (the CLI prints per-connection failures itself).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

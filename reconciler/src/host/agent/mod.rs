//! The host side of the guest agent: reach it (Firecracker-style hybrid vsock socket, unix or
//! tcp), retrying while a VM boots; the MCP session over that stream is [`client`]'s.

mod client;

pub use client::{Client, MountStatus, ToolResult};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The vsock port the agent listens on inside VMs.
pub use fort_agent_protocol::AGENT_PORT;

/// Where the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket the agent listens on itself.
    Unix(PathBuf),
    /// A TCP address the agent listens on.
    Tcp(String),
    /// A Firecracker (or vhost-device-vsock) hybrid vsock socket: `CONNECT <port>\n` first.
    VsockUds(PathBuf),
}

impl std::str::FromStr for Endpoint {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Endpoint::Unix(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            Ok(Endpoint::Tcp(a.to_string()))
        } else if let Some(p) = s.strip_prefix("vsock-uds:") {
            Ok(Endpoint::VsockUds(PathBuf::from(p)))
        } else {
            Err(AgentError::Endpoint(s.to_string()))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::VsockUds(p) => write!(f, "vsock-uds:{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("`{0}` is not an agent address: expected unix:PATH, tcp:HOST:PORT or vsock-uds:PATH")]
    Endpoint(String),
    #[error("cannot reach the guest agent at {endpoint} within {}", humantime::format_duration(*waited))]
    Unreachable {
        endpoint: String,
        waited: Duration,
        #[source]
        last: std::io::Error,
    },
    #[error("the vsock socket {endpoint} refused CONNECT {port}: {answer:?}")]
    Handshake {
        endpoint: String,
        port: u32,
        answer: String,
    },
    #[error("connection to the guest agent failed")]
    Io(#[from] std::io::Error),
    #[error("the guest agent closed the connection")]
    Closed,
    #[error("the guest agent sent something that is not JSON-RPC: {0}")]
    Protocol(String),
    #[error("the guest agent answered {method} with error {code}: {message}")]
    Rpc {
        method: String,
        code: i64,
        message: String,
    },
    /// A tool answered with `isError` (its text says why, e.g. "cannot run `x`: …").
    #[error("{message}")]
    Tool { tool: String, message: String },
    #[error("the guest agent's {tool} result does not match the protocol: {error}")]
    Result { tool: String, error: String },
}

impl AgentError {
    /// The connection itself failed (the agent or the VM went away), as opposed to a request
    /// the agent refused: what `fort exec` and `fort shell` answer with exit code 255.
    pub fn is_lost(&self) -> bool {
        matches!(self, AgentError::Closed | AgentError::Io(_))
    }
}

/// A byte stream to the agent.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Open a stream to the agent, retrying every 100 ms (each attempt bounded to 1 s) until
/// `timeout`: while a VM boots its socket may be missing, refuse, or reset the CONNECT.
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Box<dyn Io>, AgentError> {
    Ok(match connect_stream(endpoint, timeout).await? {
        Stream::Unix(s) => Box::new(s),
        Stream::Tcp(s) => Box::new(s),
    })
}

/// A stream to the agent as its socket type (every endpoint is one or the other; a hybrid
/// vsock socket is a unix socket after its handshake): port forwarding splices its fd.
pub enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// [`connect`], keeping the socket's type.
pub async fn connect_stream(endpoint: &Endpoint, timeout: Duration) -> Result<Stream, AgentError> {
    let start = Instant::now();
    // Each try is bounded, and the bound doubles (1 s, 2 s, 4 s…, never past the deadline):
    // a guest that is not listening yet answers at once (reset, empty read) and is retried
    // quickly, while a slow one — TCG on a loaded host — still gets the time its handshake
    // takes instead of failing every 1 s try forever.
    let mut bound = Duration::from_secs(1);
    loop {
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(100));
        let attempt = tokio::time::timeout(bound.min(left), connect_once(endpoint)).await;
        bound = (bound * 2).min(Duration::from_secs(16));
        let err = match attempt {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(AgentError::Io(e))) => e,
            Ok(Err(other)) => return Err(other),
            Err(_) => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect attempt timed out")
            }
        };
        if start.elapsed() >= timeout {
            return Err(AgentError::Unreachable {
                endpoint: endpoint.to_string(),
                waited: Duration::from_millis(timeout.as_millis() as u64),
                last: err,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect_once(endpoint: &Endpoint) -> Result<Stream, AgentError> {
    match endpoint {
        Endpoint::Unix(p) => Ok(Stream::Unix(tokio::net::UnixStream::connect(p).await?)),
        Endpoint::Tcp(a) => Ok(Stream::Tcp(
            tokio::net::TcpStream::connect(a.as_str()).await?,
        )),
        Endpoint::VsockUds(p) => {
            let mut s = tokio::net::UnixStream::connect(p).await?;
            s.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
                .await?;
            // Byte by byte: whatever follows the newline is the agent's, not ours to buffer.
            let mut reply = HandshakeReply::default();
            let verdict = loop {
                let mut b = [0u8; 1];
                if s.read(&mut b).await? == 0 {
                    return Err(AgentError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "closed during the vsock handshake (the guest is not listening yet)",
                    )));
                }
                if let Some(v) = reply.push(b[0]) {
                    break v;
                }
            };
            if let Err(answer) = verdict {
                return Err(AgentError::Handshake {
                    endpoint: endpoint.to_string(),
                    port: AGENT_PORT,
                    answer,
                });
            }
            Ok(Stream::Unix(s))
        }
    }
}

/// How much of a hybrid-vsock handshake reply is kept while waiting for its newline: a peer
/// that never sends one is judged on what it sent (one byte more, the next, ends the wait).
pub const HANDSHAKE_MAX: usize = 128;

/// The reply to `CONNECT <port>\n` (`OK <host port>\n` when accepted), fed one byte at a time
/// so that nothing after its newline is consumed.
#[derive(Debug, Default)]
pub struct HandshakeReply {
    answer: Vec<u8>,
}

impl HandshakeReply {
    /// Take the next byte; once the reply is complete (its newline, or a byte arriving after
    /// more than [`HANDSHAKE_MAX`] were kept), `Ok` if it accepted the connection, else the
    /// answer as text.
    pub fn push(&mut self, b: u8) -> Option<Result<(), String>> {
        if b != b'\n' && self.answer.len() <= HANDSHAKE_MAX {
            self.answer.push(b);
            return None;
        }
        let answer = String::from_utf8_lossy(&self.answer).into_owned();
        Some(if answer.starts_with("OK ") {
            Ok(())
        } else {
            Err(answer)
        })
    }
}

/// A whole handshake reply from `bytes`: the verdict and how many bytes it took, or `None` when
/// `bytes` end first (the connection closed mid-reply).
pub fn handshake_reply(bytes: &[u8]) -> Option<(Result<(), String>, usize)> {
    let mut reply = HandshakeReply::default();
    bytes
        .iter()
        .enumerate()
        .find_map(|(i, &b)| reply.push(b).map(|v| (v, i + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_replies() {
        assert_eq!(handshake_reply(b"OK 1073741824\n"), Some((Ok(()), 14)));
        // What follows the newline is the agent's and is not consumed.
        assert_eq!(handshake_reply(b"OK 5\n{\"jsonrpc\"}\n"), Some((Ok(()), 5)));
        assert_eq!(
            handshake_reply(b"ERR no listener\nOK 1\n"),
            Some((Err("ERR no listener".to_string()), 16))
        );
        assert_eq!(handshake_reply(b"\n"), Some((Err(String::new()), 1)));
        // Closed before the newline: no verdict yet.
        assert_eq!(handshake_reply(b"OK 1"), None);
        assert_eq!(handshake_reply(b""), None);
        // No newline: judged after HANDSHAKE_MAX + 1 bytes, on the next one.
        let long = [b'x'; HANDSHAKE_MAX + 10];
        assert_eq!(
            handshake_reply(&long),
            Some((Err("x".repeat(HANDSHAKE_MAX + 1)), HANDSHAKE_MAX + 2))
        );
        assert_eq!(handshake_reply(&long[..HANDSHAKE_MAX + 1]), None);
    }
}

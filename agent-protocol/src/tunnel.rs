//! `fort/tunnel`: turn a fresh agent connection into a raw byte stream to a TCP address in the
//! guest (what `fort port-forward` does per accepted connection).
//!
//! It must be the first request on its connection and needs no `initialize`:
//! `{"jsonrpc":"2.0","id":1,"method":"fort/tunnel","params":{"port":80}}\n`. The agent
//! connects to `host:port` (default 127.0.0.1) and answers one line: a result
//! `{"connected":true}` after which every byte is the TCP stream's, both ways (a half-close
//! on one side is passed on to the other), or an error ([`crate::rpc::TUNNEL_FAILED`], the
//! reason in the message, its kind as `data.reason`: [`FailReason`]) after which the agent
//! closes the connection. Bytes the client sends right after the request line (before the
//! reply) are the stream's first bytes.

use serde::{Deserialize, Serialize};

pub const METHOD: &str = "fort/tunnel";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    pub port: u16,
    /// An address in the guest (default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The default guest address of a tunnel or `port_check`.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// Why a tunnel did not connect: `error.data.reason` of a [`crate::rpc::TUNNEL_FAILED`] reply,
/// so the host can say "nothing listens there" without parsing the message.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// Nothing listens on that port (the connect was refused).
    Refused,
    /// The connect did not complete in time (a filtered port, an address nobody answers).
    TimedOut,
    /// Anything else (no route, address not available, …): the message says what.
    Other,
}

/// The `data` of a [`crate::rpc::TUNNEL_FAILED`] error.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailData {
    pub reason: FailReason,
}

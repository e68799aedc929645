//! The guest agent's wire protocol, shared by the agent (`fort-guest-agent`) and the host
//! (`fort`) so the two cannot drift: MCP revisions and JSON-RPC error codes (`rpc`), tool
//! names, argument and result types (`tools`, `process`), their JSON Schemas (`schema`), and
//! the raw-stream tunnel used by port forwarding (`tunnel`).
//!
//! Dependencies stay at serde and serde_json: this crate is linked into the static agent,
//! which must stay small (docs/guest-agent.md).

pub mod identity;
pub mod process;
pub mod rpc;
pub mod schema;
pub mod tools;
pub mod tunnel;

/// The vsock port the agent listens on inside VMs (and connects out to for its hello).
pub const AGENT_PORT: u32 = 52;

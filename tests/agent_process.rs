//! Background processes of the guest agent (`process_*` tools) with the agent as a normal
//! process on a unix socket: output read incrementally and across connections, signals,
//! stdin, terminals, limits and bad input — each asserted exactly.

#![allow(clippy::unwrap_used)]

#[path = "common/agent_conn.rs"]
mod agent_conn;

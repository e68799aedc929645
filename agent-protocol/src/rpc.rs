//! MCP revisions and JSON-RPC 2.0 error codes.

/// MCP revisions the agent speaks, newest first. `initialize` echoes the client's revision
/// when it is one of these, else offers the newest.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The revision the host asks for.
pub const HOST_PROTOCOL_VERSION: &str = "2025-06-18";

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// Like LSP's: a request other than `initialize`/`ping` before `initialize`.
pub const NOT_INITIALIZED: i64 = -32002;
/// `fort/tunnel` could not connect to the guest address it names.
pub const TUNNEL_FAILED: i64 = -32010;

/// The notification a streaming `run_command` sends per chunk of output.
pub const OUTPUT_NOTIFICATION: &str = "notifications/fort/output";

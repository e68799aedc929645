//! MCP over newline-delimited JSON-RPC 2.0: parse one line, dispatch, build the response.

use serde_json::{json, Value};

use crate::tools;

pub use fort_agent_protocol::rpc::{
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_INITIALIZED, PARSE_ERROR,
    PROTOCOL_VERSIONS,
};

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct Session {
    pub initialized: bool,
}

pub fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// What a line asks for, decided without running anything.
pub enum Parsed {
    /// Answer this right away (errors, initialize, ping, tools/list).
    Reply(Value),
    /// A notification: no answer.
    Nothing,
    /// A tool call: run it (possibly concurrently with others), then answer.
    Call {
        id: Value,
        name: String,
        args: Value,
    },
    /// `fort/identity` (no `initialize` needed): apply it (it changes the system), then answer
    /// with `identity_result`. Parsing never applies it, so fuzzing `parse` is harmless.
    Identity {
        id: Value,
        args: fort_agent_protocol::identity::IdentityArgs,
    },
}

/// JSON-RPC ids this agent answers with: strings and integers (null is only for errors).
fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

/// Parse and, for the cheap methods, answer one request line.
pub fn parse(session: &mut Session, line: &[u8]) -> Parsed {
    let msg: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Parsed::Reply(error(Value::Null, PARSE_ERROR, format!("parse error: {e}")))
        }
    };
    let Some(obj) = msg.as_object() else {
        return Parsed::Reply(error(
            Value::Null,
            INVALID_REQUEST,
            "invalid request: expected a JSON object (batches are not supported)",
        ));
    };
    let id = obj.get("id").cloned();
    // An error about the request itself echoes its id only if that is a valid one: JSON-RPC
    // answers an id it cannot use (an object, a float, …) with null.
    let error_id = || id.clone().filter(valid_id).unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Parsed::Reply(error(
            error_id(),
            INVALID_REQUEST,
            "invalid request: \"jsonrpc\" must be \"2.0\"",
        ));
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        if obj.contains_key("result") || obj.contains_key("error") {
            // A response to something we never asked: ignore, as JSON-RPC allows.
            return Parsed::Nothing;
        }
        return Parsed::Reply(error(
            error_id(),
            INVALID_REQUEST,
            "invalid request: missing \"method\"",
        ));
    };
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    let Some(id) = id else {
        // Notifications: `notifications/initialized`, `notifications/cancelled`, … need no answer.
        return Parsed::Nothing;
    };
    if !valid_id(&id) {
        return Parsed::Reply(error(
            Value::Null,
            INVALID_REQUEST,
            "invalid request: \"id\" must be a string or an integer",
        ));
    }
    match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = asked
                .filter(|v| PROTOCOL_VERSIONS.contains(v))
                .unwrap_or(PROTOCOL_VERSIONS[0]);
            session.initialized = true;
            let mounts = crate::init::mounts::reports();
            let mut instructions = String::from("A fort VM. run_command runs a program to its end; process_start runs one in the background (a server, a watcher, a shell with `pty`): it outlives this connection, process_output reads its output from a cursor, process_input writes to it, process_signal stops it, process_list shows them all. file_read, file_write, file_delete, list_dir and stat work on its filesystem; port_check says whether a port is listening and reachable.");
            for m in &mounts {
                match &m.error {
                    None => instructions
                        .push_str(&format!(" Drive {} is mounted at {}.", m.drive, m.path)),
                    Some(e) => instructions.push_str(&format!(
                        " Drive {} could not be mounted at {}: {e}.",
                        m.drive, m.path
                    )),
                }
            }
            let mut r = json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "fort-guest-agent", "version": env!("CARGO_PKG_VERSION")},
                "instructions": instructions,
            });
            // fort's own: what this boot mounted (the host records and shows failures).
            if !mounts.is_empty() {
                r["_meta"] = json!({ "fort/mounts": mounts });
            }
            Parsed::Reply(result(id, r))
        }
        "ping" => Parsed::Reply(result(id, json!({}))),
        // A tunnel is a whole connection (server.rs turns a first line into one).
        fort_agent_protocol::tunnel::METHOD => Parsed::Reply(error(
            id,
            INVALID_REQUEST,
            "invalid request: fort/tunnel must be the first request on a new connection",
        )),
        // fort's readiness code calls it on a fresh connection, before any `initialize`.
        fort_agent_protocol::identity::METHOD => match serde_json::from_value(params) {
            Ok(args) => Parsed::Identity { id, args },
            Err(e) => Parsed::Reply(error(id, INVALID_PARAMS, format!("invalid params: {e}"))),
        },
        _ if !session.initialized => Parsed::Reply(error(
            id,
            NOT_INITIALIZED,
            format!("not initialized: send \"initialize\" before \"{method}\""),
        )),
        "tools/list" => Parsed::Reply(result(id, json!({"tools": tools::list()}))),
        "tools/call" => {
            let Some(name) = params.get("name").and_then(Value::as_str) else {
                return Parsed::Reply(error(
                    id,
                    INVALID_PARAMS,
                    "invalid params: tools/call needs \"name\"",
                ));
            };
            if !tools::exists(name) {
                return Parsed::Reply(error(
                    id,
                    INVALID_PARAMS,
                    format!("invalid params: unknown tool \"{name}\""),
                ));
            }
            let args = params
                .get("arguments")
                .cloned()
                .unwrap_or_else(|| json!({}));
            if !args.is_object() {
                return Parsed::Reply(error(
                    id,
                    INVALID_PARAMS,
                    "invalid params: \"arguments\" must be an object",
                ));
            }
            Parsed::Call {
                id,
                name: name.to_string(),
                args,
            }
        }
        other => Parsed::Reply(error(
            id,
            METHOD_NOT_FOUND,
            format!("method not found: {other}"),
        )),
    }
}

/// The response to a finished `fort/identity`.
pub fn identity_result(id: Value, r: &fort_agent_protocol::identity::IdentityResult) -> Value {
    result(id, serde_json::to_value(r).unwrap_or(Value::Null))
}

/// The response to a finished tool call.
pub fn call_result(id: Value, outcome: Result<tools::Output, tools::ToolError>) -> Value {
    match outcome {
        Ok(out) => result(
            id,
            json!({
                "content": [{"type": "text", "text": out.text}],
                "structuredContent": out.structured,
                "isError": false,
            }),
        ),
        Err(tools::ToolError::Params(m)) => {
            error(id, INVALID_PARAMS, format!("invalid params: {m}"))
        }
        Err(tools::ToolError::Failed(m)) => result(
            id,
            json!({
                "content": [{"type": "text", "text": m}],
                "structuredContent": {"error": m},
                "isError": true,
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &str) -> Value {
        match parse(&mut Session::default(), line.as_bytes()) {
            Parsed::Reply(v) => v,
            Parsed::Nothing => panic!("no reply to {line}"),
            Parsed::Call { .. } => panic!("a call from {line}"),
            Parsed::Identity { .. } => panic!("an identity call from {line}"),
        }
    }

    /// Found by the agent_rpc fuzz target: an invalid request echoed an id that JSON-RPC
    /// does not allow (here an object) instead of null.
    #[test]
    fn fuzz_invalid_request_with_object_id_answers_null_id() {
        assert_eq!(
            reply(r#"{"jsonrpc":"2.0","id":{"protocolVersion":"2025-06-18"}}"#),
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": INVALID_REQUEST, "message": "invalid request: missing \"method\""}})
        );
        assert_eq!(
            reply(r#"{"jsonrpc":"1.0","id":[1],"method":"ping"}"#),
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": INVALID_REQUEST, "message": "invalid request: \"jsonrpc\" must be \"2.0\""}})
        );
        // Valid ids are still echoed.
        assert_eq!(reply(r#"{"jsonrpc":"2.0","id":7}"#)["id"], json!(7));
        assert_eq!(reply(r#"{"id":"a"}"#)["id"], json!("a"));
    }

    /// `fort/identity` needs no `initialize`; bad params are refused without applying anything.
    #[test]
    fn identity_needs_no_initialize_and_checks_its_params() {
        let mut s = Session::default();
        let line =
            br#"{"jsonrpc":"2.0","id":3,"method":"fort/identity","params":{"time_unix_ns":5}}"#;
        match parse(&mut s, line) {
            Parsed::Identity { id, args } => {
                assert_eq!(id, json!(3));
                assert_eq!(args.time_unix_ns, 5);
            }
            _ => panic!("not an identity call"),
        }
        let v = reply(
            r#"{"jsonrpc":"2.0","id":4,"method":"fort/identity","params":{"time_unix_ns":5,"x":1}}"#,
        );
        assert_eq!(v["error"]["code"], json!(INVALID_PARAMS));
        assert!(!s.initialized);
        let tools = serde_json::to_string(&tools::list()).unwrap_or_default();
        assert!(!tools.contains("fort/identity"));
    }
}

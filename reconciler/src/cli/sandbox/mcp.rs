//! MCP's JSON-RPC for the sandbox service: `initialize`, `ping`, `tools/list`, `tools/call`,
//! one message at a time (the HTTP transport's handler), and the stdio transport of
//! `fort mcp --host` (newline-delimited, calls served concurrently).

use std::sync::Arc;
use std::time::Instant;

use fort_agent_protocol::rpc::{
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, PROTOCOL_VERSIONS,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::{tools, Core, ToolError};

const INSTRUCTIONS: &str = "fort on this host makes Linux VMs (sandboxes) on demand. sandbox_create makes one from a template and returns its id once it is ready; pass that id as `sandbox` to run_command, file_read, file_write, process_start and the other tools to work in it. Each sandbox is destroyed when its ttl runs out (sandbox_extend gives it more time), after its idle timeout, or by sandbox_destroy. sandbox_list shows them with the seconds left.";

fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn result(id: Value, r: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": r})
}

/// Answer one JSON-RPC message; `None` for a notification or a response.
pub async fn handle(core: &Core, msg: Value) -> Option<Value> {
    let Some(obj) = msg.as_object() else {
        return Some(error(
            Value::Null,
            INVALID_REQUEST,
            "invalid request: expected a JSON object (batches are not supported)",
        ));
    };
    let id = obj.get("id").cloned();
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        // A response to something never asked (this server sends no requests): ignored.
        return id.is_none().then(|| {
            error(
                Value::Null,
                INVALID_REQUEST,
                "invalid request: missing \"method\"",
            )
        });
    };
    let id = id?;
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    Some(match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = asked
                .filter(|v| PROTOCOL_VERSIONS.contains(v))
                .unwrap_or(PROTOCOL_VERSIONS[0]);
            result(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "fort", "version": crate::VERSION},
                    "instructions": INSTRUCTIONS,
                }),
            )
        }
        "ping" => result(id, json!({})),
        "tools/list" => result(id, json!({"tools": tools::list()})),
        "tools/call" => {
            let Some(name) = params.get("name").and_then(Value::as_str) else {
                return Some(error(
                    id,
                    INVALID_PARAMS,
                    "invalid params: tools/call needs \"name\"",
                ));
            };
            if !tools::exists(name) {
                return Some(error(
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
                return Some(error(
                    id,
                    INVALID_PARAMS,
                    "invalid params: \"arguments\" must be an object",
                ));
            }
            let sandbox = args
                .get("sandbox")
                .or_else(|| args.get("id"))
                .or_else(|| args.get("template"))
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string();
            let t0 = Instant::now();
            let out = tools::call(core, name, args).await;
            let ms = t0.elapsed().as_millis();
            match out {
                Ok(r) => {
                    tracing::info!("tool {name} sandbox {sandbox}: ok ({ms} ms)");
                    result(id, r)
                }
                Err(ToolError::Params(m)) => {
                    tracing::info!("tool {name} sandbox {sandbox}: invalid params: {m}");
                    error(id, INVALID_PARAMS, format!("invalid params: {m}"))
                }
                Err(ToolError::Failed(m)) => {
                    tracing::info!("tool {name} sandbox {sandbox}: failed ({ms} ms): {m}");
                    result(
                        id,
                        json!({
                            "content": [{"type": "text", "text": m}],
                            "structuredContent": {"error": m},
                            "isError": true,
                        }),
                    )
                }
            }
        }
        other => error(id, METHOD_NOT_FOUND, format!("method not found: {other}")),
    })
}

/// `fort mcp --host`: MCP on stdin/stdout until stdin closes; calls in flight then finish.
pub async fn serve_stdio(core: Arc<Core>) -> std::io::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(v) = rx.recv().await {
            let mut line = v.to_string();
            line.push('\n');
            if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut calls = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(error(Value::Null, PARSE_ERROR, format!("parse error: {e}")));
                continue;
            }
        };
        let (core, tx) = (core.clone(), tx.clone());
        calls.spawn(async move {
            if let Some(r) = handle(&core, msg).await {
                let _ = tx.send(r);
            }
        });
    }
    while calls.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
    Ok(())
}

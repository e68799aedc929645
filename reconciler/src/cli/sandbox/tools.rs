//! The host's MCP tools: `sandbox_create/list/extend/destroy`, and every guest agent tool
//! (but `shutdown`) with a `sandbox` argument naming where it runs.

use serde_json::{json, Value};

use super::{Core, ToolError};

/// Agent tools the host does not relay: a sandbox ends by `sandbox_destroy` or its ttl.
const NOT_RELAYED: &[&str] = &[fort_agent_protocol::tools::SHUTDOWN];

fn sandbox_tools() -> Value {
    let id =
        json!({"type": "string", "description": "The sandbox's id, as sandbox_create returned it"});
    let ttl = json!({"type": "string", "description": "How long it lives from now, e.g. \"20m\", \"2h\" (at most the template's max_ttl)"});
    json!([
        {
            "name": "sandbox_create",
            "title": "Create a sandbox",
            "description": "Make a new Linux VM from one of the host's sandbox templates and wait until its agent answers. Returns its id (pass it as `sandbox` to run_command, file_read, process_start, …), IP address, the time it took and when it expires. It is destroyed when its ttl runs out, after idle_timeout without requests, or by sandbox_destroy.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "template": {"type": "string", "description": "A [sandbox.NAME] of the host's manifest"},
                    "ttl": ttl,
                    "name": {"type": "string", "description": "Its id (a VM name); default TEMPLATE-XXXX"}
                },
                "required": ["template"],
                "additionalProperties": false
            }
        },
        {
            "name": "sandbox_list",
            "title": "List sandboxes",
            "description": "Every sandbox on this host: id, template, state, IP, when it expires and the seconds left.",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": false}
        },
        {
            "name": "sandbox_extend",
            "title": "Extend a sandbox",
            "description": "Set a sandbox to expire `ttl` from now.",
            "inputSchema": {
                "type": "object",
                "properties": {"id": id, "ttl": ttl},
                "required": ["id", "ttl"],
                "additionalProperties": false
            }
        },
        {
            "name": "sandbox_destroy",
            "title": "Destroy a sandbox",
            "description": "Destroy a sandbox now: its VM, drives and network attachment. Its data is gone.",
            "inputSchema": {
                "type": "object",
                "properties": {"id": id},
                "required": ["id"],
                "additionalProperties": false
            }
        }
    ])
}

/// `tools/list`.
pub fn list() -> Value {
    let mut out = match sandbox_tools() {
        Value::Array(v) => v,
        _ => Vec::new(),
    };
    if let Value::Array(agent) = fort_agent_protocol::schema::tools() {
        for mut t in agent {
            let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
            if NOT_RELAYED.contains(&name) {
                continue;
            }
            if let Some(s) = t.get_mut("inputSchema").and_then(Value::as_object_mut) {
                if let Some(p) = s.get_mut("properties").and_then(Value::as_object_mut) {
                    p.insert(
                        "sandbox".into(),
                        json!({"type": "string", "description": "The sandbox to run in (an id from sandbox_create)"}),
                    );
                }
                let mut req = s
                    .get("required")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                req.insert(0, json!("sandbox"));
                s.insert("required".into(), Value::Array(req));
            }
            out.push(t);
        }
    }
    Value::Array(out)
}

pub fn exists(name: &str) -> bool {
    list()
        .as_array()
        .is_some_and(|v| v.iter().any(|t| t["name"] == name))
}

fn string<'a>(args: &'a Value, key: &str, tool: &str) -> Result<&'a str, ToolError> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::Params(format!("{tool} needs \"{key}\" (a string)")))
}

fn optional<'a>(args: &'a Value, key: &str) -> Result<Option<&'a str>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ToolError::Params(format!("\"{key}\" must be a string"))),
    }
}

/// Run one tool; `Ok` is the whole MCP result (`content`, `structuredContent`, `isError`).
pub async fn call(core: &Core, name: &str, args: Value) -> Result<Value, ToolError> {
    let structured = match name {
        "sandbox_create" => {
            let t = string(&args, "template", name)?;
            core.create(t, optional(&args, "ttl")?, optional(&args, "name")?)
                .await?
        }
        "sandbox_list" => core.list()?,
        "sandbox_extend" => core.extend(string(&args, "id", name)?, string(&args, "ttl", name)?)?,
        "sandbox_destroy" => core.destroy(string(&args, "id", name)?).await?,
        _ => return core.relay(name, args).await,
    };
    Ok(json!({
        "content": [{"type": "text", "text": structured.to_string()}],
        "structuredContent": structured,
        "isError": false,
    }))
}

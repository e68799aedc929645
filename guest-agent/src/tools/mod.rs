//! The tools the agent serves: their JSON Schemas (`tools/list`) and dispatch (`tools/call`).

mod command;
mod files;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// A tool's successful result: text for humans and models, structured data for programs.
pub struct Output {
    pub text: String,
    pub structured: Value,
}

#[derive(Debug)]
pub enum ToolError {
    /// The arguments do not fit the tool's schema (a JSON-RPC -32602 error).
    Params(String),
    /// The tool ran and failed (an `isError` result the model can read).
    Failed(String),
}

/// Where a running tool may send notifications about the request it serves (streamed output).
#[derive(Clone)]
pub struct Notifier {
    pub tx: tokio::sync::mpsc::Sender<Value>,
    pub request: Value,
}

impl Notifier {
    pub async fn send(&self, method: &str, mut params: Value) {
        params["requestId"] = self.request.clone();
        let _ = self
            .tx
            .send(json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await;
    }
}

pub(crate) fn args<T: DeserializeOwned>(v: Value) -> Result<T, ToolError> {
    serde_json::from_value(v).map_err(|e| ToolError::Params(e.to_string()))
}

/// The agent's shutdown request, observed by the server loop.
pub static SHUTDOWN: tokio::sync::Notify = tokio::sync::Notify::const_new();

const NAMES: &[&str] = &[
    "run_command",
    "file_read",
    "file_write",
    "file_delete",
    "list_dir",
    "stat",
    "shutdown",
];

pub fn exists(name: &str) -> bool {
    NAMES.contains(&name)
}

pub async fn call(name: &str, a: Value, notify: Option<Notifier>) -> Result<Output, ToolError> {
    match name {
        "run_command" => command::run(args(a)?, notify).await,
        "file_read" => files::read(args(a)?).await,
        "file_write" => files::write(args(a)?).await,
        "file_delete" => files::delete(args(a)?).await,
        "list_dir" => files::list_dir(args(a)?).await,
        "stat" => files::stat(args(a)?).await,
        "shutdown" => {
            let _: Empty = args(a)?;
            SHUTDOWN.notify_one();
            Ok(Output {
                text: "shutting down".into(),
                structured: json!({"shutting_down": true}),
            })
        }
        other => Err(ToolError::Params(format!("unknown tool \"{other}\""))),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// `tools/list`: every tool with its input schema.
pub fn list() -> Value {
    let path = json!({"type": "string", "description": "Absolute path, or relative to /"});
    json!([
        {
            "name": "run_command",
            "title": "Run a command",
            "description": "Run a program in the VM and return its exit code, stdout and stderr. Give `argv` (no shell) or `command` (run by /bin/sh -c). The whole process group is killed at `timeout_secs`. Output beyond `max_output_bytes` per stream is dropped and flagged.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "Program and arguments, run without a shell"},
                    "command": {"type": "string", "description": "A shell command line for /bin/sh -c"},
                    "cwd": {"type": "string", "description": "Working directory (default /)"},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Extra environment variables"},
                    "stdin": {"type": "string", "description": "Text written to the program's stdin"},
                    "timeout_secs": {"type": "number", "minimum": 0, "description": "Kill after this many seconds (default 60)"},
                    "max_output_bytes": {"type": "integer", "minimum": 0, "description": "Cap per stream (default 1048576)"},
                    "stream": {"type": "boolean", "description": "Also send output as it comes, in notifications/fort/output {requestId, stream, data} (default false)"}
                },
                "additionalProperties": false
            }
        },
        {
            "name": "file_read",
            "title": "Read a file",
            "description": "Read part or all of a file, as UTF-8 text or base64.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "path": path,
                    "offset": {"type": "integer", "minimum": 0, "description": "Byte offset (default 0)"},
                    "length": {"type": "integer", "minimum": 0, "description": "Bytes to read (default and maximum 4194304)"},
                    "encoding": {"type": "string", "enum": ["utf-8", "base64"], "description": "default utf-8"}
                },
                "required": ["path"],
                "additionalProperties": false
            }
        },
        {
            "name": "file_write",
            "title": "Write a file",
            "description": "Write a file, atomically replacing it by default (write to a temp file, then rename), or append.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "path": path,
                    "content": {"type": "string"},
                    "encoding": {"type": "string", "enum": ["utf-8", "base64"], "description": "of `content`, default utf-8"},
                    "mode": {"type": "string", "description": "Octal permissions for a new file, e.g. \"0644\""},
                    "create_parents": {"type": "boolean", "description": "Create missing parent directories (default false)"},
                    "append": {"type": "boolean", "description": "Append instead of replacing (default false)"},
                    "atomic": {"type": "boolean", "description": "Replace via temp file + rename (default true; ignored when appending)"}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }
        },
        {
            "name": "file_delete",
            "title": "Delete a file or directory",
            "description": "Delete a file, symlink or empty directory; a non-empty directory needs `recursive`.",
            "inputSchema": {
                "type": "object",
                "properties": {"path": path, "recursive": {"type": "boolean", "description": "default false"}},
                "required": ["path"],
                "additionalProperties": false
            }
        },
        {
            "name": "list_dir",
            "title": "List a directory",
            "description": "Entries of a directory with their type, size, mode and modification time.",
            "inputSchema": {
                "type": "object",
                "properties": {"path": path},
                "required": ["path"],
                "additionalProperties": false
            }
        },
        {
            "name": "stat",
            "title": "Stat a path",
            "description": "Type, size, mode, owner and modification time of a path (symlinks are not followed).",
            "inputSchema": {
                "type": "object",
                "properties": {"path": path},
                "required": ["path"],
                "additionalProperties": false
            }
        },
        {
            "name": "shutdown",
            "title": "Power off the VM",
            "description": "Stop every process, sync and unmount filesystems, and power the VM off (used by the host to stop it).",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": false}
        }
    ])
}

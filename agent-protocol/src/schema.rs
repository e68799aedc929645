//! The tools' JSON Schemas, as `tools/list` returns them.

use serde_json::{json, Value};

/// `tools/list`: every tool with its input schema, in [`crate::tools::NAMES`] order.
pub fn tools() -> Value {
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
                    "cwd": {"type": "string", "description": "Working directory (default: the image's WorkingDir, else /)"},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Extra environment variables (over the image's Env)"},
                    "user": {"type": "string", "description": "Run as this user: a name or uid[:gid] (default: the image's User, else root)"},
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
            "name": "process_start",
            "title": "Start a background process",
            "description": "Start a program and return its id at once; it keeps running after this call and after the client disconnects. Read its output with process_output, write to it with process_input, signal it with process_signal; process_list shows every process (running, and finished ones for 10 minutes). Give `argv` (no shell) or `command` (run by /bin/sh -c). With `pty` it gets a pseudo-terminal (for shells and programs that want a TTY); with `pty` and neither `argv` nor `command` it runs the user's login shell (from /etc/passwd, else /bin/sh). Output is kept in a ring of `buffer_bytes` (default 8 MiB): the oldest is dropped first, and process_output says how much.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "Program and arguments, run without a shell"},
                    "command": {"type": "string", "description": "A shell command line for /bin/sh -c"},
                    "cwd": {"type": "string", "description": "Working directory (default: the image's WorkingDir, else /)"},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Extra environment variables (over the image's Env)"},
                    "user": {"type": "string", "description": "Run as this user: a name or uid[:gid] (default: the image's User, else root)"},
                    "pty": {"type": "object", "properties": {"rows": {"type": "integer", "minimum": 1, "maximum": 10000}, "cols": {"type": "integer", "minimum": 1, "maximum": 10000}}, "required": ["rows", "cols"], "additionalProperties": false, "description": "Run on a pseudo-terminal of this size (TERM defaults to xterm-256color); output then comes as stream \"pty\". Without argv and command: the user's login shell"},
                    "stdin": {"type": "boolean", "description": "Keep stdin open for process_input (default true; false: /dev/null)"},
                    "buffer_bytes": {"type": "integer", "minimum": 1, "maximum": 67108864, "description": "Output kept for process_output (default 8388608)"},
                    "timeout_secs": {"type": "number", "minimum": 0, "description": "Kill the process group after this many seconds (default: never)"}
                },
                "additionalProperties": false
            }
        },
        {
            "name": "process_output",
            "title": "Read a process's output",
            "description": "Output of a process from `cursor` on (0: from its start; pass the returned `cursor` to continue). When there is none yet, waits up to `wait_ms` for some or for the process to end. Returns chunks tagged stdout, stderr or pty, whether it is still running, its exit code or signal once ended, `eof` when it ended and all output was read, and `dropped` when output before the cursor was no longer kept.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0, "description": "The id process_start returned"},
                    "cursor": {"type": "integer", "minimum": 0, "description": "Where to read from (default 0)"},
                    "wait_ms": {"type": "integer", "minimum": 0, "maximum": 60000, "description": "Wait this long for output when there is none (default 0)"},
                    "max_bytes": {"type": "integer", "minimum": 1, "maximum": 4194304, "description": "At most this much output (default 1048576)"},
                    "encoding": {"type": "string", "enum": ["utf-8", "base64"], "description": "of the chunks' data, default utf-8"}
                },
                "required": ["id"],
                "additionalProperties": false
            }
        },
        {
            "name": "process_input",
            "title": "Write to a process's stdin",
            "description": "Write `data` to a process's stdin (or its terminal), and with `close` close stdin afterwards (EOF; on a terminal `close` sends ^D, which ends input at the start of a line).",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0},
                    "data": {"type": "string"},
                    "encoding": {"type": "string", "enum": ["utf-8", "base64"], "description": "of `data`, default utf-8"},
                    "close": {"type": "boolean", "description": "Close stdin after writing (default false)"}
                },
                "required": ["id"],
                "additionalProperties": false
            }
        },
        {
            "name": "process_signal",
            "title": "Signal a process",
            "description": "Send a signal (default TERM) to a process's whole process group, or with `process_only` to the process alone.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0},
                    "signal": {"type": "string", "description": "TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT (with or without SIG), or a number"},
                    "process_only": {"type": "boolean", "description": "Not the group (default false)"}
                },
                "required": ["id"],
                "additionalProperties": false
            }
        },
        {
            "name": "process_resize",
            "title": "Resize a process's terminal",
            "description": "Set the window size of a process started with `pty` (it gets SIGWINCH).",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0},
                    "rows": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "cols": {"type": "integer", "minimum": 1, "maximum": 10000}
                },
                "required": ["id", "rows", "cols"],
                "additionalProperties": false
            }
        },
        {
            "name": "process_list",
            "title": "List processes",
            "description": "Every process started with process_start: running ones, and finished ones kept for 10 minutes (at most 64), with their exit status and how much output they produced.",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": false}
        },
        {
            "name": "port_check",
            "title": "Check a guest port",
            "description": "Is anything listening on TCP port `port` in the VM (and on which addresses), and can a connection to `host:port` be made? For a forwarded port that is \"open but unreachable\": e.g. a server bound to another address than the one forwarded to.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "host": {"type": "string", "description": "Address to connect to (default 127.0.0.1)"}
                },
                "required": ["port"],
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

/// Decode `args` as the argument type of `tool` (for the drift test, and for callers that
/// want a tool's arguments checked without running it).
pub fn check_args(tool: &str, args: Value) -> Result<(), String> {
    use crate::{process as p, tools as t};
    fn de<T: serde::de::DeserializeOwned>(v: Value) -> Result<(), String> {
        serde_json::from_value::<T>(v)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    match tool {
        t::RUN_COMMAND => de::<t::RunCommand>(args),
        t::FILE_READ => de::<t::FileRead>(args),
        t::FILE_WRITE => de::<t::FileWrite>(args),
        t::FILE_DELETE => de::<t::FileDelete>(args),
        t::LIST_DIR | t::STAT => de::<t::PathArgs>(args),
        t::SHUTDOWN | t::PROCESS_LIST => de::<t::Empty>(args),
        t::PROCESS_START => de::<p::ProcessStart>(args),
        t::PROCESS_OUTPUT => de::<p::ProcessOutput>(args),
        t::PROCESS_INPUT => de::<p::ProcessInput>(args),
        t::PROCESS_SIGNAL => de::<p::ProcessSignal>(args),
        t::PROCESS_RESIZE => de::<p::ProcessResize>(args),
        t::PORT_CHECK => de::<p::PortCheck>(args),
        other => Err(format!("unknown tool \"{other}\"")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A value of the schema's type (the first enum member for enums).
    fn sample(schema: &Value) -> Value {
        if let Some(e) = schema.get("enum") {
            return e[0].clone();
        }
        match schema["type"].as_str().unwrap() {
            "string" => json!("x"),
            "integer" => json!(schema.get("minimum").cloned().unwrap_or(json!(1))),
            "number" => json!(1.5),
            "boolean" => json!(true),
            "array" => json!([sample(&schema["items"])]),
            "object" => {
                let mut o = serde_json::Map::new();
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    for (k, v) in props {
                        o.insert(k.clone(), sample(v));
                    }
                }
                if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
                    o.insert("KEY".into(), sample(extra));
                }
                Value::Object(o)
            }
            other => panic!("no sample for type {other}"),
        }
    }

    /// The schemas and the types cannot drift: every tool is listed once, in NAMES order;
    /// every property a schema allows is accepted by its type, an unknown one is refused,
    /// and a missing required one is refused.
    #[test]
    fn schemas_match_the_argument_types() {
        let list = tools();
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, crate::tools::NAMES);
        for t in list.as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let schema = &t["inputSchema"];
            assert_eq!(schema["additionalProperties"], false, "{name}");
            let full = sample(schema);
            assert_eq!(check_args(name, full.clone()), Ok(()), "{name}: {full}");
            let mut extra = full.clone();
            extra["not_in_schema"] = json!(1);
            assert!(check_args(name, extra).is_err(), "{name} accepts unknown");
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let mut missing = full.clone();
                missing.as_object_mut().unwrap().remove(r.as_str().unwrap());
                assert!(
                    check_args(name, missing).is_err(),
                    "{name} accepts a missing {r}"
                );
            }
        }
    }

    #[test]
    fn pty_sizes() {
        assert_eq!(size(24, 80).check(), Ok(()));
        assert_eq!(
            size(0, 0).check(),
            Err("a terminal of 0 rows × 0 columns: rows and cols must each be 1 to 10000".into())
        );
        assert_eq!(
            size(24, 100_000).check(),
            Err(
                "a terminal of 24 rows × 100000 columns: rows and cols must each be 1 to 10000"
                    .into()
            )
        );
    }

    fn size(rows: u32, cols: u32) -> crate::process::PtySize {
        crate::process::PtySize { rows, cols }
    }
}

//! The tools the agent serves: their JSON Schemas (`tools/list`) and dispatch (`tools/call`).

mod command;
mod files;
mod port;

use crate::process::tools as pt;
use fort_agent_protocol::tools as t;
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

pub fn exists(name: &str) -> bool {
    fort_agent_protocol::tools::NAMES.contains(&name)
}

/// A `tools/call` whose arguments were decoded and checked, not yet run.
pub enum Request {
    RunCommand(command::Command),
    FileRead(t::FileRead),
    FileWrite(files::WriteFile),
    FileDelete(t::FileDelete),
    ListDir(t::PathArgs),
    Stat(t::PathArgs),
    Process(crate::process::tools::Request),
    PortCheck(fort_agent_protocol::process::PortCheck),
    Shutdown,
}

/// Decode and check a tool's arguments without running anything: every
/// [`ToolError::Params`] a call can give comes from here (so it can be fuzzed safely).
pub fn prepare(name: &str, a: Value) -> Result<Request, ToolError> {
    Ok(match name {
        "run_command" => Request::RunCommand(command::prepare(args(a)?)?),
        "file_read" => Request::FileRead(args(a)?),
        "file_write" => Request::FileWrite(files::prepare_write(args(a)?)?),
        "file_delete" => Request::FileDelete(args(a)?),
        "list_dir" => Request::ListDir(args(a)?),
        "stat" => Request::Stat(args(a)?),
        t::PROCESS_START => Request::Process(pt::prepare_start(args(a)?)?),
        t::PROCESS_OUTPUT => Request::Process(pt::prepare_output(args(a)?)?),
        t::PROCESS_INPUT => Request::Process(pt::prepare_input(args(a)?)?),
        t::PROCESS_SIGNAL => Request::Process(pt::prepare_signal(args(a)?)?),
        t::PROCESS_RESIZE => Request::Process(pt::prepare_resize(args(a)?)?),
        t::PROCESS_LIST => {
            let _: t::Empty = args(a)?;
            Request::Process(pt::Request::List)
        }
        t::PORT_CHECK => Request::PortCheck(args(a)?),
        "shutdown" => {
            let _: t::Empty = args(a)?;
            Request::Shutdown
        }
        other => return Err(ToolError::Params(format!("unknown tool \"{other}\""))),
    })
}

/// Run a prepared call.
pub async fn run(req: Request, notify: Option<Notifier>) -> Result<Output, ToolError> {
    match req {
        Request::RunCommand(c) => command::run(c, notify).await,
        Request::FileRead(a) => files::read(a).await,
        Request::FileWrite(w) => files::write(w).await,
        Request::FileDelete(a) => files::delete(a).await,
        Request::ListDir(a) => files::list_dir(a).await,
        Request::Stat(a) => files::stat(a).await,
        Request::Process(r) => crate::process::tools::run(r).await,
        Request::PortCheck(a) => port::check(a).await,
        Request::Shutdown => {
            SHUTDOWN.notify_one();
            Ok(Output {
                text: "shutting down".into(),
                structured: json!({"shutting_down": true}),
            })
        }
    }
}

pub async fn call(name: &str, a: Value, notify: Option<Notifier>) -> Result<Output, ToolError> {
    run(prepare(name, a)?, notify).await
}

/// `tools/list`: every tool with its input schema (the protocol crate's, shared with fort).
pub fn list() -> Value {
    fort_agent_protocol::schema::tools()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params_error(name: &str, args: Value) -> String {
        match prepare(name, args) {
            Err(ToolError::Params(m)) => m,
            Err(ToolError::Failed(m)) => panic!("{name}: failed instead of a params error: {m}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }

    #[test]
    fn prepare_checks_arguments_without_running() {
        assert!(matches!(
            prepare("run_command", json!({"argv": ["/nonexistent"]})),
            Ok(Request::RunCommand(_))
        ));
        assert!(matches!(
            prepare(
                "file_write",
                json!({"path": "/nonexistent/x", "content": "aGk=", "encoding": "base64"})
            ),
            Ok(Request::FileWrite(_))
        ));
        assert!(matches!(
            prepare("shutdown", json!({})),
            Ok(Request::Shutdown)
        ));
        assert_eq!(
            params_error("run_command", json!({})),
            "give exactly one of `argv` (non-empty) or `command`"
        );
        assert_eq!(
            params_error(
                "run_command",
                json!({"command": "true", "timeout_secs": -1})
            ),
            "`timeout_secs` must be a non-negative number"
        );
        assert_eq!(
            params_error(
                "file_write",
                json!({"path": "/x", "content": "", "mode": "9"})
            ),
            "`mode` must be octal like \"0644\", got \"9\""
        );
        assert!(params_error(
            "file_write",
            json!({"path": "/x", "content": "!", "encoding": "base64"})
        )
        .starts_with("`content` is not valid base64"));
        assert_eq!(
            params_error("shutdown", json!({"now": true})),
            "unknown field `now`, there are no fields"
        );
        assert_eq!(params_error("nope", json!({})), "unknown tool \"nope\"");
    }
}

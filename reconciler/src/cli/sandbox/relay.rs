//! Agent tools called with a `sandbox` argument: relayed to that sandbox's guest agent over
//! one connection per sandbox (reopened when it is lost), each call marking it active.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Core, ToolError};
use crate::address::{Address, Kind};
use crate::host::agent::{AgentError, Client, Endpoint};
use crate::host::sandboxes as files;
use crate::state::{SqliteStore, StateStore};

/// How long a relayed call waits for a sandbox's agent to be reachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Core {
    async fn agent(&self, id: &str) -> Result<Arc<Client>, ToolError> {
        if let Some(c) = self.agents.lock().await.get(id) {
            return Ok(c.clone());
        }
        let (m, _) = self.load()?;
        let addr = Address::new(Kind::Vm, id);
        let rec = SqliteStore::open_readonly(&self.state_dir(&m))
            .and_then(|s| s.get(&addr))
            .map_err(|e| ToolError::Failed(crate::resources::error_chain(&e)))?;
        let socket = rec
            .as_ref()
            .filter(|r| r.outputs.get("started").is_some_and(|s| !s.is_null()))
            .and_then(|r| r.outputs.get("vsock_uds").and_then(Value::as_str));
        let Some(socket) = socket else {
            return Err(ToolError::Failed(format!(
                "sandbox {id} is not running yet (sandbox_list shows its state)"
            )));
        };
        let c = Client::connect(&Endpoint::VsockUds(socket.into()), CONNECT_TIMEOUT)
            .await
            .map_err(|e| {
                ToolError::Failed(format!(
                    "sandbox {id}: {}",
                    crate::resources::error_chain(&e)
                ))
            })?;
        let c = Arc::new(c);
        self.agents.lock().await.insert(id.to_string(), c.clone());
        Ok(c)
    }

    /// Call `tool` in the sandbox `args.sandbox` names, with the other arguments; the agent's
    /// result is the answer, as it gave it.
    pub async fn relay(&self, tool: &str, mut args: Value) -> Result<Value, ToolError> {
        let id = match args.as_object_mut().and_then(|o| o.remove("sandbox")) {
            Some(Value::String(s)) => s,
            Some(_) => return Err(ToolError::Params("\"sandbox\" must be a string".into())),
            None => {
                return Err(ToolError::Params(format!(
                    "{tool} needs \"sandbox\": the id sandbox_create returned"
                )))
            }
        };
        let (m, dir) = self.load()?;
        if !m.instances.contains_key(&id) {
            self.agents.lock().await.remove(&id);
            return Err(super::not_found(&m, &id));
        }
        let _ = files::touch(&dir, &id);
        let client = self.agent(&id).await?;
        let params = json!({"name": tool, "arguments": args});
        match client.request("tools/call", params).await {
            Ok(r) => Ok(r),
            Err(AgentError::Rpc { code, message, .. })
                if code == fort_agent_protocol::rpc::INVALID_PARAMS =>
            {
                Err(ToolError::Params(message))
            }
            Err(e) => {
                if e.is_lost() {
                    self.agents.lock().await.remove(&id);
                }
                Err(ToolError::Failed(format!(
                    "sandbox {id}: {}",
                    crate::resources::error_chain(&e)
                )))
            }
        }
    }
}

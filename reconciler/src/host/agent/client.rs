//! An initialized MCP session with the guest agent over one connection, with many requests in
//! flight: a reader task routes each response by id to the caller waiting for it and
//! notifications to their subscribers, and a writer task sends whole lines in order. So
//! `fort shell` can wait in `process_output` while it sends `process_input` and
//! `process_resize` on the same connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::{connect, AgentError, Endpoint, Io};

/// One MCP session; clones share the connection (it closes when the last clone is dropped).
#[derive(Clone)]
pub struct Client {
    conn: Arc<Conn>,
    /// The agent's `initialize` result (its `_meta["fort/mounts"]`: see [`Client::mounts`]).
    pub initialized: Value,
}

/// One data drive as the agent reported it at boot (docs/guest-agent.md, "Mounted drives").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountStatus {
    pub drive: String,
    pub path: String,
    #[serde(default)]
    pub device: Option<String>,
    pub mounted: bool,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ToolResult {
    pub is_error: bool,
    pub text: String,
    pub structured: Value,
}

struct Conn {
    routes: Arc<Mutex<Routes>>,
    /// Whole lines for the writer task: a caller that gives up mid-request (a `select!` that
    /// took another branch) can never leave half a line on the stream.
    lines: mpsc::UnboundedSender<Vec<u8>>,
    next: AtomicI64,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Waiter {
    method: String,
    reply: oneshot::Sender<Result<Value, AgentError>>,
    /// Notifications naming this request (`params.requestId`), e.g. a streaming
    /// `run_command`'s output.
    notify: Option<mpsc::UnboundedSender<Value>>,
}

#[derive(Default)]
struct Routes {
    waiters: HashMap<i64, Waiter>,
    subscribers: Vec<mpsc::UnboundedSender<Value>>,
    /// Why the connection ended, once it has: every waiter and every later request gets it.
    lost: Option<Lost>,
}

#[derive(Debug, Clone)]
enum Lost {
    Closed,
    Io(std::io::ErrorKind, String),
    Protocol(String),
}

impl Lost {
    fn error(&self) -> AgentError {
        match self {
            Lost::Closed => AgentError::Closed,
            Lost::Io(kind, msg) => AgentError::Io(std::io::Error::new(*kind, msg.clone())),
            Lost::Protocol(p) => AgentError::Protocol(p.clone()),
        }
    }
}

fn lock(routes: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    // A panicking holder leaves the map consistent (every change is one statement).
    routes.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Mark the connection lost (the first reason wins) and fail everyone waiting on it.
fn lose(routes: &Mutex<Routes>, why: Lost) {
    let mut r = lock(routes);
    let why = r.lost.get_or_insert(why).clone();
    for (_, w) in r.waiters.drain() {
        let _ = w.reply.send(Err(why.error()));
    }
    // Dropping the senders ends the subscribers' streams.
    r.subscribers.clear();
}

async fn read_loop(mut reader: BufReader<ReadHalf<Box<dyn Io>>>, routes: Arc<Mutex<Routes>>) {
    let mut buf = Vec::new();
    let why = loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => break Lost::Closed,
            Ok(_) => {}
            Err(e) => break Lost::Io(e.kind(), e.to_string()),
        }
        match serde_json::from_slice::<Value>(&buf) {
            Ok(v) => route(&routes, v),
            Err(e) => break Lost::Protocol(e.to_string()),
        }
    };
    lose(&routes, why);
}

/// Hand one message from the agent to whoever waits for it.
fn route(routes: &Mutex<Routes>, v: Value) {
    let mut r = lock(routes);
    match (v.get("id"), v.get("method")) {
        // A response.
        (Some(id), None) => {
            let Some(w) = id.as_i64().and_then(|id| r.waiters.remove(&id)) else {
                return; // its caller gave up
            };
            let reply = match v.get("error") {
                Some(e) => Err(AgentError::Rpc {
                    method: w.method,
                    code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                }),
                None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = w.reply.send(reply);
        }
        // A notification: to the request it names, else to every subscriber.
        (None, Some(_)) => {
            let to_request = v
                .pointer("/params/requestId")
                .and_then(Value::as_i64)
                .and_then(|id| r.waiters.get(&id))
                .and_then(|w| w.notify.clone());
            match to_request {
                Some(tx) => {
                    let _ = tx.send(v);
                }
                None => r.subscribers.retain(|s| s.send(v.clone()).is_ok()),
            }
        }
        // A request from the agent: it sends none today; nothing to answer.
        _ => {}
    }
}

async fn write_loop(
    mut writer: WriteHalf<Box<dyn Io>>,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
    routes: Arc<Mutex<Routes>>,
) {
    while let Some(line) = lines.recv().await {
        if let Err(e) = writer.write_all(&line).await {
            lose(&routes, Lost::Io(e.kind(), e.to_string()));
            return;
        }
        // Only when nothing else is queued: one flush per burst.
        if lines.is_empty() {
            if let Err(e) = writer.flush().await {
                lose(&routes, Lost::Io(e.kind(), e.to_string()));
                return;
            }
        }
    }
}

/// Removes a request's waiter when its caller stops waiting (answered, failed or cancelled).
struct Forget<'a> {
    routes: &'a Mutex<Routes>,
    id: i64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.routes).waiters.remove(&self.id);
    }
}

impl Client {
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Client, AgentError> {
        let (r, w) = tokio::io::split(connect(endpoint, timeout).await?);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (lines, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(BufReader::new(r), routes.clone()));
        let writer = tokio::spawn(write_loop(w, rx, routes.clone()));
        let mut c = Client {
            conn: Arc::new(Conn {
                routes,
                lines,
                next: AtomicI64::new(1),
                tasks: [reader.abort_handle(), writer.abort_handle()],
            }),
            initialized: Value::Null,
        };
        c.initialized = c.request(
            "initialize",
            json!({"protocolVersion": fort_agent_protocol::rpc::HOST_PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "fort", "version": crate::VERSION}}),
        )
        .await?;
        c.send_line(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        Ok(c)
    }

    /// The data drives the agent mounted (or failed to) at boot; empty for a VM without
    /// mounts or an agent that predates them.
    pub fn mounts(&self) -> Vec<MountStatus> {
        self.initialized
            .pointer("/_meta/fort~1mounts")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// Notifications that name no request in flight, from now until the connection ends.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut r = lock(&self.conn.routes);
        // A lost connection's stream ends at once (the sender is dropped here).
        if r.lost.is_none() {
            r.subscribers.push(tx);
        }
        rx
    }

    fn send_line(&self, msg: &Value) -> Result<(), AgentError> {
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');
        self.conn.lines.send(line).map_err(|_| AgentError::Closed)
    }

    pub async fn request(&self, method: &str, params: Value) -> Result<Value, AgentError> {
        self.send(method, params, None).await
    }

    async fn send(
        &self,
        method: &str,
        params: Value,
        notify: Option<mpsc::UnboundedSender<Value>>,
    ) -> Result<Value, AgentError> {
        let id = self.conn.next.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut r = lock(&self.conn.routes);
            if let Some(why) = &r.lost {
                return Err(why.error());
            }
            r.waiters.insert(
                id,
                Waiter {
                    method: method.to_string(),
                    reply,
                    notify,
                },
            );
        }
        let _forget = Forget {
            routes: &self.conn.routes,
            id,
        };
        self.send_line(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        answer.await.unwrap_or(Err(AgentError::Closed))
    }

    /// A request; notifications naming it (`params.requestId`) go to `on_notification`.
    pub async fn request_with(
        &self,
        method: &str,
        params: Value,
        on_notification: &mut (dyn FnMut(&Value) + Send),
    ) -> Result<Value, AgentError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let answer = self.send(method, params, Some(tx));
        tokio::pin!(answer);
        loop {
            tokio::select! {
                // The reader hands out a request's notifications before its response, in
                // order; the ones still queued when the response arrives are drained below.
                biased;
                Some(n) = rx.recv() => on_notification(&n),
                r = &mut answer => {
                    while let Ok(n) = rx.try_recv() {
                        on_notification(&n);
                    }
                    return r;
                }
            }
        }
    }

    /// Call a tool.
    pub async fn call(&self, tool: &str, args: Value) -> Result<ToolResult, AgentError> {
        self.call_with(tool, args, &mut |_| {}).await
    }

    /// Call a tool, handing notifications about it (e.g. `notifications/fort/output` of a
    /// streaming `run_command`) to `on_notification`.
    pub async fn call_with(
        &self,
        tool: &str,
        args: Value,
        on_notification: &mut (dyn FnMut(&Value) + Send),
    ) -> Result<ToolResult, AgentError> {
        let r = self
            .request_with(
                "tools/call",
                json!({"name": tool, "arguments": args}),
                on_notification,
            )
            .await?;
        Ok(ToolResult {
            is_error: r.get("isError").and_then(Value::as_bool).unwrap_or(false),
            text: r
                .pointer("/content/0/text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            structured: r.get("structuredContent").cloned().unwrap_or(Value::Null),
        })
    }

    /// Call a tool with the protocol crate's types: `args` serialized, the result's
    /// `structuredContent` deserialized; a tool error (`isError`) is [`AgentError::Tool`].
    pub async fn tool<A: Serialize, R: DeserializeOwned>(
        &self,
        tool: &str,
        args: &A,
    ) -> Result<R, AgentError> {
        let bad = |e: serde_json::Error| AgentError::Result {
            tool: tool.to_string(),
            error: e.to_string(),
        };
        let r = self
            .call(tool, serde_json::to_value(args).map_err(bad)?)
            .await?;
        if r.is_error {
            return Err(AgentError::Tool {
                tool: tool.to_string(),
                message: r.text,
            });
        }
        serde_json::from_value(r.structured).map_err(bad)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A fake agent on one end of a socket pair: answers requests in the reverse order of
    /// arrival, so only routing by id gives each caller its own answer.
    #[tokio::test]
    async fn concurrent_requests_get_their_own_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = tokio::io::split(s);
            let mut lines = BufReader::new(r).lines();
            let mut held = Vec::new();
            while let Some(l) = lines.next_line().await.unwrap() {
                let v: Value = serde_json::from_str(&l).unwrap();
                let Some(id) = v.get("id").cloned() else {
                    continue;
                };
                if v["method"] == "initialize" {
                    let r = json!({"jsonrpc": "2.0", "id": id, "result": {"ok": true}});
                    w.write_all(format!("{r}\n").as_bytes()).await.unwrap();
                    continue;
                }
                held.push((id, v["params"]["arguments"]["n"].clone()));
                if held.len() == 3 {
                    for (id, n) in held.drain(..).rev() {
                        let note = json!({"jsonrpc": "2.0", "method": "notifications/fort/output", "params": {"requestId": id, "data": n}});
                        let r = json!({"jsonrpc": "2.0", "id": id, "result": {"structuredContent": {"n": n}}});
                        w.write_all(format!("{note}\n{r}\n").as_bytes())
                            .await
                            .unwrap();
                    }
                    // Then the connection ends: a later request fails at once.
                    return;
                }
            }
        });
        let c = Client::connect(&Endpoint::Unix(path), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.initialized, json!({"ok": true}));
        let mut others = c.subscribe();
        let call = |n: i64| {
            let c = c.clone();
            async move {
                let mut seen = Vec::new();
                let r = c
                    .call_with("t", json!({"n": n}), &mut |v| {
                        seen.push(v["params"]["data"].clone())
                    })
                    .await
                    .unwrap();
                (r.structured["n"].clone(), seen)
            }
        };
        let (a, b, d) = tokio::join!(call(1), call(2), call(3));
        assert_eq!(a, (json!(1), vec![json!(1)]));
        assert_eq!(b, (json!(2), vec![json!(2)]));
        assert_eq!(d, (json!(3), vec![json!(3)]));
        server.await.unwrap();
        // The subscription ends when the reader sees the end of the connection.
        assert_eq!(others.recv().await, None);
        let e = c.request("ping", json!({})).await.unwrap_err();
        assert!(e.is_lost(), "{e:?}");
        assert_eq!(e.to_string(), "the guest agent closed the connection");
    }
}

//! MCP's Streamable HTTP transport (revision 2025-06-18), server side, for `fort serve`: the
//! listener (unix socket or loopback TCP), bearer-token auth, sessions, and one JSON-RPC
//! message per POST answered with one JSON object. The protocol itself is the [`Handler`]'s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the MCP core is given: one JSON-RPC message (a single object; a JSON array is a batch:
/// reject batches with a JSON-RPC error -32600 "batches are not supported", HTTP 400) and the
/// session id; it returns Some(response object) for a request, None for a notification or a
/// response.
pub type Handler =
    Arc<dyn Fn(Value, String) -> Pin<Box<dyn Future<Output = Option<Value>> + Send>> + Send + Sync>;

/// The largest POST body read (413 beyond).
pub const MAX_BODY: usize = 16 << 20;
/// Sessions kept at once; the oldest is forgotten when another client initializes.
const MAX_SESSIONS: usize = 1024;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests in flight at shutdown may take to finish before they are cut off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The session header (HTTP header names are case-insensitive; hyper wants lower case).
pub const SESSION_HEADER: &str = "mcp-session-id";

/// Where `fort serve` listens: `unix:PATH` or `tcp:HOST:PORT` (HOST an IP address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = HttpError;
    fn from_str(s: &str) -> Result<Listen, HttpError> {
        let bad = || HttpError::BadListen(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            return match path {
                "" => Err(bad()),
                p => Ok(Listen::Unix(PathBuf::from(p))),
            };
        }
        let addr = s.strip_prefix("tcp:").ok_or_else(bad)?;
        addr.parse().map(Listen::Tcp).map_err(|_| bad())
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// How the server admits requests.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bearer token every request must carry; required on TCP.
    pub token: Option<String>,
    /// Allow a TCP address that is not loopback (and `Origin`s that are not).
    pub allow_remote: bool,
    /// The MCP endpoint's path, e.g. "/mcp".
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not a listen address: expected unix:PATH or tcp:IP:PORT (tcp:127.0.0.1:8080, tcp:[::1]:8080)")]
    BadListen(String),
    #[error(
        "{0} is not a loopback address: pass --allow-remote to listen on it (with a --token-file)"
    )]
    NotLoopback(Listen),
    #[error("a tcp listener needs --token-file")]
    NoToken,
    #[error("the bearer token is empty")]
    EmptyToken,
    #[error("{0} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{0} is in use: another server answers on it")]
    InUse(PathBuf),
    #[error("cannot listen on {listen}")]
    Bind {
        listen: Listen,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {path} private (mode 0600)")]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot accept connections on {listen}")]
    Accept {
        listen: String,
        #[source]
        source: std::io::Error,
    },
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// The socket file a unix listener bound; removed when dropped (at shutdown), unless another
/// file has replaced it meanwhile.
struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// A bound server; `run` serves until `shutdown` resolves.
pub struct Server {
    listener: Listener,
    opts: Options,
    addr: String,
}

impl Server {
    /// Check `listen` and `opts` (TCP: loopback unless `allow_remote`, a token), then bind.
    pub async fn bind(listen: &Listen, opts: Options) -> Result<Server, HttpError> {
        if opts.token.as_deref() == Some("") {
            return Err(HttpError::EmptyToken);
        }
        let bind_err = |source: std::io::Error| HttpError::Bind {
            listen: listen.clone(),
            source,
        };
        let listener = match listen {
            Listen::Tcp(addr) => {
                if !addr.ip().to_canonical().is_loopback() && !opts.allow_remote {
                    return Err(HttpError::NotLoopback(listen.clone()));
                }
                if opts.token.is_none() {
                    return Err(HttpError::NoToken);
                }
                Listener::Tcp(TcpListener::bind(addr).await.map_err(bind_err)?)
            }
            Listen::Unix(path) => {
                remove_stale(path, bind_err).await?;
                let l = UnixListener::bind(path).map_err(bind_err)?;
                let m = std::fs::symlink_metadata(path).map_err(bind_err)?;
                let file = SocketFile {
                    path: path.clone(),
                    id: (m.dev(), m.ino()),
                };
                let private = std::fs::Permissions::from_mode(0o600);
                std::fs::set_permissions(path, private).map_err(|source| HttpError::Chmod {
                    path: path.clone(),
                    source,
                })?;
                Listener::Unix(l, file)
            }
        };
        let addr = match &listener {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => Listen::Tcp(a).to_string(),
                Err(_) => listen.to_string(),
            },
            Listener::Unix(..) => listen.to_string(),
        };
        Ok(Server {
            listener,
            opts,
            addr,
        })
    }

    /// The bound address, as a `Listen` prints: "tcp:127.0.0.1:41234" (the port chosen for
    /// port 0) or "unix:/path".
    pub fn local_addr(&self) -> String {
        self.addr.clone()
    }

    /// Serve connections, each on its own task, until `shutdown` resolves; then let requests
    /// in flight finish (for a while) and remove the socket file.
    pub async fn run(
        self,
        handler: Handler,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), HttpError> {
        let state = Arc::new(State {
            opts: self.opts,
            handler,
            sessions: Mutex::new(HashMap::new()),
        });
        let euid = rustix::process::geteuid().as_raw();
        let (stop_tx, stop_rx) = watch::channel(());
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        let result = loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break Ok(()),
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                a = accept(&self.listener, euid) => a,
            };
            match accepted {
                Ok(Some(Conn::Tcp(s))) => conns.spawn(serve(s, state.clone(), stop_rx.clone())),
                Ok(Some(Conn::Unix(s))) => conns.spawn(serve(s, state.clone(), stop_rx.clone())),
                Ok(None) => continue,
                Err(e) if transient(&e) => {
                    tracing::warn!("accepting a connection on {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(source) => {
                    break Err(HttpError::Accept {
                        listen: self.addr.clone(),
                        source,
                    })
                }
            };
        };
        drop(stop_tx);
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}: cut off");
            conns.shutdown().await;
        }
        drop(self.listener);
        result
    }
}

/// Clear the way for a unix socket at `path`: remove a dead socket; refuse any other file
/// and a socket someone still answers on.
async fn remove_stale(
    path: &Path,
    io_err: impl Fn(std::io::Error) -> HttpError,
) -> Result<(), HttpError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(HttpError::NotASocket(path.to_path_buf()));
    }
    let probe = tokio::net::UnixStream::connect(path);
    if !matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Err(_))
    ) {
        return Err(HttpError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(io_err)
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The next connection; `None` for a unix peer that is neither our user nor root (one that
/// connected in the moment before the chmod).
async fn accept(listener: &Listener, euid: u32) -> std::io::Result<Option<Conn>> {
    match listener {
        Listener::Tcp(l) => Ok(Some(Conn::Tcp(l.accept().await?.0))),
        Listener::Unix(l, _) => {
            let s = l.accept().await?.0;
            match s.peer_cred() {
                Ok(c) if c.uid() == euid || c.uid() == 0 => Ok(Some(Conn::Unix(s))),
                peer => {
                    tracing::warn!("refused a unix connection from {peer:?}");
                    Ok(None)
                }
            }
        }
    }
}

/// Accept errors that pass (out of descriptors or memory for a moment, a client gone).
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
        || matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
}

struct State {
    opts: Options,
    handler: Handler,
    /// Session id → when it began.
    sessions: Mutex<HashMap<String, Instant>>,
}

/// One connection: HTTP/1.1 until the client closes it or the server stops (then gracefully:
/// the request in flight is answered).
async fn serve<S>(io: S, state: Arc<State>, mut stop: watch::Receiver<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(req, &state).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stop.changed() => None,
    };
    let r = match done {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!("mcp http connection: {e}");
    }
}

type Reply = Response<Full<Bytes>>;

async fn respond(req: Request<Incoming>, st: &State) -> Reply {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let reply = route(req, st).await;
    tracing::debug!(%method, %path, status = reply.status().as_u16(), "mcp http request");
    reply
}

async fn route(req: Request<Incoming>, st: &State) -> Reply {
    if let Some(token) = &st.opts.token {
        if !bearer_ok(req.headers(), token) {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "missing or wrong bearer token"}),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    if req.uri().path() != st.opts.path {
        let msg = format!("nothing here: the MCP endpoint is {}", st.opts.path);
        return rpc_error(StatusCode::NOT_FOUND, Value::Null, -32600, &msg);
    }
    if !st.opts.allow_remote && !origin_ok(req.headers()) {
        let msg = "this Origin may not call the server (only loopback origins)";
        return rpc_error(StatusCode::FORBIDDEN, Value::Null, -32600, msg);
    }
    match *req.method() {
        Method::POST => post(req, st).await,
        Method::DELETE => match session(req.headers(), st, &Value::Null) {
            Ok(id) => {
                sessions(st).remove(&id);
                Response::new(Full::default())
            }
            Err(r) => r,
        },
        _ => {
            let msg = "method not allowed: POST a JSON-RPC message, DELETE a session";
            let mut r = rpc_error(StatusCode::METHOD_NOT_ALLOWED, Value::Null, -32600, msg);
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            r
        }
    }
}

async fn post(req: Request<Incoming>, st: &State) -> Reply {
    let null = Value::Null;
    let headers = req.headers();
    if !media_is_json(headers.get(header::CONTENT_TYPE)) {
        let msg = "Content-Type must be application/json";
        return rpc_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, null, -32600, msg);
    }
    if !accepts_json(headers) {
        let msg = "Accept must allow application/json";
        return rpc_error(StatusCode::NOT_ACCEPTABLE, null, -32600, msg);
    }
    let too_large = || {
        let msg = format!("the message is larger than {MAX_BODY} bytes");
        rpc_error(StatusCode::PAYLOAD_TOO_LARGE, Value::Null, -32600, &msg)
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    if length.and_then(|v| v.parse::<u64>().ok()) > Some(MAX_BODY as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            let msg = format!("cannot read the request body: {e}");
            return rpc_error(StatusCode::BAD_REQUEST, null, -32600, &msg);
        }
    };
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("parse error: {e}");
            return rpc_error(StatusCode::BAD_REQUEST, null, -32700, &msg);
        }
    };
    let Some(obj) = msg.as_object() else {
        let text = if msg.is_array() {
            "batches are not supported"
        } else {
            "a JSON-RPC message is an object"
        };
        return rpc_error(StatusCode::BAD_REQUEST, null, -32600, text);
    };
    let id = obj.get("id").cloned();
    let is_request = id.is_some() && obj.contains_key("method");
    let id = id.unwrap_or(Value::Null);
    let initialize = is_request && obj.get("method").and_then(Value::as_str) == Some("initialize");
    let session = if initialize {
        match new_session(st) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot make a session id: {e}");
                let msg = "cannot make a session id";
                return rpc_error(StatusCode::INTERNAL_SERVER_ERROR, id, -32603, msg);
            }
        }
    } else {
        match session(&parts.headers, st, &id) {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
    let answer = (st.handler)(msg, session.clone()).await;
    if !is_request {
        return status(StatusCode::ACCEPTED);
    }
    let Some(answer) = answer else {
        let msg = "the MCP server gave no response to the request";
        return rpc_error(StatusCode::INTERNAL_SERVER_ERROR, id, -32603, msg);
    };
    let mut r = reply(StatusCode::OK, &answer);
    if initialize {
        if let Ok(v) = HeaderValue::from_str(&session) {
            r.headers_mut().insert(SESSION_HEADER, v);
        }
    }
    r
}

/// The known session a request names, or the error reply (400 without one, 404 unknown).
fn session(headers: &HeaderMap, st: &State, id: &Value) -> Result<String, Reply> {
    let Some(s) = headers.get(SESSION_HEADER) else {
        let msg = "missing Mcp-Session-Id header: send \"initialize\" first";
        return Err(rpc_error(StatusCode::BAD_REQUEST, id.clone(), -32600, msg));
    };
    match s.to_str() {
        Ok(s) if sessions(st).contains_key(s) => Ok(s.to_string()),
        _ => {
            let msg = "unknown session (ended or never begun): send \"initialize\" again";
            Err(rpc_error(StatusCode::NOT_FOUND, id.clone(), -32001, msg))
        }
    }
}

fn sessions(st: &State) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
    st.sessions.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new session: 128 random bits as 32 hex digits.
fn new_session(st: &State) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let id = hex::encode(bytes);
    let mut all = sessions(st);
    if all.len() >= MAX_SESSIONS {
        if let Some(oldest) = all.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
            all.remove(&oldest);
        }
    }
    all.insert(id.clone(), Instant::now());
    Ok(id)
}

/// `Authorization: Bearer <token>`, the token compared in constant time.
fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (scheme, given) = (&value[..space], value[space + 1..].trim_ascii());
    scheme.eq_ignore_ascii_case(b"bearer") && constant_eq(given, token.as_bytes())
}

/// Equal byte strings, in time that depends only on the lengths.
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0 && a.len() == b.len()
}

/// No `Origin` (not a browser), or a loopback one: a web page elsewhere must not reach a
/// loopback server through DNS rebinding (the spec's MUST).
fn origin_ok(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(authority) = origin.to_str().ok().and_then(|o| o.split_once("://")) else {
        return false;
    };
    let authority = authority.1.trim_end_matches('/');
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn media_is_json(value: Option<&HeaderValue>) -> bool {
    let Some(v) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = v.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
}

/// No `Accept`, or one that allows application/json.
fn accepts_json(headers: &HeaderMap) -> bool {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    values.is_empty()
        || values.iter().flat_map(|v| v.split(',')).any(|m| {
            let m = m.split(';').next().unwrap_or("").trim();
            ["application/json", "application/*", "*/*"]
                .iter()
                .any(|ok| m.eq_ignore_ascii_case(ok))
        })
}

fn status(code: StatusCode) -> Reply {
    let mut r = Response::new(Full::default());
    *r.status_mut() = code;
    r
}

fn reply(code: StatusCode, body: &Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn rpc_error(code: StatusCode, id: Value, rpc: i64, message: &str) -> Reply {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": rpc, "message": message}});
    reply(code, &body)
}

#[cfg(test)]
#[path = "mcp_http_tests.rs"]
mod tests;

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
use tokio::net::{TcpListener, UnixListener, UnixStream};
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
    #[error("cannot listen on {0}")]
    Bind(Listen, #[source] std::io::Error),
    #[error("cannot make {0} private (mode 0600)")]
    Chmod(PathBuf, #[source] std::io::Error),
    #[error("cannot accept connections on {0}")]
    Accept(String, #[source] std::io::Error),
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A unix listener's socket file, removed when dropped (at shutdown) unless replaced meanwhile.
struct SocketFile(PathBuf, (u64, u64));

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.0) {
            if (m.dev(), m.ino()) == self.1 {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}

/// A bound server; `run` serves until `shutdown` resolves.
pub struct Server {
    listener: Listener,
    socket: Option<SocketFile>,
    opts: Options,
    addr: String,
}

impl Server {
    /// Check `listen` and `opts` (TCP: loopback unless `allow_remote`, a token), then bind.
    pub async fn bind(listen: &Listen, opts: Options) -> Result<Server, HttpError> {
        if opts.token.as_deref() == Some("") {
            return Err(HttpError::EmptyToken);
        }
        let bind_err = |e| HttpError::Bind(listen.clone(), e);
        let (listener, socket, addr) = match listen {
            Listen::Tcp(addr) => {
                if !addr.ip().to_canonical().is_loopback() && !opts.allow_remote {
                    return Err(HttpError::NotLoopback(listen.clone()));
                }
                if opts.token.is_none() {
                    return Err(HttpError::NoToken);
                }
                let l = TcpListener::bind(addr).await.map_err(bind_err)?;
                let bound = l.local_addr().map_or(*addr, |a| a);
                (Listener::Tcp(l), None, Listen::Tcp(bound).to_string())
            }
            Listen::Unix(path) => {
                remove_stale(path, bind_err).await?;
                let l = UnixListener::bind(path).map_err(bind_err)?;
                let m = std::fs::symlink_metadata(path).map_err(bind_err)?;
                let socket = SocketFile(path.clone(), (m.dev(), m.ino()));
                let private = std::fs::Permissions::from_mode(0o600);
                let chmod_err = |e| HttpError::Chmod(path.clone(), e);
                std::fs::set_permissions(path, private).map_err(chmod_err)?;
                (Listener::Unix(l), Some(socket), listen.to_string())
            }
        };
        Ok(Server {
            listener,
            socket,
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
        let (opts, sessions) = (self.opts, Mutex::new(HashMap::new()));
        let state = Arc::new(State {
            opts,
            handler,
            sessions,
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
                Ok(Some(io)) => {
                    conns.spawn(serve(io, state.clone(), stop_rx.clone()));
                }
                Ok(None) => {}
                Err(e) if transient(&e) => {
                    tracing::warn!("accepting a connection on {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => break Err(HttpError::Accept(self.addr.clone(), e)),
            }
        };
        drop(stop_tx);
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}: cut off");
            conns.shutdown().await;
        }
        drop((self.listener, self.socket));
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
    let probe = tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path));
    if !matches!(probe.await, Ok(Err(_))) {
        return Err(HttpError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(io_err)
}

/// A connection's byte stream, TCP or unix.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The next connection; `None` for a unix peer that is neither our user nor root (one that
/// connected in the moment before the chmod).
async fn accept(listener: &Listener, euid: u32) -> std::io::Result<Option<Box<dyn Io>>> {
    let s = match listener {
        Listener::Tcp(l) => return Ok(Some(Box::new(l.accept().await?.0))),
        Listener::Unix(l) => l.accept().await?.0,
    };
    match s.peer_cred() {
        Ok(c) if c.uid() == euid || c.uid() == 0 => Ok(Some(Box::new(s))),
        peer => {
            tracing::warn!("refused a unix connection from {peer:?}");
            Ok(None)
        }
    }
}

/// Accept errors that pass (out of descriptors or memory for a moment, a client gone).
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    let os = e.raw_os_error();
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
        || matches!(
            os,
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
async fn serve(io: Box<dyn Io>, state: Arc<State>, mut stop: watch::Receiver<()>) {
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(req, &state).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!("mcp http connection: {e}");
    }
}

type Reply = Response<Full<Bytes>>;

/// A request refused: the HTTP status and a JSON-RPC error (for the message's id, if known).
struct Fail(StatusCode, Value, i64, String);

fn fail(status: StatusCode, code: i64, message: impl Into<String>) -> Fail {
    Fail(status, Value::Null, code, message.into())
}

impl Fail {
    /// The error answers the message with this id.
    fn at(self, id: &Value) -> Fail {
        Fail(self.0, id.clone(), self.2, self.3)
    }
}

const INVALID: i64 = -32600;

async fn respond(req: Request<Incoming>, st: &State) -> Reply {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let reply = route(req, st)
        .await
        .unwrap_or_else(|Fail(status, id, code, message)| {
            let error =
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
            let mut r = reply(status, &error);
            if status == StatusCode::METHOD_NOT_ALLOWED {
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            }
            r
        });
    tracing::debug!(%method, %path, status = reply.status().as_u16(), "mcp http request");
    reply
}

async fn route(req: Request<Incoming>, st: &State) -> Result<Reply, Fail> {
    if let Some(token) = &st.opts.token {
        if !bearer_ok(req.headers(), token) {
            let body = json!({"error": "missing or wrong bearer token"});
            let mut r = reply(StatusCode::UNAUTHORIZED, &body);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(r);
        }
    }
    if req.uri().path() != st.opts.path {
        let msg = format!("nothing here: the MCP endpoint is {}", st.opts.path);
        return Err(fail(StatusCode::NOT_FOUND, INVALID, msg));
    }
    if !st.opts.allow_remote && !origin_ok(req.headers()) {
        let msg = "this Origin may not call the server (only loopback origins may)";
        return Err(fail(StatusCode::FORBIDDEN, INVALID, msg));
    }
    match *req.method() {
        Method::POST => post(req, st).await,
        Method::DELETE => {
            let id = session(req.headers(), st, &Value::Null)?;
            sessions(st).remove(&id);
            Ok(Response::new(Full::default()))
        }
        _ => {
            let msg = "method not allowed: POST a JSON-RPC message, or DELETE a session";
            Err(fail(StatusCode::METHOD_NOT_ALLOWED, INVALID, msg))
        }
    }
}

/// One JSON-RPC message: a request is answered with the handler's response, anything else
/// with 202 once the handler has seen it.
async fn post(req: Request<Incoming>, st: &State) -> Result<Reply, Fail> {
    let bad = |code, msg: String| fail(StatusCode::BAD_REQUEST, code, msg);
    if !media_is_json(req.headers().get(header::CONTENT_TYPE)) {
        let msg = "Content-Type must be application/json";
        return Err(fail(StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID, msg));
    }
    let too_large = || {
        let msg = format!("the message is larger than {MAX_BODY} bytes");
        fail(StatusCode::PAYLOAD_TOO_LARGE, INVALID, msg)
    };
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(bad(INVALID, format!("cannot read the request body: {e}"))),
    };
    let msg: Value =
        serde_json::from_slice(&body).map_err(|e| bad(-32700, format!("parse error: {e}")))?;
    let Some(obj) = msg.as_object() else {
        return Err(match msg.is_array() {
            true => bad(INVALID, "batches are not supported".into()),
            false => bad(INVALID, "a JSON-RPC message is an object".into()),
        });
    };
    let id = obj.get("id").cloned();
    let is_request = id.is_some() && obj.contains_key("method");
    let id = id.unwrap_or(Value::Null);
    let initialize = is_request && obj.get("method").and_then(Value::as_str) == Some("initialize");
    let session = match initialize {
        true => new_session(st).map_err(|e| {
            tracing::warn!("cannot make a session id: {e}");
            let msg = "cannot make a session id";
            fail(StatusCode::INTERNAL_SERVER_ERROR, -32603, msg).at(&id)
        })?,
        false => session(&parts.headers, st, &id)?,
    };
    let answer = (st.handler)(msg, session.clone()).await;
    if !is_request {
        return Ok(status(StatusCode::ACCEPTED));
    }
    let Some(answer) = answer else {
        let msg = "the MCP server gave no response to the request";
        return Err(fail(StatusCode::INTERNAL_SERVER_ERROR, -32603, msg).at(&id));
    };
    let mut r = reply(StatusCode::OK, &answer);
    if let (true, Ok(v)) = (initialize, HeaderValue::from_str(&session)) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    Ok(r)
}

/// The known session a request names (400 without one, 404 for one unknown).
fn session(headers: &HeaderMap, st: &State, id: &Value) -> Result<String, Fail> {
    let Some(s) = headers.get(SESSION_HEADER) else {
        let msg = "missing Mcp-Session-Id header: send \"initialize\" first";
        return Err(fail(StatusCode::BAD_REQUEST, INVALID, msg).at(id));
    };
    match s.to_str() {
        Ok(s) if sessions(st).contains_key(s) => Ok(s.to_string()),
        _ => {
            let msg = "unknown session (ended or never begun): send \"initialize\" again";
            Err(fail(StatusCode::NOT_FOUND, -32001, msg).at(id))
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

#[cfg(test)]
#[path = "mcp_http_tests.rs"]
mod tests;

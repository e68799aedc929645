use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

use super::*;

const TOKEN: &str = "s3cret-token";

/// What the echo handler saw, and a gate the "slow" method waits at.
#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    gate: Notify,
}

/// Answers `initialize` like an MCP server, "slow" once the gate opens, anything else with
/// its params and the session id.
fn echo(seen: Arc<Seen>) -> Handler {
    Arc::new(move |msg: Value, session: String| {
        let seen = seen.clone();
        Box::pin(async move {
            seen.calls.fetch_add(1, SeqCst);
            let id = msg.get("id")?.clone();
            msg.get("method")?;
            if msg["method"] == "slow" {
                seen.gate.notified().await;
            }
            let result = match msg["method"].as_str() {
                Some("initialize") => json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "echo", "version": "0"},
                }),
                _ => json!({"echo": msg["params"], "session": session}),
            };
            Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
        })
    })
}

struct Running {
    url: String,
    seen: Arc<Seen>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), HttpError>>,
}

async fn start(listen: &str, token: Option<&str>) -> Running {
    let opts = Options {
        token: token.map(str::to_string),
        allow_remote: false,
        path: "/mcp".to_string(),
    };
    let listen: Listen = listen.parse().expect("listen");
    let server = Server::bind(&listen, opts).await.expect("bind");
    let url = match server.local_addr().strip_prefix("tcp:") {
        Some(a) => format!("http://{a}/mcp"),
        None => server.local_addr(),
    };
    let seen = Arc::new(Seen::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(echo(seen.clone()), async {
        let _ = stopped.await;
    }));
    Running {
        url,
        seen,
        stop,
        task,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// POST `body` with the headers a Streamable HTTP client sends, the token and a session.
async fn post(
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut req = client()
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(s) = session {
        req = req.header("Mcp-Session-Id", s);
    }
    req.send().await.expect("send")
}

async fn json_of(r: reqwest::Response) -> Value {
    let bytes = r.bytes().await.expect("body");
    serde_json::from_slice(&bytes).expect("json body")
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;

async fn initialize(url: &str) -> String {
    let r = post(url, Some(TOKEN), None, INIT).await;
    assert_eq!(r.status(), 200);
    let session = r.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(session.len(), 32);
    assert!(session.bytes().all(|b| b.is_ascii_hexdigit()));
    session
}

#[tokio::test]
async fn tcp_session_lifecycle_and_errors() {
    let s = start("tcp:127.0.0.1:0", Some(TOKEN)).await;
    let ping = r#"{"jsonrpc":"2.0","id":7,"method":"ping","params":{"x":1}}"#;

    // Auth comes first; the handler is never called without the token.
    for token in [None, Some("wrong"), Some("s3cret-token-and-more")] {
        let r = post(&s.url, token, None, INIT).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(
            json_of(r).await,
            json!({"error": "missing or wrong bearer token"})
        );
    }
    assert_eq!(s.seen.calls.load(SeqCst), 0);

    let r = post(&s.url, Some(TOKEN), None, INIT).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let session = r.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    let body = json_of(r).await;
    assert_eq!(body["id"], 0);
    assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(s.seen.calls.load(SeqCst), 1);

    let r = post(&s.url, Some(TOKEN), Some(&session), ping).await;
    assert_eq!(r.status(), 200);
    let want = json!({"jsonrpc":"2.0","id":7,"result":{"echo":{"x":1},"session":session}});
    assert_eq!(json_of(r).await, want);

    let r = post(&s.url, Some(TOKEN), None, ping).await;
    assert_eq!(r.status(), 400);
    let want = json!({"jsonrpc":"2.0","id":7,"error":{"code":-32600,
        "message":"missing Mcp-Session-Id header: send \"initialize\" first"}});
    assert_eq!(json_of(r).await, want);

    let unknown = "0123456789abcdef0123456789abcdef";
    let r = post(&s.url, Some(TOKEN), Some(unknown), ping).await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"]["code"], -32001);

    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let r = post(&s.url, Some(TOKEN), Some(&session), note).await;
    assert_eq!(r.status(), 202);
    assert!(r.bytes().await.expect("body").is_empty());

    let batch = format!("[{ping},{ping}]");
    let r = post(&s.url, Some(TOKEN), Some(&session), &batch).await;
    assert_eq!(r.status(), 400);
    let want = json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batches are not supported"}});
    assert_eq!(json_of(r).await, want);

    let r = post(&s.url, Some(TOKEN), Some(&session), "{not json").await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(r).await["error"]["code"], -32700);

    let big = format!(
        r#"{{"jsonrpc":"2.0","method":"n","params":"{}"}}"#,
        "x".repeat(MAX_BODY)
    );
    let r = post(&s.url, Some(TOKEN), Some(&session), &big).await;
    assert_eq!(r.status(), 413);

    let calls = s.seen.calls.load(SeqCst);
    let r = client()
        .get(&s.url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST, DELETE");
    let r = client()
        .put(&s.url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 405);
    let other = s.url.replace("/mcp", "/other");
    let r = post(&other, Some(TOKEN), Some(&session), ping).await;
    assert_eq!(r.status(), 404);
    let r = client()
        .post(&s.url)
        .bearer_auth(TOKEN)
        .header("Mcp-Session-Id", &session)
        .header("Content-Type", "text/plain")
        .body(ping)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 415);
    let r = client()
        .post(&s.url)
        .bearer_auth(TOKEN)
        .header("Mcp-Session-Id", &session)
        .header("Content-Type", "application/json")
        .header("Origin", "http://evil.example")
        .body(ping)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    assert_eq!(s.seen.calls.load(SeqCst), calls);

    let delete = |id: String| {
        let (url, c) = (s.url.clone(), client());
        async move {
            let r = c
                .delete(url)
                .bearer_auth(TOKEN)
                .header("Mcp-Session-Id", id);
            r.send().await.expect("delete").status()
        }
    };
    assert_eq!(delete(session.clone()).await, 200);
    assert_eq!(delete(session.clone()).await, 404);
    let r = post(&s.url, Some(TOKEN), Some(&session), ping).await;
    assert_eq!(r.status(), 404);

    let _ = s.stop.send(());
    s.task.await.expect("join").expect("run");
}

#[tokio::test]
async fn slow_handler_blocks_no_one_and_finishes_at_shutdown() {
    let s = start("tcp:127.0.0.1:0", Some(TOKEN)).await;
    let session = initialize(&s.url).await;
    let slow = {
        let (url, session) = (s.url.clone(), session.clone());
        tokio::spawn(async move {
            let slow = r#"{"jsonrpc":"2.0","id":1,"method":"slow"}"#;
            post(&url, Some(TOKEN), Some(&session), slow).await.status()
        })
    };
    while s.seen.calls.load(SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    let fast = post(&s.url, Some(TOKEN), Some(&session), ping);
    let r = tokio::time::timeout(Duration::from_secs(10), fast)
        .await
        .expect("a fast request is answered while a slow one runs");
    assert_eq!(r.status(), 200);
    assert!(!slow.is_finished());
    // Shutdown lets the request in flight finish, then `run` returns.
    let _ = s.stop.send(());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!s.task.is_finished());
    s.seen.gate.notify_one();
    assert_eq!(slow.await.expect("join"), 200);
    s.task.await.expect("join").expect("run");
}

#[tokio::test]
async fn bind_refusals() {
    let opts = |token: Option<&str>| Options {
        token: token.map(str::to_string),
        allow_remote: false,
        path: "/mcp".to_string(),
    };
    let any: Listen = "tcp:0.0.0.0:0".parse().expect("listen");
    let e = Server::bind(&any, opts(Some(TOKEN)))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e.to_string(),
        "tcp:0.0.0.0:0 is not a loopback address: pass --allow-remote to listen on it (with a --token-file)"
    );
    let lo: Listen = "tcp:127.0.0.1:0".parse().expect("listen");
    let e = Server::bind(&lo, opts(None)).await.err().expect("refused");
    assert_eq!(e.to_string(), "a tcp listener needs --token-file");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").expect("write");
    let listen = Listen::Unix(file.clone());
    let e = Server::bind(&listen, opts(None))
        .await
        .err()
        .expect("refused");
    let want = format!(
        "{} exists and is not a socket: refusing to replace it",
        file.display()
    );
    assert_eq!(e.to_string(), want);
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
}

#[test]
fn listen_parses_and_prints() {
    for s in [
        "unix:/run/fort.sock",
        "tcp:127.0.0.1:8080",
        "tcp:[::1]:8080",
    ] {
        let l: Listen = s.parse().expect("parse");
        assert_eq!(l.to_string(), s);
    }
    let e = "localhost:80".parse::<Listen>().expect_err("refused");
    assert_eq!(
        e.to_string(),
        "\"localhost:80\" is not a listen address: expected unix:PATH or tcp:IP:PORT (tcp:127.0.0.1:8080, tcp:[::1]:8080)"
    );
    assert!("tcp:localhost:80".parse::<Listen>().is_err());
    assert!("unix:".parse::<Listen>().is_err());
}

#[test]
fn bearer_and_origin_checks() {
    let mut h = HeaderMap::new();
    assert!(!bearer_ok(&h, TOKEN));
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("bearer s3cret-token"),
    );
    assert!(bearer_ok(&h, TOKEN));
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic s3cret-token"),
    );
    assert!(!bearer_ok(&h, TOKEN));
    assert!(origin_ok(&h));
    for (origin, ok) in [
        ("http://localhost:6274", true),
        ("http://127.0.0.1", true),
        ("http://[::1]:8080", true),
        ("https://localhost.evil.example", false),
        ("http://10.0.0.1:80", false),
        ("null", false),
    ] {
        h.insert(header::ORIGIN, HeaderValue::from_static(origin));
        assert_eq!(origin_ok(&h), ok, "{origin}");
    }
}

/// One HTTP/1.1 request over a unix socket, written by hand; the status and the body.
async fn unix_request(path: &str, request: &str) -> (u16, String) {
    let mut s = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = answer.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

#[tokio::test]
async fn unix_socket_is_private_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("fort.sock");
    // A dead socket left behind is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale"));
    let s = start(&format!("unix:{}", sock.display()), None).await;
    assert_eq!(s.url, format!("unix:{}", sock.display()));
    let mode = std::fs::metadata(&sock).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second server on the same live socket is refused.
    let again = Server::bind(&Listen::Unix(sock.clone()), s_opts()).await;
    assert!(matches!(again, Err(HttpError::InUse(_))));

    let path = sock.to_str().expect("utf-8");
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{INIT}",
        INIT.len()
    );
    let (status, body) = unix_request(path, &req).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["result"]["capabilities"], json!({"tools": {}}));

    let (status, _) = unix_request(
        path,
        "GET /mcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);

    let _ = s.stop.send(());
    s.task.await.expect("join").expect("run");
    assert!(!sock.exists(), "the socket file is removed at shutdown");
}

fn s_opts() -> Options {
    Options {
        token: None,
        allow_remote: false,
        path: "/mcp".to_string(),
    }
}

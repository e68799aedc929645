//! Listeners and connections: newline-delimited JSON-RPC, requests on one connection served
//! concurrently and answered by id, with a bound on line length.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::rpc::{self, Parsed, Session};
use crate::{tools, tunnel};

/// The longest request line accepted (a `file_write` of ~6 MiB of data in base64 fits).
pub const MAX_LINE: usize = 8 << 20;

/// Serve one connection until the peer closes it. A connection whose first line is
/// `fort/tunnel` becomes a raw stream instead (`tunnel`).
pub async fn connection<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(64 * 1024, r);
    let first = read_line(&mut reader).await;
    if let Ok(Line::Data(line)) = &first {
        if let Some(req) = tunnel::request(line) {
            // What the client pipelined after its request line is already in our buffer:
            // it belongs to the stream.
            let pending = reader.buffer().to_vec();
            tunnel::serve(reader.into_inner().unsplit(w), pending, req).await;
            return;
        }
    }
    let (tx, mut rx) = mpsc::channel::<Value>(64);
    let writer = tokio::spawn(async move {
        let mut w = w;
        while let Some(msg) = rx.recv().await {
            let mut line = msg.to_string();
            line.push('\n');
            if w.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut session = Session::default();
    let calls = Arc::new(tokio::sync::Semaphore::new(64));
    let mut first = Some(first);
    loop {
        let next = match first.take() {
            Some(f) => f,
            None => read_line(&mut reader).await,
        };
        let line = match next {
            Ok(Line::Data(l)) => l,
            Ok(Line::TooLong) => {
                let msg = rpc::error(
                    Value::Null,
                    rpc::INVALID_REQUEST,
                    format!(
                        "request too large: lines are limited to {} MiB",
                        MAX_LINE >> 20
                    ),
                );
                if tx.send(msg).await.is_err() {
                    break;
                }
                continue;
            }
            Ok(Line::Eof) | Err(_) => break,
        };
        match request(&mut session, &line) {
            Parsed::Nothing => {}
            Parsed::Reply(v) => {
                if tx.send(v).await.is_err() {
                    break;
                }
            }
            Parsed::Identity { id, args } => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let r = tokio::task::spawn_blocking(move || {
                        crate::identity::apply(
                            &args,
                            std::path::Path::new("/"),
                            &crate::identity::SystemClock,
                        )
                    })
                    .await;
                    let msg = match r {
                        Ok(r) => rpc::identity_result(id, &r),
                        Err(e) => rpc::error(
                            id,
                            rpc::INVALID_REQUEST,
                            format!("fort/identity failed: {e}"),
                        ),
                    };
                    let _ = tx.send(msg).await;
                });
            }
            Parsed::Call { id, name, args } => {
                let tx = tx.clone();
                // Bound the calls in flight per connection so a flood cannot exhaust memory.
                let Ok(permit) = calls.clone().acquire_owned().await else {
                    break;
                };
                let notify = tools::Notifier {
                    tx: tx.clone(),
                    request: id.clone(),
                };
                tokio::spawn(async move {
                    let out = tools::call(&name, args, Some(notify)).await;
                    let _ = tx.send(rpc::call_result(id, out)).await;
                    drop(permit);
                });
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// What one request line asks for; a blank line asks for nothing.
pub fn request(session: &mut Session, line: &[u8]) -> Parsed {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Parsed::Nothing;
    }
    rpc::parse(session, line)
}

/// One read of [`read_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Data(Vec<u8>),
    TooLong,
    Eof,
}

/// One line without its newline; a line longer than [`MAX_LINE`] is skipped to its end.
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Data(line)
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Data(line)
            });
        }
    }
}

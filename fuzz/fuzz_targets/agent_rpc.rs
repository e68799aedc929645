//! Fuzz target: bytes from a connection → the guest agent's line reader, JSON-RPC parsing,
//! and every tool's parameter decoding (`tools::prepare`), as `server::connection` does them.
//!
//! Tools are never run: a decoded call is dropped, so no command runs and no file is touched.
//! Replies are checked for JSON-RPC shape and serialized as the writer would.

#![no_main]
#![allow(clippy::unwrap_used, clippy::panic)]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use fort_guest_agent::rpc::{self, Parsed, Session};
use fort_guest_agent::server::{self, Line};
use fort_guest_agent::tools;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Reading from a byte slice never waits, so one poll finishes the future.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("reading from memory waited"),
    }
}

fn check_reply(v: &Value, request_id: Option<&Value>) {
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    let id = &v["id"];
    assert!(
        id.is_null() || id.is_string() || id.is_i64() || id.is_u64(),
        "{v}"
    );
    if let (Some(want), false) = (request_id, id.is_null()) {
        assert_eq!(id, want, "{v}");
    }
    assert!(v.get("result").is_some() != v.get("error").is_some(), "{v}");
    if let Some(e) = v.get("error") {
        assert!(e["code"].is_i64() && e["message"].is_string(), "{v}");
    }
    let _ = v.to_string();
}

fuzz_target!(|data: &[u8]| {
    let mut reader = tokio::io::BufReader::with_capacity(64, data);
    let mut session = Session::default();
    loop {
        let line = match now(server::read_line(&mut reader)).unwrap() {
            Line::Data(l) => l,
            Line::TooLong => continue,
            Line::Eof => break,
        };
        let request_id = serde_json::from_slice::<Value>(&line)
            .ok()
            .and_then(|v| v.get("id").cloned());
        match server::request(&mut session, &line) {
            Parsed::Nothing => {}
            // Never applied here: it would set the fuzzing machine's clock and network.
            Parsed::Identity { .. } => {}
            Parsed::Reply(v) => check_reply(&v, request_id.as_ref()),
            Parsed::Call { id, name, args } => {
                assert!(session.initialized);
                assert!(tools::exists(&name), "{name}");
                match tools::prepare(&name, args) {
                    Ok(_) => {} // decoded; not run
                    Err(e) => check_reply(&rpc::call_result(id, Err(e)), request_id.as_ref()),
                }
            }
        }
    }
});

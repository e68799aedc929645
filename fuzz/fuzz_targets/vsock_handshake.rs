//! Fuzz target: a hybrid-vsock socket's reply to `CONNECT <port>\n`, as the host reads it
//! (`host::agent::handshake_reply`, the byte-at-a-time parser `connect` uses).

#![no_main]
#![allow(clippy::unwrap_used)]

use fort::host::agent::{handshake_reply, HANDSHAKE_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match handshake_reply(data) {
        // The peer closed mid-reply: only possible before a newline and within the bound.
        None => {
            assert!(!data.contains(&b'\n'));
            assert!(data.len() <= HANDSHAKE_MAX + 1);
        }
        Some((verdict, used)) => {
            // Never reads past the reply's end, and the reply is bounded.
            assert!((1..=HANDSHAKE_MAX + 2).contains(&used), "used {used}");
            let answer = &data[..used - 1];
            assert!(!answer.contains(&b'\n'));
            assert!(data[used - 1] == b'\n' || answer.len() == HANDSHAKE_MAX + 1);
            match verdict {
                Ok(()) => assert!(answer.starts_with(b"OK ")),
                Err(text) => {
                    assert!(!answer.starts_with(b"OK "));
                    assert_eq!(text, String::from_utf8_lossy(answer));
                }
            }
        }
    }
});

//! A command in the guest through the agent's `process_*` tools, shared by `fort exec` and
//! `fort shell`: start it, follow its output from a cursor to its end (so a lost connection
//! can be resumed with `--attach ID`), forward stdin, window size changes and signals, and
//! turn how it ended into fort's exit code.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;
use fort_agent_protocol::process::{
    Exit, Output, ProcessId, ProcessInput, ProcessOutput, ProcessResize, ProcessSignal, Stream,
};
use fort_agent_protocol::tools::{self, Encoding};
use serde_json::Value;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use super::args::ProcessArgs;
use super::{exit, rawterm, CliError};
use crate::host::agent::{AgentError, Client};

/// How long one `process_output` waits for new output: long, since a lost connection ends the
/// wait at once anyway (the reader sees the end of the stream).
const WAIT_MS: u64 = 30_000;

/// How a followed process ended, from fort's side.
#[derive(Debug)]
pub enum Ended {
    /// The process ended and all its output was printed.
    Exit(Exit),
    /// The connection to the agent was lost; the process may still run in the guest. `cursor`
    /// is where printing stopped (what `--cursor` continues from).
    Lost { error: AgentError, cursor: u64 },
    /// fort got SIGTERM or SIGHUP while the local terminal was raw (the process got SIGHUP, as
    /// from a terminal that went away), or its stdout was closed (SIGPIPE; the process got
    /// SIGTERM).
    Signalled(i32),
}

/// Like a shell's `$?`: the exit code, 124 when killed at its timeout, 128 + N when killed by
/// signal N.
pub fn exit_code(e: &Exit) -> u8 {
    if e.timed_out {
        return exit::TIMED_OUT;
    }
    match (e.exit_code, e.signal) {
        (Some(c), _) => u8::try_from(c).unwrap_or(exit::ERROR),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(exit::ERROR),
        _ => exit::ERROR,
    }
}

/// `--env KEY=VALUE…` as a map.
pub fn env(p: &ProcessArgs) -> Result<BTreeMap<String, String>, CliError> {
    p.env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CliError::Usage(format!("--env {kv}: expected KEY=VALUE")))
        })
        .collect()
}

/// A drive the agent could not mount is said on every exec and shell: the command may depend
/// on it.
pub fn warn_unmounted(client: &Client) {
    for m in client.mounts() {
        if let Some(e) = &m.error {
            eprintln!(
                "fort: warning: drive.{} is not mounted at {}: {e}",
                m.drive, m.path
            );
        }
    }
}

/// The signals fort handles while it follows a process, registered before the process starts
/// so that none is missed (a window change between reading the size and starting, …).
pub struct Signals {
    winch: Signal,
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    pub fn register() -> Result<Signals, CliError> {
        let s = |k| signal(k).map_err(CliError::Signals);
        Ok(Signals {
            winch: s(SignalKind::window_change())?,
            int: s(SignalKind::interrupt())?,
            term: s(SignalKind::terminate())?,
            hup: s(SignalKind::hangup())?,
        })
    }
}

/// What to follow and how.
pub struct Follow {
    pub client: Client,
    pub id: ProcessId,
    pub cursor: u64,
    /// Forward fort's stdin to the process.
    pub input: bool,
    /// The process is on a PTY: send window size changes.
    pub pty: bool,
    /// The local terminal is raw: SIGTERM/SIGHUP end fort (after a SIGHUP to the process)
    /// instead of being passed on while fort keeps following.
    pub raw: bool,
}

/// Follow the process to its end (or until the connection is lost), printing its output as it
/// comes: stdout and PTY output to stdout, stderr to stderr.
pub async fn follow(f: Follow, mut sig: Signals) -> Result<Ended, CliError> {
    let _input = f.input.then(|| {
        AbortOnDrop(tokio::spawn(forward_input(
            f.client.clone(),
            f.id,
            stdin_reader(),
        )))
    });
    let output = print_output(&f.client, f.id, f.cursor);
    tokio::pin!(output);
    loop {
        tokio::select! {
            r = &mut output => return r,
            Some(()) = sig.winch.recv(), if f.pty => {
                if let Some(size) = rawterm::window_size() {
                    let resize = ProcessResize { id: f.id, rows: size.rows, cols: size.cols };
                    // A failure is the output loop's to report (lost) or harmless (ended).
                    let _ = f.client.tool::<_, Value>(tools::PROCESS_RESIZE, &resize).await;
                }
            }
            Some(()) = sig.int.recv() => send_signal(&f.client, f.id, "INT").await,
            Some(()) = sig.term.recv() => {
                if f.raw {
                    send_signal(&f.client, f.id, "HUP").await;
                    return Ok(Ended::Signalled(libc::SIGTERM));
                }
                send_signal(&f.client, f.id, "TERM").await;
            }
            Some(()) = sig.hup.recv() => {
                send_signal(&f.client, f.id, "HUP").await;
                if f.raw {
                    return Ok(Ended::Signalled(libc::SIGHUP));
                }
            }
        }
    }
}

async fn send_signal(client: &Client, id: ProcessId, name: &str) {
    let s = ProcessSignal {
        id,
        signal: Some(name.to_string()),
        process_only: false,
    };
    let _ = client.tool::<_, Value>(tools::PROCESS_SIGNAL, &s).await;
}

async fn print_output(client: &Client, id: ProcessId, mut cursor: u64) -> Result<Ended, CliError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    loop {
        let ask = ProcessOutput {
            id,
            cursor: Some(cursor),
            wait_ms: Some(WAIT_MS),
            max_bytes: None,
            encoding: Encoding::Base64,
        };
        let out: Output = match client.tool(tools::PROCESS_OUTPUT, &ask).await {
            Ok(o) => o,
            Err(error) if error.is_lost() => return Ok(Ended::Lost { error, cursor }),
            Err(e) => return Err(e.into()),
        };
        if out.dropped > 0 {
            eprintln!(
                "fort: {} bytes of output were lost (the agent keeps only the newest output)",
                out.dropped
            );
        }
        for c in &out.chunks {
            let bytes = b64.decode(&c.data).map_err(|e| AgentError::Result {
                tool: tools::PROCESS_OUTPUT.to_string(),
                error: format!("invalid base64: {e}"),
            })?;
            let written = match c.stream {
                Stream::Stderr => std::io::stderr().write_all(&bytes),
                Stream::Stdout | Stream::Pty => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&bytes).and_then(|()| o.flush())
                }
            };
            match written {
                Ok(()) => {}
                // The reader went away (`fort exec … | head -1`): as a local command would die
                // of SIGPIPE, the guest's is ended and fort exits 128 + SIGPIPE, quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    send_signal(client, id, "TERM").await;
                    return Ok(Ended::Signalled(libc::SIGPIPE));
                }
                Err(e) => return Err(CliError::Output(e)),
            }
        }
        cursor = out.cursor;
        if out.eof {
            return Ok(Ended::Exit(out.exit.unwrap_or_default()));
        }
    }
}

/// Aborts a task when dropped (the stdin forwarder outlives nothing it serves).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// fort's stdin, read on a plain thread: tokio's stdin reads on its blocking pool, which the
/// runtime waits for at exit — a read that never returns (a terminal nobody types on) would
/// hang fort after the process ended. The thread is left blocked and dies with the process.
/// The channel closes at EOF (or a read error: a terminal that hung up).
fn stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// Stdin to `process_input`, in order, whatever arrived while the last write was in flight
/// sent as one; at EOF, `close`. Errors end the forwarding: a lost connection is reported by
/// the output loop, and a process that exited needs no input.
async fn forward_input(client: Client, id: ProcessId, mut rx: mpsc::Receiver<Vec<u8>>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    while let Some(mut data) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            data.extend_from_slice(&more);
        }
        let input = ProcessInput {
            id,
            data: Some(b64.encode(&data)),
            encoding: Encoding::Base64,
            close: false,
        };
        if client
            .tool::<_, Value>(tools::PROCESS_INPUT, &input)
            .await
            .is_err()
        {
            return;
        }
    }
    let close = ProcessInput {
        id,
        data: None,
        encoding: Encoding::Utf8,
        close: true,
    };
    let _ = client.tool::<_, Value>(tools::PROCESS_INPUT, &close).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_like_a_shell() {
        let e = |exit_code, signal, timed_out| Exit {
            exit_code,
            signal,
            timed_out,
        };
        assert_eq!(exit_code(&e(Some(0), None, false)), 0);
        assert_eq!(exit_code(&e(Some(3), None, false)), 3);
        assert_eq!(exit_code(&e(None, Some(9), false)), 137);
        assert_eq!(exit_code(&e(None, Some(2), false)), 130);
        assert_eq!(exit_code(&e(None, Some(9), true)), 124);
        assert_eq!(exit_code(&e(None, None, false)), 1);
    }
}

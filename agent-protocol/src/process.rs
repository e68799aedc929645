//! Long-running processes owned by the agent (`process_*` tools) and `port_check`: arguments,
//! results and limits. Processes outlive the connection that started them; any connection
//! can list them and read their output from a cursor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tools::Encoding;

/// Output kept per process by default (a ring: the oldest bytes are dropped first).
pub const DEFAULT_BUFFER_BYTES: usize = 8 << 20;
/// The largest ring a `process_start` may ask for.
pub const MAX_BUFFER_BYTES: usize = 64 << 20;
/// Processes running at once; one more `process_start` is refused (finished ones do not count).
pub const MAX_RUNNING: usize = 256;
/// Finished processes kept for `process_output`/`process_list`: at most this many (the
/// oldest-finished forgotten first) …
pub const MAX_FINISHED: usize = 64;
/// … and each for at most this long after it exited.
pub const FINISHED_RETENTION_SECS: u64 = 600;
/// The longest `process_output` waits for new output.
pub const MAX_WAIT_MS: u64 = 60_000;
/// The default and the largest amount of output one `process_output` returns.
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;
pub const MAX_MAX_BYTES: usize = 4 << 20;
/// PTY sizes accepted (rows and columns each).
pub const MAX_PTY_DIM: u32 = 10_000;

/// A process's id: assigned by the agent, never reused while it runs (not the guest PID).
pub type ProcessId = u64;

/// A terminal size.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    pub rows: u32,
    pub cols: u32,
}

impl PtySize {
    /// The error text for a size outside 1..=[`MAX_PTY_DIM`].
    pub fn check(&self) -> Result<(), String> {
        let ok = |v: u32| (1..=MAX_PTY_DIM).contains(&v);
        if ok(self.rows) && ok(self.cols) {
            Ok(())
        } else {
            Err(format!(
                "a terminal of {} rows × {} columns: rows and cols must each be 1 to {MAX_PTY_DIM}",
                self.rows, self.cols
            ))
        }
    }
}

/// `process_start`: start a process and return its id at once. Give `argv` or `command`; with
/// `pty` and neither, the login shell of the user it runs as (its /etc/passwd shell, else
/// `/bin/sh`, with argv[0] `-NAME` so it acts as a login shell).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessStart {
    /// Program and arguments, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A shell line for `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run on a new pseudo-terminal of this size (stdin, stdout and stderr are its slave;
    /// output comes as stream `pty`). Without it: pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
    /// Keep stdin open for `process_input` (default true; false gives /dev/null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// Output kept (default [`DEFAULT_BUFFER_BYTES`], or the agent's `--output-buffer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<usize>,
    /// Kill the process group after this many seconds (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
}

/// The result of `process_start`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub id: ProcessId,
    pub pid: u32,
    pub pty: bool,
}

/// `process_output`: output from `cursor` on, waiting up to `wait_ms` when there is none yet.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessOutput {
    pub id: ProcessId,
    /// A position in the process's output (all streams, in order; 0 is its first byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Encoding::is_default")]
    pub encoding: Encoding,
}

/// Which stream a chunk came from.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    Pty,
}

/// A run of output from one stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub stream: Stream,
    /// The cursor of this chunk's first byte.
    pub cursor: u64,
    /// The bytes, in the request's encoding.
    pub data: String,
}

/// How a process ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Killed at its `timeout_secs`.
    #[serde(default)]
    pub timed_out: bool,
}

/// The result of `process_output`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub id: ProcessId,
    pub chunks: Vec<Chunk>,
    /// Where the next `process_output` continues.
    pub cursor: u64,
    /// Bytes between the requested cursor and the oldest byte still kept (0: nothing lost).
    pub dropped: u64,
    pub running: bool,
    /// Set once the process has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// Ended and everything it printed has been returned: no call after this returns more.
    pub eof: bool,
}

/// `process_input`: write to stdin (or the PTY), then optionally close stdin.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessInput {
    pub id: ProcessId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Encoding::is_default")]
    pub encoding: Encoding,
    /// Close stdin after writing (EOF for the process; for a PTY: sends ^D).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close: bool,
}

/// `process_signal`: send a signal to the process's group (or only the process).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessSignal {
    pub id: ProcessId,
    /// `TERM`, `SIGTERM`, `15`, … (default `TERM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Only the process, not its group (default false: the whole group).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub process_only: bool,
}

/// `process_resize`: a new window size for a PTY process (it gets SIGWINCH).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessResize {
    pub id: ProcessId,
    pub rows: u32,
    pub cols: u32,
}

/// One entry of `process_list`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub id: ProcessId,
    pub pid: u32,
    /// What was asked to run (`argv`, or `["/bin/sh", "-c", command]`).
    pub argv: Vec<String>,
    pub pty: bool,
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The cursor after its last byte of output so far.
    pub output_bytes: u64,
    /// Bytes dropped from the front of its ring.
    pub dropped_bytes: u64,
    pub stdin_open: bool,
}

/// The result of `process_list`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct List {
    pub processes: Vec<Info>,
}

/// `port_check`: is anything listening on a guest port, and can the agent connect to it?
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortCheck {
    pub port: u16,
    /// The address to try connecting to (default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The result of `port_check`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PortStatus {
    pub port: u16,
    pub host: String,
    /// TCP sockets in LISTEN on this port (`0.0.0.0:80`, `[::1]:80`, …), from /proc/net/tcp{,6}.
    pub listeners: Vec<String>,
    /// Whether a connection to `host:port` succeeded.
    pub connectable: bool,
    /// Why not, when it did not (`connection refused`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

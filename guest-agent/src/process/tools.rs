//! The `process_*` tool calls: argument checks (shape errors are [`ToolError::Params`]) and
//! what each does to the registry (state errors, such as an unknown id, are
//! [`ToolError::Failed`]).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use fort_agent_protocol::process::{
    self as p, Chunk, Exit, Output as Out, ProcessId, PtySize, Started, Stream,
    FINISHED_RETENTION_SECS, MAX_BUFFER_BYTES, MAX_MAX_BYTES, MAX_RUNNING, MAX_WAIT_MS,
};
use fort_agent_protocol::tools::Encoding;
use rustix::process::Signal;
use serde_json::json;

use super::{registry, ring, spawn, Input, Proc, State};
use crate::tools::{Output, ToolError};

/// A `process_*` call with its arguments checked.
pub enum Request {
    Start(Box<Start>),
    Output(p::ProcessOutput),
    Input(p::ProcessInput, Vec<u8>),
    Signal(ProcessId, Signal, bool),
    Resize(ProcessId, PtySize),
    List,
}

pub struct Start {
    plan: spawn::Plan,
    buffer: usize,
    timeout: Option<Duration>,
}

fn params(msg: impl Into<String>) -> ToolError {
    ToolError::Params(msg.into())
}

pub fn prepare_start(a: p::ProcessStart) -> Result<Request, ToolError> {
    let program = match (a.argv, a.command) {
        (Some(v), None) if !v.is_empty() => Some((v[0].clone(), v[1..].to_vec())),
        (None, Some(c)) => Some(("/bin/sh".into(), vec!["-c".into(), c])),
        (None, None) if a.pty.is_some() => None,
        _ => {
            return Err(params(
                "give exactly one of `argv` (non-empty) or `command` (or neither, with `pty`, for a login shell)",
            ))
        }
    };
    if let Some(size) = a.pty {
        size.check().map_err(ToolError::Params)?;
    }
    let buffer = a.buffer_bytes.unwrap_or_else(super::default_buffer);
    if !(1..=MAX_BUFFER_BYTES).contains(&buffer) {
        return Err(params(format!(
            "`buffer_bytes` must be 1 to {MAX_BUFFER_BYTES}, got {buffer}"
        )));
    }
    let timeout = match a.timeout_secs {
        None => None,
        Some(t) if t.is_finite() && t >= 0.0 => Duration::try_from_secs_f64(t).ok(),
        Some(_) => return Err(params("`timeout_secs` must be a non-negative number")),
    };
    Ok(Request::Start(Box::new(Start {
        plan: spawn::Plan {
            program,
            cwd: a.cwd,
            env: a.env,
            user: a.user,
            pty: a.pty,
            stdin: a.stdin.unwrap_or(true),
        },
        buffer,
        timeout,
    })))
}

pub fn prepare_output(a: p::ProcessOutput) -> Result<Request, ToolError> {
    if a.wait_ms.is_some_and(|w| w > MAX_WAIT_MS) {
        return Err(params(format!("`wait_ms` must be at most {MAX_WAIT_MS}")));
    }
    if a.max_bytes
        .is_some_and(|m| !(1..=MAX_MAX_BYTES).contains(&m))
    {
        return Err(params(format!("`max_bytes` must be 1 to {MAX_MAX_BYTES}")));
    }
    Ok(Request::Output(a))
}

pub fn prepare_input(a: p::ProcessInput) -> Result<Request, ToolError> {
    let data = match (&a.data, a.encoding) {
        (None, _) => Vec::new(),
        (Some(d), Encoding::Utf8) => d.clone().into_bytes(),
        (Some(d), Encoding::Base64) => base64::engine::general_purpose::STANDARD
            .decode(d.as_bytes())
            .map_err(|e| params(format!("`data` is not valid base64: {e}")))?,
    };
    Ok(Request::Input(a, data))
}

/// The signals `process_signal` accepts by name.
const SIGNALS: &[(&str, Signal)] = &[
    ("TERM", Signal::Term),
    ("KILL", Signal::Kill),
    ("INT", Signal::Int),
    ("HUP", Signal::Hup),
    ("QUIT", Signal::Quit),
    ("USR1", Signal::Usr1),
    ("USR2", Signal::Usr2),
    ("STOP", Signal::Stop),
    ("CONT", Signal::Cont),
];

pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let name = s.trim().to_ascii_uppercase();
    let bare = name.strip_prefix("SIG").unwrap_or(&name);
    if let Some((_, sig)) = SIGNALS.iter().find(|(n, _)| *n == bare) {
        return Ok(*sig);
    }
    if let Ok(n) = bare.parse::<i32>() {
        if let Some((_, sig)) = SIGNALS.iter().find(|(_, sig)| *sig as i32 == n) {
            return Ok(*sig);
        }
    }
    Err(format!(
        "unknown signal \"{s}\": use TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP or CONT (with or without SIG), or one of their numbers 15, 9, 2, 1, 3, 10, 12, 19, 18"
    ))
}

pub fn prepare_signal(a: p::ProcessSignal) -> Result<Request, ToolError> {
    let sig = parse_signal(a.signal.as_deref().unwrap_or("TERM")).map_err(ToolError::Params)?;
    Ok(Request::Signal(a.id, sig, a.process_only))
}

pub fn prepare_resize(a: p::ProcessResize) -> Result<Request, ToolError> {
    let size = PtySize {
        rows: a.rows,
        cols: a.cols,
    };
    size.check().map_err(ToolError::Params)?;
    Ok(Request::Resize(a.id, size))
}

pub async fn run(req: Request) -> Result<Output, ToolError> {
    match req {
        Request::Start(s) => start(*s).await,
        Request::Output(a) => output(a).await,
        Request::Input(a, data) => input(a, data).await,
        Request::Signal(id, sig, only) => signal(id, sig, only),
        Request::Resize(id, size) => resize(id, size),
        Request::List => Ok(list()),
    }
}

fn unknown(id: ProcessId) -> ToolError {
    ToolError::Failed(format!(
        "no process {id} (process_list shows the ids; finished processes are kept for {} minutes)",
        FINISHED_RETENTION_SECS / 60
    ))
}

fn find(id: ProcessId) -> Result<Arc<Proc>, ToolError> {
    registry().get(id).ok_or_else(|| unknown(id))
}

fn structured<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

async fn start(s: Start) -> Result<Output, ToolError> {
    let id = {
        let mut reg = registry();
        reg.prune();
        if reg.running >= MAX_RUNNING {
            return Err(ToolError::Failed(format!(
                "too many running processes: {MAX_RUNNING} (the agent's limit); end some with process_signal first"
            )));
        }
        reg.running += 1;
        let id = reg.next;
        reg.next += 1;
        id
    };
    let is_pty = s.plan.pty.is_some();
    let stdin_open = s.plan.stdin;
    let spawned = match spawn::spawn(s.plan) {
        Ok(sp) => sp,
        Err(e) => {
            let mut reg = registry();
            reg.running = reg.running.saturating_sub(1);
            return Err(e);
        }
    };
    let master = spawned.master.map(Arc::new);
    let input = match (&spawned.stdin, &master) {
        (_, Some(_)) if stdin_open => Input::Pty,
        _ => spawned.stdin.map_or(Input::None, Input::Pipe),
    };
    let proc = Arc::new(Proc {
        id,
        pid: spawned.pid,
        argv: spawned.argv,
        is_pty,
        started_at_ms: super::now_ms(),
        state: std::sync::Mutex::new(State {
            ring: ring::Ring::new(s.buffer),
            exit: None,
            output_done: false,
            finished: None,
            stdin_open,
        }),
        changed: tokio::sync::watch::channel(()).0,
        input: tokio::sync::Mutex::new(input),
        master: std::sync::Mutex::new(master.clone()),
    });
    registry().procs.insert(id, proc.clone());
    let mut readers = Vec::new();
    if let Some(o) = spawned.stdout {
        readers.push(tokio::spawn(super::pump(proc.clone(), Stream::Stdout, o)));
    }
    if let Some(e) = spawned.stderr {
        readers.push(tokio::spawn(super::pump(proc.clone(), Stream::Stderr, e)));
    }
    if let Some(m) = master {
        readers.push(tokio::spawn(super::pump_pty(proc.clone(), m)));
    }
    tokio::spawn(super::supervise(
        proc.clone(),
        spawned.child,
        readers,
        s.timeout,
    ));
    let started = Started {
        id,
        pid: proc.pid,
        pty: is_pty,
    };
    Ok(Output {
        text: format!("started process {id} (pid {})", proc.pid),
        structured: structured(&started),
    })
}

fn describe(exit: Option<Exit>) -> String {
    match exit {
        None => "running".into(),
        Some(Exit {
            timed_out: true, ..
        }) => "killed at its timeout".into(),
        Some(Exit {
            exit_code: Some(c), ..
        }) => format!("exited with code {c}"),
        Some(Exit {
            signal: Some(s), ..
        }) => format!("killed by signal {s}"),
        Some(_) => "ended".into(),
    }
}

/// The result of one look at the ring, or `None` when there is nothing to return yet.
fn look(
    p: &Proc,
    st: &State,
    a: &p::ProcessOutput,
    last_try: bool,
) -> Result<Option<Out>, ToolError> {
    let cursor = a.cursor.unwrap_or(0);
    let end = st.ring.end();
    if cursor > end {
        return Err(ToolError::Failed(format!(
            "cursor {cursor} is past the end of process {}'s output ({end} bytes so far)",
            p.id
        )));
    }
    let complete = st.exit.is_some() && st.output_done;
    let mut slice = st
        .ring
        .read(cursor, a.max_bytes.unwrap_or(p::DEFAULT_MAX_BYTES));
    // A character cut at the end of the range may still be completed: return it next time
    // (unless nothing more can come).
    // When the range was cut by `max_bytes`, only if something else remains (a tiny
    // `max_bytes` must still make progress).
    if a.encoding == Encoding::Utf8 && (!complete || slice.to < end) {
        if let Some(last) = slice.runs.last_mut() {
            let cut = ring::incomplete_utf8_tail(&last.2);
            let waiting = slice.to == end;
            if cut > 0 && (waiting || (slice.to - slice.from) as usize > cut) {
                last.2.truncate(last.2.len() - cut);
                slice.to -= cut as u64;
                if last.2.is_empty() {
                    slice.runs.pop();
                }
            }
        }
    }
    let has_data = slice.to > slice.from;
    if !has_data && !complete && !last_try {
        return Ok(None);
    }
    let chunks = slice
        .runs
        .into_iter()
        .map(|(stream, cursor, bytes)| Chunk {
            stream,
            cursor,
            data: match a.encoding {
                Encoding::Utf8 => String::from_utf8_lossy(&bytes).into_owned(),
                Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(&bytes),
            },
        })
        .collect();
    Ok(Some(Out {
        id: p.id,
        chunks,
        cursor: slice.to,
        dropped: slice.from - cursor,
        running: st.exit.is_none(),
        exit: st.exit,
        eof: complete && slice.to == end,
    }))
}

async fn output(a: p::ProcessOutput) -> Result<Output, ToolError> {
    let p = find(a.id)?;
    let wait = Duration::from_millis(a.wait_ms.unwrap_or(0));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look: a change after it wakes the wait below.
    let mut rx = p.changed.subscribe();
    let out = loop {
        let last_try = tokio::time::Instant::now() >= deadline;
        if let Some(out) = look(&p, &p.state(), &a, last_try)? {
            break out;
        }
        // Woken by new output, the exit, or the deadline; the sender lives as long as `p`.
        let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
    };
    let mut text: String = match a.encoding {
        Encoding::Utf8 => out.chunks.iter().map(|c| c.data.as_str()).collect(),
        Encoding::Base64 => String::new(),
    };
    let bytes = out.cursor - a.cursor.unwrap_or(0) - out.dropped;
    text.push_str(&format!(
        "\n[process {}: {}; {bytes} bytes, next cursor {}{}{}]",
        out.id,
        describe(out.exit),
        out.cursor,
        if out.dropped > 0 {
            format!("; {} earlier bytes were dropped", out.dropped)
        } else {
            String::new()
        },
        if out.eof { "; end of output" } else { "" },
    ));
    Ok(Output {
        text,
        structured: structured(&out),
    })
}

async fn input(a: p::ProcessInput, data: Vec<u8>) -> Result<Output, ToolError> {
    let p = find(a.id)?;
    let closed = || ToolError::Failed(format!("process {}'s stdin is closed", p.id));
    let gone = || ToolError::Failed(format!("process {} has exited; its stdin is gone", p.id));
    let mut input = p.input.lock().await;
    {
        let st = p.state();
        if !st.stdin_open {
            return Err(closed());
        }
        if st.exit.is_some() {
            return Err(gone());
        }
    }
    let wrote = data.len();
    match &mut *input {
        Input::Pipe(pipe) => {
            use tokio::io::AsyncWriteExt;
            if !data.is_empty() {
                pipe.write_all(&data).await.map_err(|_| gone())?;
            }
            if a.close {
                *input = Input::None;
            }
        }
        Input::Pty => {
            let m = p.master().ok_or_else(gone)?;
            let mut data = data;
            if a.close {
                // A terminal has no "close stdin": ^D (EOT) is what a user types for EOF
                // (it ends input at the start of a line, in canonical mode).
                data.push(0x04);
            }
            m.write_all(&data).await.map_err(|_| gone())?;
        }
        Input::None => return Err(gone()),
    }
    if a.close {
        p.state().stdin_open = false;
        p.changed.send_replace(());
    }
    Ok(Output {
        text: format!(
            "wrote {wrote} bytes to process {}{}",
            p.id,
            if a.close { "; stdin closed" } else { "" }
        ),
        structured: json!({"id": p.id, "bytes_written": wrote, "stdin_open": !a.close}),
    })
}

fn signal(id: ProcessId, sig: Signal, process_only: bool) -> Result<Output, ToolError> {
    let p = find(id)?;
    // Checked under the state lock, and the exit is recorded under it as soon as the wait
    // returns: a pid is not signalled once it is known to be gone (and reuse within the
    // microseconds between the reap and the record would need the pid counter to wrap).
    let st = p.state();
    if st.exit.is_some() {
        return Err(ToolError::Failed(format!(
            "process {id} has exited ({}); there is nothing to signal",
            describe(st.exit)
        )));
    }
    let r = match rustix::process::Pid::from_raw(p.pid as i32) {
        Some(pid) if process_only => rustix::process::kill_process(pid, sig),
        Some(_) => super::signal_group(p.pid, sig),
        None => Err(rustix::io::Errno::SRCH),
    };
    drop(st);
    r.map_err(|e| ToolError::Failed(format!("cannot signal process {id}: {e}")))?;
    let name = SIGNALS
        .iter()
        .find(|(_, s)| *s == sig)
        .map_or("?", |(n, _)| n);
    Ok(Output {
        text: format!(
            "sent SIG{name} to process {id}{}",
            if process_only { "" } else { "'s process group" }
        ),
        structured: json!({"id": id, "signal": sig as i32, "process_only": process_only}),
    })
}

fn resize(id: ProcessId, size: PtySize) -> Result<Output, ToolError> {
    let p = find(id)?;
    if !p.is_pty {
        return Err(ToolError::Failed(format!(
            "process {id} has no terminal (it was started without pty)"
        )));
    }
    let m = p.master().ok_or_else(|| {
        ToolError::Failed(format!("process {id} has exited; its terminal is gone"))
    })?;
    m.resize(size)
        .map_err(|e| ToolError::Failed(format!("cannot resize process {id}'s terminal: {e}")))?;
    Ok(Output {
        text: format!(
            "process {id}'s terminal is now {} rows × {} columns",
            size.rows, size.cols
        ),
        structured: json!({"id": id, "rows": size.rows, "cols": size.cols}),
    })
}

fn list() -> Output {
    let procs: Vec<Arc<Proc>> = {
        let mut reg = registry();
        reg.prune();
        reg.procs.values().cloned().collect()
    };
    let list = p::List {
        processes: procs.iter().map(|p| p.info()).collect(),
    };
    let mut text = String::new();
    for i in &list.processes {
        text.push_str(&format!(
            "{} pid {} {}: {:?}, {} bytes of output{}\n",
            i.id,
            i.pid,
            describe(i.exit),
            i.argv,
            i.output_bytes,
            if i.pty { ", pty" } else { "" }
        ));
    }
    if text.is_empty() {
        text = "no processes\n".into();
    }
    Output {
        text,
        structured: structured(&list),
    }
}

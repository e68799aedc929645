//! Long-running processes owned by the agent (the `process_*` tools): one registry for the
//! agent's lifetime, not per connection, so processes survive their client and any
//! connection can list them and read their output. This module owns the registry, each
//! process's state and the tasks that feed and finish it; `tools` holds the tool calls.

mod pty;
mod ring;
mod spawn;
pub mod tools;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fort_agent_protocol::process::{
    Exit, ProcessId, Stream, DEFAULT_BUFFER_BYTES, FINISHED_RETENTION_SECS, MAX_FINISHED,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use ring::Ring;

/// After the process exits, how long processes it left behind (holding its stdout or the
/// terminal) may keep adding output before its output is declared complete.
const GRACE: Duration = Duration::from_secs(2);
/// One read of a pipe or terminal.
const READ_CHUNK: usize = 64 * 1024;

/// The ring size when `process_start` gives none (`--output-buffer BYTES`).
static DEFAULT_BUFFER: AtomicUsize = AtomicUsize::new(DEFAULT_BUFFER_BYTES);

pub fn set_default_buffer(bytes: usize) {
    DEFAULT_BUFFER.store(bytes, Ordering::Relaxed);
}

pub fn default_buffer() -> usize {
    DEFAULT_BUFFER.load(Ordering::Relaxed)
}

/// The open-files limit the agent started with, which its children get back.
static CHILD_NOFILE: Mutex<Option<rustix::process::Rlimit>> = Mutex::new(None);

/// Raise the soft open-files limit to the hard one: every running process holds up to three
/// descriptors, and 256 of them exceed the common default of 1024 with what else is open.
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        *lock(&CHILD_NOFILE) = Some(l);
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// The limit a child should run with (like systemd, children get the usual soft limit back:
/// programs that use select(2) or close every descriptor up to the limit misbehave with a
/// huge one). `None`: unchanged.
fn child_nofile() -> Option<rustix::process::Rlimit> {
    *lock(&CHILD_NOFILE)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Lock a std mutex, recovering from a poisoned one (a panicking task must not take the
/// registry down with it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where input goes.
enum Input {
    Pipe(tokio::process::ChildStdin),
    Pty,
    None,
}

struct State {
    ring: Ring,
    /// Set when the process has been waited for.
    exit: Option<Exit>,
    /// Everything it (and what it left behind, within [`GRACE`]) printed is in the ring.
    output_done: bool,
    finished: Option<(Instant, u64)>,
    stdin_open: bool,
}

pub struct Proc {
    id: ProcessId,
    pid: u32,
    argv: Vec<String>,
    is_pty: bool,
    started_at_ms: u64,
    state: Mutex<State>,
    /// Bumped on every change of `state` (output, exit): `process_output` waits on it.
    changed: watch::Sender<()>,
    input: tokio::sync::Mutex<Input>,
    /// The terminal's master while the process runs (input and resize).
    master: Mutex<Option<Arc<pty::Master>>>,
}

impl Proc {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn push(&self, stream: Stream, bytes: &[u8]) {
        self.state().ring.push(stream, bytes);
        self.changed.send_replace(());
    }

    fn master(&self) -> Option<Arc<pty::Master>> {
        lock(&self.master).clone()
    }

    fn info(&self) -> fort_agent_protocol::process::Info {
        let st = self.state();
        fort_agent_protocol::process::Info {
            id: self.id,
            pid: self.pid,
            argv: self.argv.clone(),
            pty: self.is_pty,
            running: st.exit.is_none(),
            exit: st.exit,
            started_at_ms: self.started_at_ms,
            finished_at_ms: st.finished.map(|f| f.1),
            output_bytes: st.ring.end(),
            dropped_bytes: st.ring.start(),
            stdin_open: st.stdin_open && st.exit.is_none(),
        }
    }
}

struct Registry {
    next: ProcessId,
    /// Started and not yet waited for (reserved before spawning, so concurrent starts cannot
    /// overshoot the limit).
    running: usize,
    procs: BTreeMap<ProcessId, Arc<Proc>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 1,
    running: 0,
    procs: BTreeMap::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    lock(&REGISTRY)
}

impl Registry {
    /// Forget finished processes past their retention, and the oldest-finished beyond
    /// [`MAX_FINISHED`]. Done on every registry access and when a process finishes, so
    /// nothing is kept longer than documented by more than the time to the next call.
    fn prune(&mut self) {
        let keep = Duration::from_secs(FINISHED_RETENTION_SECS);
        let mut finished: Vec<(Instant, ProcessId)> = Vec::new();
        self.procs.retain(|&id, p| match p.state().finished {
            Some((at, _)) if at.elapsed() >= keep => false,
            Some((at, _)) => {
                finished.push((at, id));
                true
            }
            None => true,
        });
        if finished.len() > MAX_FINISHED {
            finished.sort();
            for (_, id) in &finished[..finished.len() - MAX_FINISHED] {
                self.procs.remove(id);
            }
        }
    }

    fn get(&mut self, id: ProcessId) -> Option<Arc<Proc>> {
        self.prune();
        self.procs.get(&id).cloned()
    }
}

/// Copy one pipe into the ring until it ends.
async fn pump<R: AsyncRead + Unpin>(p: Arc<Proc>, stream: Stream, mut r: R) {
    // Capacity, not length: pages are only touched as output arrives, so an idle process
    // costs little.
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        buf.clear();
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => p.push(stream, &buf),
        }
    }
}

async fn pump_pty(p: Arc<Proc>, m: Arc<pty::Master>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match m.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => p.push(Stream::Pty, &buf[..n]),
        }
    }
}

/// Wait for the process (killing its group at the timeout), record its exit, let its output
/// drain, then mark it finished.
async fn supervise(
    p: Arc<Proc>,
    mut child: tokio::process::Child,
    readers: Vec<tokio::task::JoinHandle<()>>,
    timeout: Option<Duration>,
) {
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let (status, timed_out) = tokio::select! {
        s = child.wait() => (s.ok(), false),
        _ = deadline => {
            let _ = signal_group(p.pid, rustix::process::Signal::Kill);
            (child.wait().await.ok(), true)
        }
    };
    spawn::forget(p.pid);
    {
        use std::os::unix::process::ExitStatusExt;
        let exit = Exit {
            exit_code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
        };
        p.state().exit = Some(exit);
        let mut reg = registry();
        reg.running = reg.running.saturating_sub(1);
    }
    p.changed.send_replace(());
    // The process is gone: its stdin with it (a write would only fail). Not waited for: a
    // `process_input` stuck writing to a pipe that a leftover child holds but never reads
    // must not keep the process from finishing.
    if let Ok(mut input) = p.input.try_lock() {
        *input = Input::None;
    }
    let drain = Readers(readers);
    tokio::pin!(drain);
    if tokio::time::timeout(GRACE, &mut drain).await.is_err() {
        // Something it left behind still holds the output open: stop listening to it.
        drain.abort();
    }
    *lock(&p.master) = None;
    {
        let mut st = p.state();
        st.output_done = true;
        st.finished = Some((Instant::now(), now_ms()));
        st.ring.shrink();
    }
    p.changed.send_replace(());
    registry().prune();
}

/// The readers of one process, awaited together (and aborted together).
struct Readers(Vec<tokio::task::JoinHandle<()>>);

impl Readers {
    fn abort(&self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

impl std::future::Future for Readers {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        while let Some(h) = self.0.last_mut() {
            match std::pin::Pin::new(h).poll(cx) {
                Poll::Ready(_) => {
                    self.0.pop();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }
}

/// Signal the process group whose leader is `pgid` (every process here leads its own group).
fn signal_group(pgid: u32, sig: rustix::process::Signal) -> rustix::io::Result<()> {
    match rustix::process::Pid::from_raw(pgid as i32) {
        Some(pid) => rustix::process::kill_process_group(pid, sig),
        None => Err(rustix::io::Errno::SRCH),
    }
}

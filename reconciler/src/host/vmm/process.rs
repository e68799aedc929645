//! VMM processes: started detached in their own session (VMs outlive fort), identified by
//! PID and start time (so a reused PID is never mistaken for a VM), stopped with escalating
//! signals, and always reaped while fort is their parent.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::VmmError;

/// A process as fort knows it: PID plus its start time in clock ticks since boot.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Proc {
    pub pid: u32,
    pub start_time: u64,
}

/// Field 22 of /proc/PID/stat (after the parenthesised command name, which may hold spaces).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field 22 is index 19; a zombie counts as gone.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Proc {
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    fn signal(&self, sig: i32) {
        if self.alive() {
            // SAFETY: kill(2) on a PID whose start time we just checked is still ours.
            unsafe {
                libc::kill(self.pid as libc::pid_t, sig);
            }
        }
    }

    /// Wait until the process is gone, up to `wait`.
    pub fn wait_gone(&self, wait: Duration) -> bool {
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.alive()
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if !self.wait_gone(grace) {
            self.signal(libc::SIGKILL);
            self.wait_gone(Duration::from_secs(5));
        }
    }
}

/// Start `cmd` in a new session with stdin closed and stdout+stderr appended to `log`. A
/// thread reaps it when it exits (after fort exits, init does).
pub fn spawn_detached(mut cmd: Command, log: &Path, what: &str) -> Result<Proc, VmmError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| VmmError::io("cannot open", log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| VmmError::io("cannot open", log, e))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid(2) is async-signal-safe and only detaches the child from fort's session
    // and terminal, so Ctrl-C in fort's terminal does not reach the VM.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
        what: what.to_string(),
        source,
    })?;
    let pid = child.id();
    let start = start_time(pid).unwrap_or(0);
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(Proc {
        pid,
        start_time: start,
    })
}

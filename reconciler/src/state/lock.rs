//! The exclusive per-state-dir lock that keeps applies from overlapping.
//!
//! `flock(2)` on `state_dir/lock`: the kernel drops it when the holder dies, so a killed apply
//! never leaves a stale lock. The holder writes its PID and command into the file so that a
//! waiter can say who it is waiting for.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("state directory {} is locked by {}; gave up after {} (--lock-timeout)", dir.display(), holder_text(*pid, command), humantime::format_duration(*waited))]
    Held {
        dir: PathBuf,
        pid: Option<u32>,
        command: String,
        waited: Duration,
    },
    #[error("cannot open lock file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn holder_text(pid: Option<u32>, command: &str) -> String {
    match (pid, command.is_empty()) {
        (Some(p), false) => format!("pid {p} ({command})"),
        (Some(p), true) => format!("pid {p}"),
        (None, _) => "another process".to_string(),
    }
}

/// Held while it lives.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

impl StateLock {
    /// Take the lock, polling every 100 ms for up to `timeout`.
    pub fn acquire(
        state_dir: &Path,
        timeout: Duration,
        command: &str,
    ) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Root's only: the state dir is traversable by VMs' uids (0711).
            .mode(0o600)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        let start = Instant::now();
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                    if start.elapsed() >= timeout {
                        let (pid, command) = read_holder(&mut file);
                        return Err(LockError::Held {
                            dir: state_dir.to_path_buf(),
                            pid,
                            command,
                            waited: Duration::from_secs(timeout.as_secs()),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100).min(timeout));
                }
                Err(e) => {
                    return Err(LockError::Lock {
                        path,
                        source: e.into(),
                    })
                }
            }
        }
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{}\n{}", std::process::id(), command)?;
            f.sync_data()
        };
        write(&mut file).map_err(|source| LockError::Lock {
            path: path.clone(),
            source,
        })?;
        Ok(StateLock { file, path })
    }

    /// Who holds (or last held) the lock, as written in the file.
    pub fn holder(state_dir: &Path) -> Option<(u32, String)> {
        let mut f = File::open(state_dir.join("lock")).ok()?;
        match read_holder(&mut f) {
            (Some(pid), cmd) => Some((pid, cmd)),
            _ => None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_holder(f: &mut File) -> (Option<u32>, String) {
    let mut s = String::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    let mut lines = s.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    (pid, lines.next().unwrap_or("").trim().to_string())
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Best effort: an empty file tells a later reader nobody holds it. The flock itself is
        // released when the file is closed.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_fails_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), Duration::ZERO, "fort apply --yes").unwrap();
        let t = Instant::now();
        let err =
            StateLock::acquire(dir.path(), Duration::from_millis(300), "fort apply").unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} is locked by pid {} (fort apply --yes); gave up after 0s (--lock-timeout)",
                dir.path().display(),
                std::process::id()
            )
        );
        assert_eq!(
            StateLock::holder(dir.path()),
            Some((std::process::id(), "fort apply --yes".to_string()))
        );
        drop(first);
        assert_eq!(StateLock::holder(dir.path()), None);
        StateLock::acquire(dir.path(), Duration::ZERO, "fort apply").unwrap();
    }

    #[test]
    fn waiter_gets_the_lock_when_released_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), Duration::ZERO, "first").unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let second = StateLock::acquire(dir.path(), Duration::from_secs(5), "second").unwrap();
        releaser.join().unwrap();
        assert_eq!(
            StateLock::holder(dir.path()),
            Some((std::process::id(), "second".to_string()))
        );
        drop(second);
    }
}

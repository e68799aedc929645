//! A running `fort watch` for tests: its stderr in a log file, waits on log lines, signals,
//! and killed when dropped. Each test file adds its own `start` (how it spawns fort).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct WatchProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl WatchProcess {
    /// Spawn `cmd` with its stderr written to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> WatchProcess {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        WatchProcess { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `needle` appears `n` times in the log (a generous bound for a hang, not a
    /// speed check — speed is measured by tests/bench/watch.sh and gitwatch.sh).
    #[track_caller]
    pub fn wait_for(&self, needle: &str, n: usize) -> String {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            assert!(
                Instant::now() < end,
                "no {n}× `{needle}` in the watch log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

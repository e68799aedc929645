//! A pseudo-terminal for tests of interactive commands (`fort shell`, `fort exec -it`): the
//! test holds the master as a terminal emulator would, fort runs as the session leader of the
//! slave; and waiting for guest processes (an agent run as a test process starts them here).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::fort::FORT;

/// How long a test waits for output it expects before failing (a bound, not a measurement).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A pseudo-terminal: the test holds the master (the "terminal emulator") and a slave fd.
pub struct Pty {
    master: File,
    slave: File,
    /// Everything read from the master, and how much of it `expect` has consumed.
    out: Arc<(Mutex<Vec<u8>>, Condvar)>,
    seen: usize,
}

impl Pty {
    pub fn open(rows: u16, cols: u16) -> Pty {
        // SAFETY: posix_openpt returns a new fd or -1; the calls below take that fd.
        let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        // SAFETY: m is an fd we own from here on.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: m is a pty master; name is a writable buffer of the given length.
        unsafe {
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        }
        // SAFETY: ptsname_r wrote a NUL-terminated string into name.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_str()
            .unwrap()
            .to_string();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .unwrap();
        let master = File::from(master);
        let pty = Pty {
            master,
            slave,
            out: Arc::new((Mutex::new(Vec::new()), Condvar::new())),
            seen: 0,
        };
        pty.resize(rows, cols);
        let mut reader = pty.master.try_clone().unwrap();
        let out = pty.out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once no slave is open, or when the test process exits.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                out.0.lock().unwrap().extend_from_slice(&buf[..n]);
                out.1.notify_all();
            }
        });
        pty
    }

    /// Set the window size (the kernel sends SIGWINCH to the slave's foreground group).
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
        let r = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// `stty -g` of the terminal: its whole mode, to compare.
    pub fn mode(&self) -> String {
        let out = Command::new("stty")
            .arg("-g")
            .stdin(self.slave.try_clone().unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Start fort on the slave as a session leader with it as its controlling terminal (stdin
    /// and stdout; stderr is captured).
    pub fn spawn(&self, args: &[&str]) -> Child {
        let mut c = Command::new(FORT);
        c.args(args)
            .stdin(self.slave.try_clone().unwrap())
            .stdout(self.slave.try_clone().unwrap())
            .stderr(Stdio::piped())
            .env("TERM", "xterm-test");
        // SAFETY: only async-signal-safe calls between fork and exec (setsid, ioctl).
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c.spawn().unwrap()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Wait for `pat` in the output after what earlier calls consumed; returns the output up to
    /// and including it. `None` after `within`.
    pub fn wait_for(&mut self, pat: &str, within: Duration) -> Option<String> {
        let t = Instant::now();
        let (lock, cv) = &*self.out;
        let mut out = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&out[self.seen..]).into_owned();
            if let Some(i) = text.find(pat) {
                let upto = &text[..i + pat.len()];
                self.seen += upto.len();
                return Some(upto.to_string());
            }
            let left = within.checked_sub(t.elapsed())?;
            out = cv.wait_timeout(out, left).unwrap().0;
        }
    }

    #[track_caller]
    pub fn expect(&mut self, pat: &str) -> String {
        match self.wait_for(pat, PATIENCE) {
            Some(s) => s,
            None => panic!(
                "no {pat:?} in the terminal's output: {:?}",
                String::from_utf8_lossy(&self.out.0.lock().unwrap()[self.seen..])
            ),
        }
    }

    /// Run a shell command line and return its output: the marker is computed by the shell, so
    /// its echo of the typed line does not match.
    pub fn run(&mut self, line: &str, n: u32) -> String {
        self.send(format!("{line}; echo M-$(({n}+1))\r").as_bytes());
        self.expect(&format!("M-{}", n + 1))
    }

    /// Until the shell answers (what is typed before it reads its terminal may be dropped by
    /// its line editor's setup, so this retries).
    pub fn wait_ready(&mut self) {
        for _ in 0..20 {
            self.send(b"echo READY-$((40+2))\r");
            if self.wait_for("READY-42", Duration::from_secs(3)).is_some() {
                return;
            }
        }
        panic!("the shell never answered");
    }
}

/// The processes of this host whose command line is exactly `argv` (the agent runs here, so
/// the guest's processes are the host's).
pub fn pids_of(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

pub fn process_running(argv: &[&str]) -> bool {
    !pids_of(argv).is_empty()
}

#[track_caller]
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Reading `/proc`: the processes on the host (PID, start time, executable name, command line)
//! and which of them hold a file open — for finding leftovers of interrupted runs and for
//! never deleting a drive under a live process.

use std::path::{Path, PathBuf};

use crate::host::vmm::process::{start_time, Proc};

/// One process, as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub proc: Proc,
    /// The executable's file name (`qemu-system-x86_64`), from argv[0].
    pub name: String,
    /// The whole command line, arguments joined with spaces.
    pub cmdline: String,
}

/// Every live (non-zombie) process whose command line mentions `needle`, read in one pass.
pub fn mentioning(needle: &str) -> Vec<ProcInfo> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Kernel threads and processes that exited meanwhile have no command line.
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if raw.is_empty() || !contains(&raw, needle.as_bytes()) {
            continue;
        }
        let Some(start) = start_time(pid) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let name = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        out.push(ProcInfo {
            proc: Proc {
                pid,
                start_time: start,
            },
            name,
            cmdline: args.join(" "),
        });
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// A process holding a file open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub proc: Proc,
    pub name: String,
}

/// The processes that have `path` open (any of their file descriptors resolves to it).
/// Processes fort may not inspect (another user's, without root) are skipped.
pub fn holders(path: &Path) -> Vec<Holder> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        let open = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target));
        if !open {
            continue;
        }
        let Some(start) = start_time(pid) else {
            continue;
        };
        let name = std::fs::read_to_string(e.path().join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        out.push(Holder {
            proc: Proc {
                pid,
                start_time: start,
            },
            name,
        });
    }
    out
}

/// The resident memory of a process, in bytes (`VmRSS`).
pub fn rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `dir/name` as a string with a trailing slash, the form command lines mention it in.
pub fn dir_needle(dir: &Path) -> String {
    let mut s = PathBuf::from(dir)
        .into_os_string()
        .to_string_lossy()
        .into_owned();
    if !s.ends_with('/') {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_a_child_by_its_command_line_and_the_file_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("drive.ext4");
        std::fs::write(&file, b"x").unwrap();
        let mut child = std::process::Command::new("tail")
            .arg("-f")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut held = Vec::new();
        while held.is_empty() && std::time::Instant::now() < deadline {
            held = holders(&file);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            held.iter().map(|h| h.proc.pid).collect::<Vec<_>>(),
            vec![pid]
        );
        assert_eq!(held[0].name, "tail");
        let found = mentioning(&dir_needle(dir.path()));
        assert!(found.iter().any(|p| p.proc.pid == pid), "{found:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(holders(&file).is_empty());
    }
}

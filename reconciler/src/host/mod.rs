//! The only code that touches the host: downloads, files, and (later) images, netlink, VMMs.

pub mod agent;
pub mod agent_ready;
pub mod cgroup;
pub mod checkpoint;
pub mod confine;
pub mod fetch;
pub mod forward;
pub mod git;
pub mod image;
pub mod mcp_http;
pub mod net;
pub mod oci;
pub mod procs;
pub mod snapshot;
pub mod vmm;
pub mod warm;

/// A command for a helper tool fort waits for (mke2fs, e2fsck, resize2fs): the kernel kills
/// it when the thread that started it dies, so a killed fort never leaves one writing into
/// the state dir.
pub fn tool(program: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(program);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only sets a flag on the child.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// `MemTotal` and `MemAvailable` from /proc/meminfo, in bytes.
pub fn meminfo() -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Bytes an unprivileged user may still write on the filesystem holding `path` (or its
/// nearest existing ancestor), and that ancestor.
pub fn disk_free(path: &std::path::Path) -> Option<(std::path::PathBuf, u64)> {
    let mut p = Some(path);
    while let Some(dir) = p {
        if let Ok(st) = rustix::fs::statvfs(dir) {
            return Some((dir.to_path_buf(), st.f_bavail.saturating_mul(st.f_frsize)));
        }
        p = dir.parent();
    }
    None
}

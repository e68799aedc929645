//! VMM processes: started detached in their own session (VMs outlive fort), identified by
//! PID and start time (so a reused PID is never mistaken for a VM), stopped with escalating
//! signals, and always reaped while fort is their parent.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Confine, VmmError};

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

/// What a confined child does before it execs, prepared in the parent (opening files and
/// compiling the filter allocate, which the forked child of a threaded program must not).
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    /// `cgroup.procs` of the VM's cgroup in each hierarchy, open for writing.
    pub cgroup_procs: Vec<std::fs::File>,
    pub seccomp: Option<seccompiler::BpfProgram>,
    /// Descriptors the child inherits under their own numbers (QEMU's TAP, `fd=N`).
    pub pass_fds: Vec<std::os::fd::OwnedFd>,
}

impl Jail {
    /// The jail for `c`: its cgroup files opened, the seccomp deny-list compiled.
    pub fn prepare(c: &Confine) -> Result<Jail, VmmError> {
        let mut cgroup_procs = Vec::new();
        for d in &c.cgroup_dirs {
            let p = d.join("cgroup.procs");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|e| VmmError::io("cannot open", &p, e))?;
            cgroup_procs.push(f);
        }
        let seccomp = crate::host::confine::seccomp::deny_list()
            .map_err(|e| VmmError::Unusable(e.to_string()))?;
        Ok(Jail {
            uid: c.uid,
            gid: c.gid,
            groups: c.groups.clone(),
            cgroup_procs,
            seccomp: Some(seccomp),
            pass_fds: Vec::new(),
        })
    }
}

/// The jail of a VM's processes, `None` when it runs unconfined.
pub fn jail(cfg: &super::VmConfig) -> Result<Option<Jail>, VmmError> {
    cfg.confine.as_ref().map(Jail::prepare).transpose()
}

/// Start `cmd` in a new session with stdin closed and stdout+stderr appended to `log`, and,
/// with a `jail`, confined. A thread reaps it when it exits (after fort exits, init does).
///
/// The confined child, between fork and exec, in this order (each step needs the one
/// before, and all are async-signal-safe syscalls on memory prepared in the parent):
/// 1. `setsid`: out of fort's session and terminal, so Ctrl-C never reaches a VM;
/// 2. join the VM's cgroups (write `0`, "this process", to the pre-opened `cgroup.procs`):
///    while still root, since the files are root's; everything it starts inherits them;
/// 3. clear close-on-exec on the descriptors it inherits (the TAP);
/// 4. `setgroups`, `setgid`, then `setuid` (the first two need the privileges the last one
///    drops). std's `Command::uid()`/`gid()` are not used: they run before `pre_exec`
///    closures, and joining the cgroup would then be refused;
/// 5. `PR_SET_NO_NEW_PRIVS`: no setuid binary gives privileges back, and it lets an
///    unprivileged process install a filter;
/// 6. the seccomp deny-list, last, so the steps above are not filtered; it allows `execve`.
///
/// No `PR_SET_PDEATHSIG`: VMs outlive fort on purpose (and a credential change clears it, so
/// it would have to be set after step 4).
pub fn spawn_detached(
    mut cmd: Command,
    log: &Path,
    what: &str,
    jail: Option<&Jail>,
) -> Result<Proc, VmmError> {
    use std::os::fd::AsRawFd;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| VmmError::io("cannot open", log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| VmmError::io("cannot open", log, e))?;
    // A program the VM's uid cannot reach (`cargo install` puts vhost-device-vsock under
    // /root, which is 0700) is opened here and run as /proc/self/fd/N. argv[0] stays the
    // program's name, which the leftover scan goes by (its `comm` becomes N, so programs the
    // uid can reach, QEMU in /usr/bin, are run by their path).
    let exe = match jail {
        Some(_) => open_program(cmd.get_program())?,
        None => None,
    };
    if let Some(exe) = &exe {
        cmd = via_fd(&cmd, exe);
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let jailed = jail.map(|j| {
        (
            j.uid,
            j.gid,
            j.groups.clone(),
            j.cgroup_procs
                .iter()
                .map(|f| f.as_raw_fd())
                .collect::<Vec<_>>(),
            j.pass_fds.iter().map(|f| f.as_raw_fd()).collect::<Vec<_>>(),
            j.seccomp.clone(),
        )
    });
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe syscalls (setsid, write, fcntl, setgroups, setgid, setuid, prctl,
    // seccomp) on descriptors and memory the parent prepared and keeps alive (`jail` is
    // borrowed across `spawn`); it allocates nothing.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let check = |r: libc::c_long| {
                if r < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setsid().into())?;
            let Some((uid, gid, groups, procs, pass, seccomp)) = &jailed else {
                return Ok(());
            };
            for fd in procs {
                check(libc::write(*fd, b"0".as_ptr().cast(), 1) as libc::c_long)?;
            }
            for fd in pass {
                check(libc::fcntl(*fd, libc::F_SETFD, 0).into())?;
            }
            check(libc::setgroups(groups.len(), groups.as_ptr()).into())?;
            check(libc::setgid(*gid).into())?;
            check(libc::setuid(*uid).into())?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
            if let Some(prog) = seccomp {
                seccompiler::apply_filter(prog).map_err(|_| std::io::Error::last_os_error())?;
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

/// Open `program` (a path, or a name looked up in PATH) for running it through its
/// descriptor, when others (a VM's uid) cannot run it by its path.
fn open_program(program: &std::ffi::OsStr) -> Result<Option<std::fs::File>, VmmError> {
    let path = if program.as_encoded_bytes().contains(&b'/') {
        std::path::PathBuf::from(program)
    } else {
        super::which(&program.to_string_lossy()).ok_or_else(|| {
            VmmError::Unusable(format!(
                "{} is not installed (PATH)",
                program.to_string_lossy()
            ))
        })?
    };
    if others_can_run(&path) {
        return Ok(None);
    }
    std::fs::File::open(&path)
        .map(Some)
        .map_err(|e| VmmError::io("cannot open", &path, e))
}

/// Can a user who is neither owner nor group reach and execute `path`?
fn others_can_run(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ok = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.mode() & 0o001 != 0);
    ok(path) && path.ancestors().skip(1).all(ok)
}

/// `cmd` with `/proc/self/fd/N` of `exe` as its program and the same argv, environment and
/// directory. The descriptor is close-on-exec, which is fine for an ELF binary: the kernel
/// has opened it by the time descriptors are closed.
fn via_fd(cmd: &Command, exe: &std::fs::File) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
    c.arg0(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

//! Starting a `process_start` child: the program (or the user's login shell), its
//! environment and identity, pipes or a terminal, its own process group or session, and its
//! registration with PID 1's reaper.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::Stdio;

use fort_agent_protocol::process::PtySize;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use super::pty::Master;
use crate::tools::ToolError;

/// What to run, with its arguments checked.
pub struct Plan {
    /// Program and arguments; `None`: the login shell of the user it runs as.
    pub program: Option<(String, Vec<String>)>,
    pub cwd: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub user: Option<String>,
    pub pty: Option<PtySize>,
    pub stdin: bool,
}

pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    /// What ran, for `process_list`.
    pub argv: Vec<String>,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pub master: Option<Master>,
}

/// The shell of the passwd entry with this uid (`name:x:uid:gid:gecos:home:shell`).
pub fn shell_of(passwd: &str, uid: u32) -> Option<String> {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[2].parse() == Ok(uid))
        .map(|f| f[6].trim().to_string())
        .filter(|s| !s.is_empty())
}

/// argv[0] of a login shell: its name with a leading dash (`/bin/bash` → `-bash`).
fn login_name(shell: &str) -> String {
    format!("-{}", shell.rsplit('/').next().unwrap_or(shell))
}

pub fn spawn(plan: Plan) -> Result<Spawned, ToolError> {
    let image = crate::image::get();
    let cwd = plan
        .cwd
        .or_else(|| image.and_then(|i| i.working_dir.clone()));
    let user = plan.user.or_else(|| image.and_then(|i| i.user.clone()));
    let identity = match &user {
        Some(u) => Some(
            crate::image::identity(u)
                .map_err(|e| ToolError::Failed(format!("cannot run as `{u}`: {e}")))?,
        ),
        None => None,
    };
    let (program, args, argv0) = match plan.program {
        Some((p, a)) => (p, a, None),
        None => {
            let uid = identity
                .as_ref()
                .map_or_else(|| rustix::process::getuid().as_raw(), |i| i.uid);
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let shell = shell_of(&passwd, uid).unwrap_or_else(|| "/bin/sh".into());
            let name = login_name(&shell);
            (shell, Vec::new(), Some(name))
        }
    };
    let mut argv = vec![program.clone()];
    argv.extend(args.iter().cloned());

    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args);
    if let Some(a0) = &argv0 {
        cmd.arg0(a0);
    }
    if let Some(i) = image {
        cmd.envs(i.env_pairs());
    }
    let env = plan.env.unwrap_or_default();
    if let Some(id) = &identity {
        cmd.uid(id.uid).gid(id.gid);
        let home_set = env.contains_key("HOME")
            || image.is_some_and(|i| i.env_pairs().any(|(k, _)| k == "HOME"));
        if !home_set {
            cmd.env("HOME", &id.home);
        }
    }
    if plan.pty.is_some() && !env.contains_key("TERM") {
        cmd.env("TERM", "xterm-256color");
    }
    cmd.envs(&env)
        .current_dir(cwd.as_deref().unwrap_or("/"))
        // The agent owns these processes: they outlive the call and the connection.
        .kill_on_drop(false);

    if let Some(limit) = super::child_nofile() {
        // SAFETY: runs in the forked child before exec; setrlimit is one async-signal-safe
        // system call on a value computed before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
                Ok(())
            });
        }
    }
    let fail = |e: std::io::Error| ToolError::Failed(format!("cannot run `{program}`: {e}"));
    let mut master = None;
    match plan.pty {
        Some(size) => {
            let (m, slave) = super::pty::open(size)
                .map_err(|e| ToolError::Failed(format!("cannot open a terminal: {e}")))?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(fail);
            if plan.stdin {
                cmd.stdin(Stdio::from(dup(&slave)?));
            } else {
                cmd.stdin(Stdio::null());
            }
            cmd.stdout(Stdio::from(dup(&slave)?));
            cmd.stderr(Stdio::from(slave));
            // SAFETY: the closure runs in the forked child before exec and only makes two
            // async-signal-safe system calls (setsid, ioctl) on fd 1, which std has already
            // made the terminal's slave; it allocates nothing and touches no locks.
            unsafe {
                cmd.pre_exec(|| {
                    // A new session whose controlling terminal is the slave: job control,
                    // ^C and SIGWINCH reach the program like in a real terminal.
                    rustix::process::setsid()?;
                    let stdout = BorrowedFd::borrow_raw(1);
                    rustix::process::ioctl_tiocsctty(stdout)?;
                    Ok(())
                });
            }
            master = Some(m);
        }
        None => {
            cmd.stdin(if plan.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so process_signal and the timeout reach what it starts.
            .process_group(0);
        }
    }
    // As PID 1 the agent also reaps orphans; it must leave this child to tokio. Holding the
    // registry lock across spawn closes the window where the child could die unregistered.
    let mut child = {
        let mut own = crate::init::OWN_CHILDREN.lock().ok();
        let child = cmd.spawn().map_err(fail)?;
        if let (Some(Some(set)), Some(pid)) = (own.as_mut().map(|g| g.as_mut()), child.id()) {
            set.insert(pid);
        }
        child
    };
    // `cmd` holds our copies of the slave until dropped: the reader sees EIO only once the
    // child's are the last ones.
    drop(cmd);
    let pid = child.id().unwrap_or(0);
    Ok(Spawned {
        pid,
        argv,
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        master,
    })
}

/// Forget a child in PID 1's registry once it has been waited for.
pub fn forget(pid: u32) {
    if let Ok(mut own) = crate::init::OWN_CHILDREN.lock() {
        if let Some(set) = own.as_mut() {
            set.remove(&pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_shells() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000::/home/app:\nx:x:7:7::/:/bin/zsh\n";
        assert_eq!(shell_of(passwd, 0).as_deref(), Some("/bin/bash"));
        assert_eq!(shell_of(passwd, 1000), None);
        assert_eq!(shell_of(passwd, 7).as_deref(), Some("/bin/zsh"));
        assert_eq!(shell_of(passwd, 5), None);
        assert_eq!(login_name("/bin/bash"), "-bash");
        assert_eq!(login_name("sh"), "-sh");
    }
}

//! `run_command`: run a program with bounded output and a timeout that kills its whole
//! process group.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fort_agent_protocol::tools::RunCommand;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{Notifier, Output, ToolError};

const DEFAULT_TIMEOUT: f64 = 60.0;
const DEFAULT_CAP: usize = 1 << 20;
/// After the program exits, how long stragglers it left behind (holding its stdout) may keep
/// the call open before the group is killed.
const GRACE: Duration = Duration::from_secs(2);

/// Read everything, keeping the first `cap` bytes; with a notifier, also send every chunk as
/// it comes.
async fn capped<R: AsyncRead + Unpin>(
    mut r: R,
    cap: usize,
    live: Option<(Notifier, &'static str)>,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, truncated),
            Ok(n) => {
                if let Some((notify, stream)) = &live {
                    let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                    notify
                        .send(
                            "notifications/fort/output",
                            json!({"stream": stream, "data": data}),
                        )
                        .await;
                }
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
}

fn kill_group(pgid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::Kill);
    }
}

/// A `run_command` with its arguments checked: what to run and for how long.
pub struct Command {
    program: String,
    rest: Vec<String>,
    cwd: Option<String>,
    env: Option<BTreeMap<String, String>>,
    /// Who to run as (resolved in the guest's /etc/passwd when the command runs).
    user: Option<String>,
    stdin: Option<String>,
    /// As given, for the "timed out after" message.
    timeout: f64,
    deadline: Duration,
    cap: usize,
    stream: bool,
}

pub fn prepare(a: RunCommand) -> Result<Command, ToolError> {
    let (program, rest): (String, Vec<String>) = match (a.argv, a.command) {
        (Some(v), None) if !v.is_empty() => (v[0].clone(), v[1..].to_vec()),
        (None, Some(c)) => ("/bin/sh".into(), vec!["-c".into(), c]),
        _ => {
            return Err(ToolError::Params(
                "give exactly one of `argv` (non-empty) or `command`".into(),
            ))
        }
    };
    let timeout = a.timeout_secs.unwrap_or(DEFAULT_TIMEOUT);
    if !(timeout.is_finite() && timeout >= 0.0) {
        return Err(ToolError::Params(
            "`timeout_secs` must be a non-negative number".into(),
        ));
    }
    // Finite and non-negative, so only too large for a Duration (about 584 billion years),
    // which the schema allows: that is no deadline at all, not a panic.
    let deadline = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::MAX);
    Ok(Command {
        program,
        rest,
        cwd: a.cwd,
        env: a.env,
        user: a.user,
        stdin: a.stdin,
        timeout,
        deadline,
        cap: a.max_output_bytes.unwrap_or(DEFAULT_CAP),
        stream: a.stream,
    })
}

pub async fn run(a: Command, notify: Option<Notifier>) -> Result<Output, ToolError> {
    let Command {
        program,
        rest,
        cwd,
        env,
        user,
        stdin,
        timeout,
        deadline,
        cap,
        stream: streaming,
    } = a;
    // An image's config (Env, WorkingDir, User) gives the defaults; explicit arguments win.
    let image = crate::image::get();
    let cwd = cwd.or_else(|| image.and_then(|i| i.working_dir.clone()));
    let user = user.or_else(|| image.and_then(|i| i.user.clone()));
    let mut cmd = tokio::process::Command::new(&program);
    if let Some(i) = image {
        cmd.envs(i.env_pairs());
    }
    if let Some(u) = &user {
        let id = crate::image::identity(u)
            .map_err(|e| ToolError::Failed(format!("cannot run as `{u}`: {e}")))?;
        cmd.uid(id.uid).gid(id.gid);
        let home_set = env.as_ref().is_some_and(|e| e.contains_key("HOME"))
            || image.is_some_and(|i| i.env_pairs().any(|(k, _)| k == "HOME"));
        if !home_set {
            cmd.env("HOME", id.home);
        }
    }
    cmd.args(&rest)
        .current_dir(cwd.as_deref().unwrap_or("/"))
        .envs(env.unwrap_or_default())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let start = Instant::now();
    // As PID 1 the agent also reaps orphans; it must leave this child to tokio. Holding the
    // registry lock across spawn closes the window where the child could die unregistered.
    let mut child = {
        let mut own = crate::init::OWN_CHILDREN.lock().ok();
        let child = cmd
            .spawn()
            .map_err(|e| ToolError::Failed(format!("cannot run `{program}`: {e}")))?;
        if let (Some(Some(set)), Some(pid)) = (own.as_mut().map(|g| g.as_mut()), child.id()) {
            set.insert(pid);
        }
        child
    };
    let pgid = child.id().unwrap_or(0);
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
        });
    }
    let live = |stream| notify.clone().filter(|_| streaming).map(|n| (n, stream));
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(capped(s, cap, live("stdout"))));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(capped(s, cap, live("stderr"))));
    let (status, timed_out) = match tokio::time::timeout(deadline, child.wait()).await {
        Ok(s) => (s.ok(), false),
        Err(_) => {
            kill_group(pgid);
            (child.wait().await.ok(), true)
        }
    };
    // Readers end when every holder of the pipes is gone; don't wait forever for leftovers.
    let left = deadline.saturating_sub(start.elapsed()).min(GRACE);
    let collect = async {
        let o = match out {
            Some(h) => h.await.unwrap_or_default(),
            None => Default::default(),
        };
        let e = match err {
            Some(h) => h.await.unwrap_or_default(),
            None => Default::default(),
        };
        (o, e)
    };
    tokio::pin!(collect);
    let ((stdout, out_trunc), (stderr, err_trunc)) =
        match tokio::time::timeout(left, &mut collect).await {
            Ok(v) => v,
            Err(_) => {
                kill_group(pgid);
                collect.await
            }
        };
    if let Ok(mut own) = crate::init::OWN_CHILDREN.lock() {
        if let Some(set) = own.as_mut() {
            set.remove(&pgid);
        }
    }
    let exit_code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let mut text = match (timed_out, exit_code, signal) {
        (true, _, _) => format!("timed out after {timeout}s; the process group was killed\n"),
        (_, Some(c), _) => format!("exit code {c}\n"),
        (_, None, Some(s)) => format!("killed by signal {s}\n"),
        _ => "finished\n".to_string(),
    };
    if !stdout.is_empty() {
        text.push_str(&format!(
            "--- stdout{} ---\n{stdout}\n",
            if out_trunc { " (truncated)" } else { "" }
        ));
    }
    if !stderr.is_empty() {
        text.push_str(&format!(
            "--- stderr{} ---\n{stderr}\n",
            if err_trunc { " (truncated)" } else { "" }
        ));
    }
    Ok(Output {
        text,
        structured: json!({
            "exit_code": exit_code,
            "signal": signal,
            "timed_out": timed_out,
            "stdout": stdout,
            "stderr": stderr,
            "stdout_truncated": out_trunc,
            "stderr_truncated": err_trunc,
            "duration_ms": start.elapsed().as_millis() as u64,
        }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Found while writing the agent_rpc fuzz target (and reproduced with it, not found by
    /// its 10-minute run): a `timeout_secs` too large for a Duration panicked after the
    /// program was spawned, so the call never got an answer.
    #[tokio::test]
    async fn fuzz_huge_timeout_means_no_deadline() {
        let args = serde_json::json!({"argv": ["true"], "timeout_secs": 1e20});
        let Ok(c) = prepare(serde_json::from_value(args.clone()).unwrap()) else {
            panic!("1e20 refused");
        };
        assert_eq!(c.deadline, Duration::MAX);
        let Ok(out) = super::super::call("run_command", args, None).await else {
            panic!("run_command [\"true\"] failed");
        };
        assert_eq!(out.structured["exit_code"], 0);
        assert_eq!(out.structured["timed_out"], false);
    }
}

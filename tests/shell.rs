//! `fort shell` on a real pseudo-terminal the test opens (fort is the session leader of its
//! slave, as under a terminal emulator), and `fort exec` through the `process_*` tools:
//! streaming, `-t`, `-i`, `-d`, `--attach` after fort was killed, a lost agent.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

use common::fort::{AgentProcess, Run, FORT};
use common::pty::{pids_of, process_running, wait_until, Pty};

fn fort(args: &[&str]) -> Run {
    Run::from(
        Command::new(FORT)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn shell_on_a_terminal_size_resize_ctrl_c_and_exit_status() {
    let agent = AgentProcess::start();
    let mut pty = Pty::open(33, 101);
    let before = pty.mode();
    let mut child = pty.spawn(&["shell", "--connect", &agent.endpoint()]);
    pty.wait_ready();
    // The local terminal is raw while the shell runs.
    assert_ne!(pty.mode(), before);

    let out = pty.run("tty", 1);
    assert!(
        out.lines().any(|l| l.starts_with("/dev/pts/")),
        "no /dev/pts path in {out:?}"
    );
    let out = pty.run("stty size", 2);
    assert!(out.contains("\r\n33 101\r\n"), "{out:?}");
    // The host's TERM reaches the guest.
    let out = pty.run("echo term=$TERM", 3);
    assert!(out.contains("\r\nterm=xterm-test\r\n"), "{out:?}");

    // The kernel sends fort SIGWINCH; fort sends process_resize. Input and the resize travel
    // separately, so ask until the new size shows.
    pty.resize(40, 120);
    let mut n = 10;
    loop {
        let out = pty.run("stty size", n);
        if out.contains("\r\n40 120\r\n") {
            break;
        }
        assert!(out.contains("\r\n33 101\r\n"), "{out:?}");
        assert!(n < 60, "the new size never reached the guest");
        n += 2;
    }

    // Ctrl-C interrupts the foreground program, not the shell.
    pty.send(b"sleep 4242\r");
    wait_until("sleep 4242 to run", || process_running(&["sleep", "4242"]));
    pty.send(b"\x03");
    wait_until("sleep 4242 to end", || !process_running(&["sleep", "4242"]));
    let out = pty.run("echo still here", 100);
    assert!(out.contains("\r\nstill here\r\n"), "{out:?}");

    pty.send(b"exit 3\r");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "stderr: {}", stderr_of(&mut child));
    assert_eq!(stderr_of(&mut child), "");
    assert_eq!(pty.mode(), before, "the terminal's mode was not restored");
}

#[test]
fn shell_runs_the_given_command_and_returns_its_status() {
    let agent = AgentProcess::start();
    let mut pty = Pty::open(24, 80);
    let before = pty.mode();
    let mut child = pty.spawn(&[
        "shell",
        "--connect",
        &agent.endpoint(),
        "--env",
        "WHO=fort",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo \"$WHO in $(pwd)\"; read line; echo \"got $line\"; kill -TERM $$",
    ]);
    pty.expect("fort in /tmp\r\n");
    pty.send(b"typed\r");
    pty.expect("got typed\r\n");
    // Killed by SIGTERM: 128 + 15, like a shell.
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert_eq!(pty.mode(), before);
}

#[test]
fn shell_whose_agent_dies_restores_the_terminal_and_exits_255() {
    let mut agent = AgentProcess::start();
    let ep = agent.endpoint();
    let mut pty = Pty::open(24, 80);
    let before = pty.mode();
    let mut child = pty.spawn(&["shell", "--connect", &ep, "--", "/bin/sh"]);
    pty.wait_ready();
    assert_ne!(pty.mode(), before);
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(255));
    assert_eq!(
        stderr_of(&mut child),
        format!("\nfort: the connection to the agent at {ep} was lost (the VM stopped?)\n")
    );
    assert_eq!(pty.mode(), before, "the terminal's mode was not restored");
}

#[test]
fn shell_without_a_terminal_says_to_use_exec() {
    let r = fort(&["shell", "--connect", "unix:/nonexistent.sock"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            2,
            "",
            "error: fort shell needs a terminal: stdin is not a TTY; run a command with fort exec --connect unix:/nonexistent.sock -- CMD instead\n"
        )
    );
    let r = fort(&["shell", "vm.a"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            2,
            "error: fort shell needs a terminal: stdin is not a TTY; run a command with fort exec vm.a -- CMD instead\n"
        )
    );
}

#[test]
fn exec_t_runs_the_command_on_a_terminal() {
    let agent = AgentProcess::start();
    let ep = agent.endpoint();
    let r = fort(&["exec", "--connect", &ep, "-t", "--", "tty"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with("/dev/pts/") && r.stdout.ends_with("\r\n"),
        "{r:?}"
    );
    // No terminal on fort's side: the default size; stderr goes to the same terminal.
    let r = fort(&[
        "exec",
        "--connect",
        &ep,
        "-t",
        "--",
        "sh",
        "-c",
        "stty size; echo oops >&2; exit 4",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (4, "24 80\r\noops\r\n", "")
    );
}

#[test]
fn exec_streams_output_in_order_with_the_exit_code() {
    let agent = AgentProcess::start();
    let r = fort(&[
        "exec",
        "--connect",
        &agent.endpoint(),
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 20000 ]; do echo line $i; echo err $i >&2; i=$((i+1)); done; exit 9",
    ]);
    let want = |s: &str| (0..20000).map(|i| format!("{s} {i}\n")).collect::<String>();
    assert_eq!(r.code, 9);
    assert!(r.stdout == want("line"), "stdout differs");
    assert!(r.stderr == want("err"), "stderr differs");
}

#[test]
fn exec_i_forwards_stdin_byte_for_byte() {
    let agent = AgentProcess::start();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut child = Command::new(FORT)
        .args(["exec", "--connect", &agent.endpoint(), "-i", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == data, "cat's output differs from its input");
}

/// `process_list` from the agent, over a plain MCP session.
fn process_list(socket: &std::path::Path) -> serde_json::Value {
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#, "\n",
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, "\n",
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"process_list","arguments":{}}}"#, "\n",
    ).as_bytes()).unwrap();
    for line in std::io::BufRead::lines(std::io::BufReader::new(s)) {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["id"] == 2 {
            return v["result"]["structuredContent"]["processes"].clone();
        }
    }
    panic!("no process_list answer");
}

#[test]
fn exec_killed_mid_run_is_reattached_with_all_its_output() {
    let agent = AgentProcess::start();
    let ep = agent.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "echo one; while [ ! -e {} ]; do sleep 0.05; done; echo two; exit 5",
        go.display()
    );
    let mut child = Command::new(FORT)
        .args(["exec", "--connect", &ep, "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "one\n");
    child.kill().unwrap();
    child.wait().unwrap();

    // The command goes on in the guest; the agent lists it.
    let list = process_list(&agent.socket);
    let p = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["argv"][2] == script.as_str())
        .unwrap_or_else(|| panic!("not listed: {list}"));
    assert_eq!(p["running"], true);
    let id = p["id"].to_string();

    std::fs::write(&go, "").unwrap();
    let r = fort(&["exec", "--connect", &ep, "--attach", &id]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (5, "one\ntwo\n", "")
    );
    // From a cursor: what follows the first 4 bytes.
    let r = fort(&["exec", "--connect", &ep, "--attach", &id, "--cursor", "4"]);
    assert_eq!((r.code, r.stdout.as_str()), (5, "two\n"));
}

#[test]
fn exec_detach_then_attach() {
    let agent = AgentProcess::start();
    let ep = agent.endpoint();
    let r = fort(&[
        "exec",
        "--connect",
        &ep,
        "-d",
        "--",
        "sh",
        "-c",
        "echo detached; echo e >&2; exit 6",
    ]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    let id = r.stdout.trim_end().to_string();
    assert!(id.parse::<u64>().is_ok(), "{r:?}");
    let r = fort(&["exec", "--connect", &ep, "--attach", &id]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (6, "detached\n", "e\n")
    );
    // Attaching again replays it: finished processes are kept.
    let r = fort(&["exec", "--connect", &ep, "--attach", &id]);
    assert_eq!((r.code, r.stdout.as_str()), (6, "detached\n"));

    let r = fort(&["exec", "--connect", &ep, "--attach", "987654"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            1,
            "",
            "error: no process 987654 (process_list shows the ids; finished processes are kept for 10 minutes)\n"
        )
    );
    let r = fort(&["exec", "--connect", &ep, "--cursor", "3", "--", "true"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "error: --cursor N needs --attach ID\n")
    );
    let r = fort(&["exec", "--connect", &ep, "--attach", "1", "--", "true"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .starts_with("error: the argument '--attach <ID>' cannot be used with '[CMD]...'"),
        "{}",
        r.stderr
    );
}

#[test]
fn exec_whose_agent_dies_says_how_to_reattach() {
    let mut agent = AgentProcess::start();
    let ep = agent.endpoint();
    let mut child = Command::new(FORT)
        .args([
            "exec",
            "--connect",
            &ep,
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 4343",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "started\n");
    let id = process_list(&agent.socket)[0]["id"].to_string();
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(255));
    assert_eq!(
        stderr_of(&mut child),
        format!("fort: lost the connection to the guest agent; the command goes on in the VM: reattach with fort exec --connect {ep} --attach {id} --cursor 8\n")
    );
    // The agent's children may outlive it here (a VM would have stopped): clean up.
    for pid in pids_of(&["sleep", "4343"]) {
        // SAFETY: kill(2) with a pid this test's agent started; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[test]
fn shell_sigterm_to_fort_restores_the_terminal_and_hangs_up_the_guest_shell() {
    let agent = AgentProcess::start();
    let mut pty = Pty::open(24, 80);
    let before = pty.mode();
    // Its own sleep: one another run left behind must not count.
    let before_pids = pids_of(&["sleep", "4444"]);
    let mut child = pty.spawn(&[
        "shell",
        "--connect",
        &agent.endpoint(),
        "--",
        "sh",
        "-c",
        "echo waiting; exec sleep 4444",
    ]);
    pty.expect("waiting\r\n");
    wait_until("sleep 4444 to run", || {
        pids_of(&["sleep", "4444"]).len() > before_pids.len()
    });
    let ours: Vec<i32> = pids_of(&["sleep", "4444"])
        .into_iter()
        .filter(|p| !before_pids.contains(p))
        .collect();
    // SAFETY: kill(2) of the fort this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(child.wait().unwrap().code(), Some(128 + 15));
    assert_eq!(pty.mode(), before, "the terminal's mode was not restored");
    // The guest's program got SIGHUP, as from a terminal that went away.
    let status = |p: i32| std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
    let t = std::time::Instant::now();
    while ours
        .iter()
        .any(|p| !status(*p).is_empty() && !status(*p).contains("State:\tZ"))
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "sleep 4444 {ours:?} did not end after fort's SIGTERM; its status:\n{}",
            ours.iter().map(|p| status(*p)).collect::<String>()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for p in ours {
        // SAFETY: kill(2) of the sleep this test started (a no-op when it ended).
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

#[test]
fn exec_passes_ctrl_c_on_to_the_command() {
    let agent = AgentProcess::start();
    let mut child = Command::new(FORT)
        .args([
            "exec",
            "--connect",
            &agent.endpoint(),
            "--",
            "sh",
            "-c",
            "trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.05; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: kill(2) of the fort this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got INT\n");
    assert_eq!(child.wait().unwrap().code(), Some(7));
}

#[test]
fn exec_whose_reader_goes_away_ends_the_command_like_sigpipe() {
    let agent = AgentProcess::start();
    let mut child = Command::new(FORT)
        .args([
            "exec",
            "--connect",
            &agent.endpoint(),
            "--",
            "yes",
            "fort-epipe",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "fort-epipe\n");
    drop(out);
    assert_eq!(child.wait().unwrap().code(), Some(128 + 13));
    // Nothing on stderr but, when fort fell behind `yes` before its reader went away (a
    // loaded machine), the notice that the agent dropped old output: that is true, not an
    // error of the SIGPIPE path (seen in CI: "fort: 1366720 bytes of output were lost …").
    let err = stderr_of(&mut child);
    let lost = err.starts_with("fort: ")
        && err.ends_with(" bytes of output were lost (the agent keeps only the newest output)\n")
        && err.lines().count() == 1;
    assert!(err.is_empty() || lost, "{err:?}");
    wait_until("yes to end", || !process_running(&["yes", "fort-epipe"]));
}

#[test]
fn exec_it_on_a_terminal_is_raw_and_ctrl_d_ends_input() {
    let agent = AgentProcess::start();
    let mut pty = Pty::open(24, 80);
    let before = pty.mode();
    let mut child = pty.spawn(&["exec", "--connect", &agent.endpoint(), "-it", "--", "cat"]);
    // cat echoes what the guest's terminal passed on; the local one is raw meanwhile.
    pty.send(b"abc\r");
    pty.expect("abc\r\nabc\r\n");
    assert_ne!(pty.mode(), before);
    pty.send(b"\x04");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(stderr_of(&mut child), "");
    assert_eq!(pty.mode(), before, "the terminal's mode was not restored");
}

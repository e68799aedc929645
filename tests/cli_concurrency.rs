//! The `fort` binary under concurrency and interruption: the state-dir lock, SIGKILL in the
//! middle of a download, Ctrl-C, the parallelism limit, and the confirmation prompt on a
//! terminal.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::assets::publish_assets;
use common::fort::{sha256_hex, Workspace};
use common::server::{Reply, Server};

#[test]
fn a_second_apply_waits_for_the_lock_then_names_the_holder() {
    let srv = Server::start();
    let ws = Workspace::new();
    let data = vec![7u8; 4 * 1024 * 1024];
    srv.route(
        "/slow",
        Reply::ok(data.clone()).slow(Duration::from_millis(50)),
    );
    ws.write_manifest(&format!(
        "[kernel.k]\nurl = \"{}\"\nsha256 = \"{}\"\n",
        srv.url("/slow"),
        sha256_hex(&data)
    ));
    let mut first = ws.command(&["apply", "--yes"]).spawn().unwrap();
    let t = Instant::now();
    while srv.hits("/slow") == 0 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = ws.run(&["apply", "--yes", "--lock-timeout", "1s"]);
    second.code(1);
    let want = format!(
        "error: state directory {} is locked by pid {} (fort -f {} --state-dir {} apply --yes); gave up after 1s (--lock-timeout)",
        ws.state_dir().display(),
        first.id(),
        ws.manifest().display(),
        ws.state_dir().display()
    );
    assert!(
        second.stderr.contains(&want),
        "{}\nwant: {want}",
        second.stderr
    );
    assert!(first.wait().unwrap().success());
    ws.run(&["plan", "--detailed-exitcode"]).ok();
}

#[test]
fn sigkill_during_download_then_reapply_converges() {
    let srv = Server::start();
    let ws = Workspace::new();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    srv.route(
        "/big",
        Reply::ok(data.clone()).slow(Duration::from_millis(20)),
    );
    ws.write_manifest(&format!(
        "[kernel.k]\nurl = \"{}\"\nsha256 = \"{}\"\n",
        srv.url("/big"),
        sha256_hex(&data)
    ));
    let mut child = ws.command(&["apply", "--yes"]).spawn().unwrap();
    let t = Instant::now();
    while srv.hits("/big") == 0 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Nothing looks finished: no cache entry outside tmp/, nothing recorded.
    assert!(
        ws.cache_files().iter().all(|f| f.starts_with("tmp/")),
        "{:?}",
        ws.cache_files()
    );
    // What is recorded is the intent: an unfinished create, redone by the next apply.
    let list = ws.run(&["state", "list"]).ok().stdout.clone();
    assert!(list.contains("\nkernel.k  pending  "), "{list}");
    let plan = ws.run(&["plan"]);
    plan.ok();
    assert!(
        plan.stdout.contains(
            "  + kernel.k\n      reason: not yet created\n      reason: an interrupted apply left it unfinished (before its first step)\n"
        ),
        "{}",
        plan.stdout
    );

    srv.route("/big", Reply::ok(data));
    ws.run(&["apply", "--yes"]).ok();
    ws.run(&["plan", "--detailed-exitcode"]).ok();
    assert!(
        ws.cache_files().iter().all(|f| !f.starts_with("tmp/.")),
        "{:?}",
        ws.cache_files()
    );
}

#[test]
fn interrupt_finishes_running_actions_and_records_them() {
    let srv = Server::start();
    let ws = Workspace::new();
    let data = vec![3u8; 2 * 1024 * 1024];
    srv.route(
        "/a",
        Reply::ok(data.clone()).slow(Duration::from_millis(30)),
    );
    srv.route("/b", Reply::ok(b"b".to_vec()));
    ws.write_manifest(&format!(
        "[kernel.a]\nurl = \"{}\"\nsha256 = \"{}\"\n\n[kernel.b]\nurl = \"{}\"\nsha256 = \"{}\"\n",
        srv.url("/a"),
        sha256_hex(&data),
        srv.url("/b"),
        sha256_hex(b"b")
    ));
    let child = ws
        .command(&["apply", "--yes", "--parallelism", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while srv.hits("/a") == 0 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::Int,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("kernel.a: created in"), "{stdout}");
    assert!(
        stdout.contains("kernel.b: not started (interrupted)"),
        "{stdout}"
    );
    assert_eq!(srv.hits("/b"), 0);
    let list = ws.run(&["state", "list"]).ok().stdout.clone();
    assert!(
        list.contains("kernel.a") && !list.contains("kernel.b"),
        "{list}"
    );
    ws.run(&["apply", "--yes"]).ok();
    ws.run(&["plan", "--detailed-exitcode"]).ok();
}

#[test]
fn independent_actions_run_in_parallel_up_to_the_limit() {
    let srv = Server::start();
    // Different bytes: the cache is content-addressed, equal assets would be fetched once.
    let (da, db) = (vec![5u8; 1 << 20], vec![6u8; 1 << 20]);
    srv.route("/a", Reply::ok(da.clone()).slow(Duration::from_millis(60)));
    srv.route("/b", Reply::ok(db.clone()).slow(Duration::from_millis(60)));
    let manifest = format!(
        "[kernel.a]\nurl = \"{}\"\nsha256 = \"{}\"\n\n[kernel.b]\nurl = \"{}\"\nsha256 = \"{}\"\n",
        srv.url("/a"),
        sha256_hex(&da),
        srv.url("/b"),
        sha256_hex(&db)
    );
    // --parallelism 2: both downloads are in flight at once.
    let ws = Workspace::new();
    ws.write_manifest(&manifest);
    let mut child = ws
        .command(&["apply", "--yes", "--parallelism", "2"])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while srv.hits("/a") + srv.hits("/b") < 2 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!((srv.hits("/a"), srv.hits("/b")), (1, 1));
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "both started while the first was still running"
    );
    assert!(child.wait().unwrap().success());

    // --parallelism 1: the second starts only after the first finished.
    let ws = Workspace::new();
    ws.write_manifest(&manifest);
    let mut child = ws
        .command(&["apply", "--yes", "--parallelism", "1"])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while srv.hits("/a") + srv.hits("/b") < 3 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        srv.hits("/a") + srv.hits("/b"),
        3,
        "only one download at a time"
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(srv.hits("/a") + srv.hits("/b"), 4);
}

/// Run fort under a pseudo-terminal (python's pty module) and answer the prompt.
fn apply_on_a_terminal(ws: &Workspace, answer: &str) -> (i32, String) {
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:-1])
out = b""
answered = False
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    if not answered and b"Enter a value:" in out:
        os.write(fd, sys.argv[-1].encode() + b"\n")
        answered = True
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(common::fort::FORT)
        .arg("-f")
        .arg(ws.manifest())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .arg("apply")
        .arg(answer)
        .env("NO_COLOR", "1")
        .output()
        .expect("python3 is needed for the terminal test (.ci/run installs it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"),
    )
}

#[test]
fn on_a_terminal_apply_asks_and_only_yes_proceeds() {
    let srv = Server::start();
    let ws = Workspace::new();
    ws.write_manifest(&publish_assets(&srv));
    let (code, out) = apply_on_a_terminal(&ws, "no");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Do you want to perform these actions?\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: "), "{out}");
    assert!(out.contains("Cancelled: nothing was changed."), "{out}");
    assert_eq!(srv.total_hits(), 0);
    let (code, out) = apply_on_a_terminal(&ws, "yes");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Apply complete: 3 created"), "{out}");
    ws.run(&["plan", "--detailed-exitcode"]).ok();
}

#[test]
fn a_download_killed_before_it_was_recorded_leaves_no_cache_entry_once_the_asset_is_gone() {
    let ws = Workspace::new();
    let dir = tempfile::tempdir().unwrap();
    let (k, j) = (dir.path().join("k"), dir.path().join("j"));
    std::fs::write(&k, b"kernel k").unwrap();
    std::fs::write(&j, b"kernel j").unwrap();
    ws.write_manifest(&format!("[kernel.k]\nurl = \"file://{}\"\n", k.display()));
    // Fetched and installed in the cache, then killed before the result is recorded.
    let out = ws
        .command(&["apply", "--yes"])
        .env("FORT_CRASH_AT", "action.done")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    let entries = |ws: &Workspace| -> Vec<String> {
        ws.cache_files()
            .into_iter()
            .filter(|f| !f.starts_with("tmp/"))
            .collect()
    };
    assert!(!entries(&ws).is_empty(), "the entry was installed");
    // kernel.k leaves the manifest before it was ever recorded as applied.
    ws.write_manifest(&format!("[kernel.j]\nurl = \"file://{}\"\n", j.display()));
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains("  - kernel.k\n      reason: no longer in the manifest\n      reason: an interrupted apply left it unfinished (before its first step)\n"),
        "{}",
        plan.stdout
    );
    ws.run(&["apply", "--yes"]).ok();
    ws.run(&["plan", "--detailed-exitcode"]).ok();
    let j_entry = ws
        .run(&["state", "show", "kernel.j", "--json"])
        .ok()
        .stdout
        .clone();
    let left = entries(&ws);
    assert!(
        left.iter()
            .all(|f| j_entry.contains(f.trim_end_matches(".sha256").trim_end_matches(".verified"))),
        "an entry of kernel.k is left: {left:?}"
    );
}

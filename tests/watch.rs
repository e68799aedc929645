//! `fort watch` as a real child process on a temp state dir: edits applied, broken saves
//! ignored, destroys above --max-destroy refused, protected drives never destroyed, drift
//! healed on the interval, bursts coalesced, the lock free between passes, SIGTERM → exit 0.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::fort::Workspace;
use common::watch_proc::WatchProcess;

impl WatchProcess {
    fn start(ws: &Workspace, extra: &[&str]) -> WatchProcess {
        let log = ws.path().join("watch.log");
        let mut args = vec!["watch"];
        args.extend_from_slice(extra);
        let w = WatchProcess::spawn(ws.command(&args), log);
        w.wait_for("start: ", 1);
        w
    }
}

fn recorded(ws: &Workspace) -> String {
    ws.run(&["state", "list"]).stdout
}

const KERNEL: &str = "[kernel.k]\nurl = \"vmlinux\"\n";
const ROOTFS: &str = "[rootfs.r]\nurl = \"rootfs.tar\"\n";

fn workspace() -> Workspace {
    let ws = Workspace::new();
    std::fs::write(ws.path().join("vmlinux"), b"kernel bytes").unwrap();
    std::fs::write(ws.path().join("rootfs.tar"), vec![0u8; 10240]).unwrap();
    ws.write_manifest(KERNEL);
    ws
}

#[test]
fn edits_are_applied_broken_saves_ignored_and_destroys_refused() {
    let ws = workspace();
    let w = WatchProcess::start(&ws, &["--interval", "60s"]);
    w.wait_for("start: applied 1 change(s): 1 done", 1);
    assert!(recorded(&ws).contains("kernel.k "));

    // An edit: applied by the next pass.
    ws.write_manifest(&format!("{KERNEL}{ROOTFS}"));
    let log = w.wait_for("change of fort.toml: applied 1 change(s): 1 done", 1);
    assert!(
        log.contains("change of fort.toml: + rootfs.r (not yet created)"),
        "{log}"
    );
    assert!(recorded(&ws).contains("rootfs.r "));

    // A broken save: reported with its location, nothing destroyed.
    ws.write_manifest(&format!("{KERNEL}{ROOTFS}[vm.x\n"));
    let log = w.wait_for(
        "the manifest is invalid; nothing was changed (the host keeps its last good state)",
        1,
    );
    assert!(
        log.contains("fort.toml:8:6: unclosed table, expected `]`"),
        "{log}"
    );
    let listed = recorded(&ws);
    assert!(
        listed.contains("kernel.k ") && listed.contains("rootfs.r "),
        "{listed}"
    );

    // Dropping a resource with --max-destroy 0: refused and logged, nothing destroyed.
    ws.write_manifest(KERNEL);
    let log = w.wait_for("refused: the plan would destroy 1 resource(s) (rootfs.r), more than --max-destroy 0; nothing was applied", 1);
    assert!(!log.contains("- rootfs.r"), "{log}");
    assert!(recorded(&ws).contains("rootfs.r "));

    // The lock is only held during a pass: a plain apply beside the idle watch goes through.
    ws.write_manifest(&format!("{KERNEL}{ROOTFS}"));
    w.wait_for("change of fort.toml: no changes", 1);
    ws.run(&["apply", "--yes", "--lock-timeout", "2s"]).ok();

    // SIGHUP: a pass now.
    w.signal(libc::SIGHUP);
    w.wait_for("SIGHUP: no changes", 1);

    // SIGTERM: exit 0, and the host is left converged.
    w.signal(libc::SIGTERM);
    let mut w = w;
    let status = w.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", w.log());
    assert!(w.log().contains("fort watch stopped"));
    ws.run(&["plan", "--detailed-exitcode"]).ok();
}

#[test]
fn a_protected_drive_is_never_destroyed_whatever_max_destroy_allows() {
    let ws = workspace();
    let drive = "[drive.data]\nsize = \"16MiB\"\nprotect = true\n";
    ws.write_manifest(&format!("{KERNEL}{drive}"));
    let w = WatchProcess::start(&ws, &["--interval", "60s", "--max-destroy", "5"]);
    w.wait_for("start: applied 2 change(s): 2 done", 1);

    ws.write_manifest(KERNEL);
    // The watch subscribes to the manifest's directory only after its first pass has logged,
    // so this write may come too early to be seen: SIGHUP makes sure a pass runs.
    w.signal(libc::SIGHUP);
    let log = w.wait_for(": refused: the plan would destroy drive.data, which is protected (protect = true), losing its data; fort watch never does that: run `fort apply --allow-data-loss` to do it; nothing was applied", 1);
    assert!(!log.contains("- drive.data"), "{log}");
    assert!(recorded(&ws).contains("drive.data "));

    // A deliberate apply does it.
    ws.run(&[
        "apply",
        "--yes",
        "--allow-data-loss",
        "--lock-timeout",
        "5s",
    ])
    .ok();
    assert!(!recorded(&ws).contains("drive.data "));
}

#[test]
fn drift_is_healed_on_the_interval_and_a_burst_of_writes_is_one_pass() {
    let ws = workspace();
    let w = WatchProcess::start(&ws, &["--interval", "1s"]);
    w.wait_for("start: applied 1 change(s): 1 done", 1);
    let s: serde_json::Value =
        serde_json::from_str(&ws.run(&["state", "show", "kernel.k", "--json"]).stdout).unwrap();
    let entry = PathBuf::from(s["outputs"]["path"].as_str().unwrap());
    std::fs::remove_file(&entry).unwrap();
    let log = w.wait_for("interval: applied 1 change(s): 1 done", 1);
    assert!(
        log.contains(&format!(
            "interval: + kernel.k (drift: cache entry {} is missing)",
            entry.display()
        )),
        "{log}"
    );
    assert!(entry.exists());

    // 50 writes within ~100 ms: one pass.
    let body = format!("{KERNEL}{ROOTFS}");
    for i in 0..50 {
        ws.write_manifest(&format!("{body}# save {i}\n"));
        std::thread::sleep(Duration::from_millis(2));
    }
    w.wait_for("change of fort.toml: applied", 1);
    std::thread::sleep(Duration::from_millis(1500));
    let log = w.log();
    let passes = log.matches("change of fort.toml: applied").count()
        + log.matches("change of fort.toml: no changes").count();
    assert_eq!(passes, 1, "{log}");
}

fn vm_pid(ws: &Workspace) -> u64 {
    let s: serde_json::Value =
        serde_json::from_str(&ws.run(&["state", "show", "vm.a", "--json"]).stdout).unwrap();
    s["outputs"]["started"]["vmm"]["pid"].as_u64().unwrap()
}

fn kill9(pid: u64) {
    // SAFETY: kill(2) on the VMM this test's watch started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

#[test]
fn a_crashed_vm_is_restarted_with_backoff_and_sigterm_leaves_it_running() {
    let _one = common::vms::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let agent = common::rootfs::static_agent();
    let dir = common::vms::assets();
    common::netns::in_netns(move || {
        let ws = Workspace::new();
        let _console = common::vms::ConsoleOnFailure(ws.state_dir().join("run"));
        ws.write_manifest(&format!(
            "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n\
             [rootfs.bb]\nurl = \"file://{r}\"\n\n[template.t]\nrootfs = \"bb\"\nsize = \"128MiB\"\n\n\
             [vm.a]\nvmm = \"qemu\"\nkernel = \"deb\"\nroot = {{ template = \"t\", size = \"256MiB\" }}\nmemory = \"192MiB\"\n",
            k = dir.join("vmlinuz").display(),
            i = dir.join("initrd.cpio.gz").display(),
            r = dir.join("rootfs.tar.gz").display(),
        ));
        let log = ws.path().join("watch.log");
        let child = ws
            .command(&["watch", "--interval", "1s"])
            .env("FORT_GUEST_AGENT", &agent)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut w = WatchProcess { child, log };
        w.wait_for("start: applied", 1);

        // First crash: restarted at the next interval, recorded in the history.
        let pid = vm_pid(&ws);
        kill9(pid);
        w.wait_for(&format!("vm.a: its VMM process {pid} died (crash 1 seen by this watch); restart = \"on-failure\": restarting now"), 1);
        w.wait_for("interval: applied 1 change(s): 1 done", 1);
        let h = ws.run(&["history", "vm.a"]).stdout.clone();
        assert!(
            h.contains("crash") && h.contains("restarted by fort watch after a crash"),
            "{h}"
        );
        let status = ws.run(&["status"]).stdout.clone();
        assert!(
            status.contains("vm.a")
                && status.contains("running (up ")
                && status.contains("restarts 1"),
            "{status}"
        );

        // It keeps dying: the second restart waits 2 s, the third 4 s.
        let pid = vm_pid(&ws);
        kill9(pid);
        w.wait_for(&format!("its VMM process {pid} died (crash 2 seen by this watch); restart = \"on-failure\": restarting in 2s (backoff)"), 1);
        w.wait_for("interval: applied 1 change(s): 1 done", 2);
        let pid = vm_pid(&ws);
        kill9(pid);
        w.wait_for(&format!("its VMM process {pid} died (crash 3 seen by this watch); restart = \"on-failure\": restarting in 4s (backoff)"), 1);
        // (Crash 2 also said "stays down for": wait for the third crash's own line.)
        let log = w.wait_for("(backoff after 3 crashes)", 1);
        let line = log
            .lines()
            .find(|l| l.contains("(backoff after 3 crashes)"))
            .unwrap();
        assert!(line.contains("stays down for"), "{log}");
        w.wait_for("interval: applied 1 change(s): 1 done", 3);

        // Changing the VM in the manifest: the watch restarts it with the new memory.
        let m = std::fs::read_to_string(ws.manifest()).unwrap();
        std::fs::write(
            ws.manifest(),
            m.replace("memory = \"192MiB\"", "memory = \"224MiB\""),
        )
        .unwrap();
        let log = w.wait_for("change of fort.toml: applied 1 change(s): 1 done", 1);
        assert!(
            log.contains("change of fort.toml: ~restart vm.a (memory changed)"),
            "{log}"
        );

        // SIGTERM: exit 0, the VM keeps running and nothing is left to do.
        w.signal(libc::SIGTERM);
        let status = w.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{}", w.log());
        let pid = vm_pid(&ws);
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the VM outlived fort watch"
        );
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        ws.run(&["destroy", "--yes"]).ok();
    });
}

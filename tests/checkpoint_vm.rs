//! Issue 16, item 4, in a real VM (QEMU under TCG): `fort snapshot vm.a --name before` takes a
//! checkpoint of the running VM (memory + root drive) and it runs on in the same QEMU;
//! `fort restore vm.a before` brings back a deleted file on the root drive, one in tmpfs and a
//! killed process (same PID); labels, missing and corrupt checkpoints fail with exact errors
//! before anything is touched; `--prune --keep 0` removes them. Then a full disk (a 16 MiB
//! tmpfs on `state_dir/snapshots`) under both a checkpoint and `state = "suspended"`: the
//! exact error, the VM running on in the same QEMU, and no partial file left. One VM boot.
//!
//! QEMU only, whatever `FORT_TEST_VMM` says: checkpoints need vmm = "qemu" (docs/snapshots.md).

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};

use common::fort::{sha256_hex, Workspace};
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::server::{Reply, Server};
use common::vms::{assets, ConsoleOnFailure, ONE_AT_A_TIME, QEMU_KERNEL};

fn manifest(ws: &Workspace, srv: &Server, state: &str) {
    let dir = assets();
    let rootfs = std::fs::read(dir.join("rootfs.tar.gz")).unwrap();
    let sha = sha256_hex(&rootfs);
    srv.route("/rootfs.tar.gz", Reply::ok(rootfs));
    ws.write_manifest(&format!(
        r#"[kernel.deb]
url = "file://{k}"
initrd = {{ url = "file://{i}" }}

[rootfs.bb]
url = "{url}/rootfs.tar.gz"
sha256 = "{sha}"

[template.base]
rootfs = "bb"
size = "128MiB"

[network.lan]
cidr = "10.79.1.0/24"
isolated = true

[drive.data]
size = "64MiB"
protect = true

[vm.a]
vmm = "qemu"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "192MiB"
network = "lan"
state = "{state}"
keep = 5
drives = [{{ drive = "data", mount = "/data" }}]
"#,
        k = dir.join(QEMU_KERNEL).display(),
        i = dir.join("initrd.cpio.gz").display(),
        url = srv.url("").trim_end_matches('/'),
    ));
}

fn exec(ws: &Workspace, cmd: &str) -> String {
    ws.run(&["exec", "vm.a", "--", "sh", "-c", cmd])
        .ok()
        .stdout
        .trim()
        .to_string()
}

fn qemu_pid(ws: &Workspace) -> Option<u32> {
    std::fs::read_to_string(ws.state_dir().join("run/a/pid"))
        .ok()
        .map(|s| s.trim().parse().unwrap())
}

/// Running (a zombie waiting for its reaper is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

fn plan_is_empty(ws: &Workspace) {
    let p = ws.run(&["plan"]).ok().stdout.clone();
    assert!(p.contains("No changes."), "plan:\n{p}");
}

/// fort's stderr for a command that must fail (exit 1).
fn fails(ws: &Workspace, args: &[&str]) -> String {
    let r = ws.run(args);
    assert_eq!(
        r.code, 1,
        "{args:?} should fail:\n{}\n{}",
        r.stdout, r.stderr
    );
    r.stderr.trim().to_string()
}

/// Run fort and SIGKILL it as soon as `when` holds (polled every 5 ms, at most 120 s).
fn killed_when(ws: &Workspace, args: &[&str], when: impl Fn() -> bool) {
    let mut child = ws.command(args).spawn().unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !when() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "fort {args:?} ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < end,
            "fort {args:?} never reached the point to kill it at"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The regular files below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let target = CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
        let opts = CString::new(format!("size={size},mode=0755")).unwrap();
        // SAFETY: mount(2) with valid NUL-terminated strings; the test runs as root.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "mounting a tmpfs on {} (the test needs root): {}",
            at.display(),
            std::io::Error::last_os_error()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: umount2(2) of the tmpfs this guard mounted.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}

#[test]
fn checkpoint_restore_and_full_disks_in_a_real_vm() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let srv = Server::start();
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        let state = ws.state_dir();
        manifest(&ws, &srv, "running");
        ws.run(&["apply", "--yes"]).ok();
        exec(&ws, "busybox --install -s /bin");
        ws.run(&["exec", "-d", "vm.a", "--", "sleep", "1000"]).ok();
        exec(
            &ws,
            "echo on-disk > /root/persist; echo in-ram > /tmp/t; echo data > /data/d; sync",
        );
        let sleep_pid = exec(&ws, "for p in $(pidof sleep); do [ \"$(tr '\\0' ' ' < /proc/$p/cmdline)\" = 'sleep 1000 ' ] && echo $p; done");
        assert!(sleep_pid.parse::<u32>().is_ok(), "{sleep_pid:?}");
        let pid = qemu_pid(&ws).unwrap();

        // The checkpoint: the VM runs on in the same QEMU, its agent answers.
        let took = ws
            .run(&["snapshot", "vm.a", "--name", "before"])
            .ok()
            .stdout
            .clone();
        eprintln!("{took}");
        assert!(
            took.starts_with("vm.a: checkpoint \"before\" taken in "),
            "{took}"
        );
        assert!(took.contains(" memory + drives a-root (256MiB, "), "{took}");
        assert_eq!(qemu_pid(&ws), Some(pid));
        assert!(alive(pid));
        assert_eq!(exec(&ws, "cat /tmp/t"), "in-ram");
        let cp = state.join("snapshots/a/checkpoints/before");
        let mut names: Vec<_> = files_below(&cp)
            .iter()
            .map(|p| p.strip_prefix(&cp).unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "drives.json",
                "drives/a-root",
                "drives/data",
                "memory",
                "snapshot.json",
                "vmstate"
            ]
        );
        plan_is_empty(&ws);
        let shown = ws.run(&["state", "show", "vm.a"]).ok().stdout.clone();
        assert!(shown.contains("checkpoints:\n  before  "), "{shown}");
        let listed = ws.run(&["snapshot", "vm.a", "--list"]).ok().stdout.clone();
        assert!(listed.starts_with("before  "), "{listed}");

        // The same label again: refused, nothing changes.
        assert_eq!(
            fails(&ws, &["snapshot", "vm.a", "--name", "before"]),
            format!("error: vm.a already has a checkpoint \"before\" ({}): choose another --name, or remove the old ones with --prune", cp.display())
        );
        assert_eq!(
            fails(&ws, &["snapshot", "vm.a", "--name", "../x"]),
            "error: vm.a: checkpoint label \"../x\" is invalid: use letters, digits, '.', '_' and '-', starting with a letter or a digit"
        );

        // Break things, then restore: files and process are back.
        exec(
            &ws,
            &format!("rm /root/persist /tmp/t /data/d; kill {sleep_pid}; sync"),
        );
        assert_eq!(
            exec(&ws, "cat /root/persist 2>/dev/null || echo gone"),
            "gone"
        );
        // drive.data is protected: its newer data would be lost.
        let err = fails(&ws, &["restore", "vm.a", "before"]);
        assert!(
            err.starts_with("error: refused: drive.data is protected (protect = true) and restoring vm.a to checkpoint \"before\" would put back its contents of "),
            "{err}"
        );
        assert!(
            err.ends_with(" ago, losing its newer data; re-run with --allow-data-loss if that is what you want"),
            "{err}"
        );
        assert_eq!(qemu_pid(&ws), Some(pid));
        // A checkpoint of another spec: refused, nothing touched.
        let text = std::fs::read_to_string(ws.manifest()).unwrap();
        std::fs::write(
            ws.manifest(),
            text.replace("memory = \"192MiB\"", "memory = \"256MiB\""),
        )
        .unwrap();
        assert_eq!(
            fails(&ws, &["restore", "vm.a", "before", "--allow-data-loss"]),
            "error: vm.a: checkpoint \"before\" cannot be restored: the VM's memory changed since it was made"
        );
        std::fs::write(ws.manifest(), text).unwrap();
        assert_eq!(qemu_pid(&ws), Some(pid));
        let restored = ws
            .run(&["restore", "vm.a", "before", "--allow-data-loss"])
            .ok()
            .stdout
            .clone();
        eprintln!("{restored}");
        assert!(
            restored.starts_with("vm.a: restored to checkpoint \"before\" in "),
            "{restored}"
        );
        assert!(!alive(pid), "the old QEMU {pid} still runs");
        let pid = qemu_pid(&ws).unwrap();
        assert_eq!(exec(&ws, "cat /root/persist"), "on-disk");
        assert_eq!(exec(&ws, "cat /tmp/t"), "in-ram");
        assert_eq!(
            exec(&ws, &format!("tr '\\0' ' ' < /proc/{sleep_pid}/cmdline")),
            "sleep 1000"
        );
        assert_eq!(exec(&ws, "cat /data/d"), "data");
        plan_is_empty(&ws);

        // fort killed mid-checkpoint (the stream being written, the vCPUs stopped, no vsock
        // device): the next apply removes the temporary directory and the VM runs on.
        let tmp = state.join("snapshots/a/checkpoints/.crash.tmp");
        killed_when(&ws, &["snapshot", "vm.a", "--name", "crash"], || {
            tmp.join("vmstate").exists()
        });
        let plan = ws.run(&["plan"]).ok().stdout.clone();
        assert!(
            plan.contains(
                "a suspend or checkpoint was interrupted: its unfinished snapshot is removed"
            ),
            "{plan}"
        );
        ws.run(&["apply", "--yes"]).ok();
        assert!(!tmp.exists());
        assert!(!state.join("snapshots/a/checkpoints/crash").exists());
        assert_eq!(qemu_pid(&ws), Some(pid));
        assert_eq!(exec(&ws, "cat /tmp/t"), "in-ram");
        plan_is_empty(&ws);

        // fort killed mid-restore (the old QEMU gone): the next apply does it again.
        exec(&ws, "rm /tmp/t; sync");
        killed_when(
            &ws,
            &["restore", "vm.a", "before", "--allow-data-loss"],
            || !alive(pid),
        );
        let plan = ws.run(&["plan"]).ok().stdout.clone();
        assert!(
            plan.contains("a restore of checkpoint \"before\" was interrupted: it is done again"),
            "{plan}"
        );
        ws.run(&["apply", "--yes"]).ok();
        let pid = qemu_pid(&ws).unwrap();
        assert!(alive(pid));
        assert_eq!(exec(&ws, "cat /tmp/t"), "in-ram");
        assert_eq!(exec(&ws, "cat /root/persist"), "on-disk");
        plan_is_empty(&ws);
        // The checkpoint stays reusable.
        assert!(cp.join("drives/a-root").exists());

        // A missing label, and a corrupt checkpoint: refused before the VM is touched.
        assert_eq!(
            fails(&ws, &["restore", "vm.a", "nope"]),
            "error: vm.a has no checkpoint \"nope\" (it has: before)"
        );
        ws.run(&["snapshot", "vm.a", "--name", "second"]).ok();
        let vmstate = state.join("snapshots/a/checkpoints/second/vmstate");
        let mut bytes = std::fs::read(&vmstate).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&vmstate, &bytes).unwrap();
        let err = fails(&ws, &["restore", "vm.a", "second", "--allow-data-loss"]);
        let prefix = format!(
            "error: cannot restore vm.a to checkpoint \"second\": {} is corrupt: its sha256 is {}, the snapshot recorded ",
            vmstate.display(),
            sha256_hex(&bytes)
        );
        assert!(err.starts_with(&prefix), "{err}\nwanted: {prefix}");
        assert!(err.ends_with("; the VM was not touched"), "{err}");
        assert_eq!(qemu_pid(&ws), Some(pid));
        assert!(alive(pid));
        assert_eq!(exec(&ws, "cat /tmp/t"), "in-ram");
        plan_is_empty(&ws);

        // Pruning.
        let pruned = ws
            .run(&["snapshot", "vm.a", "--prune", "--keep", "0"])
            .ok()
            .stdout
            .clone();
        assert_eq!(
            pruned,
            "vm.a: removed checkpoint \"before\"\nvm.a: removed checkpoint \"second\"\n"
        );
        let listed = ws.run(&["snapshot", "vm.a", "--list"]).ok().stdout.clone();
        assert_eq!(listed, "vm.a has no checkpoints.\n");

        // `keep`: lowering it is an in-place update whose apply removes the oldest beyond it,
        // and a new checkpoint past it removes the oldest one.
        ws.run(&["snapshot", "vm.a", "--name", "k1"]).ok();
        ws.run(&["snapshot", "vm.a", "--name", "k2"]).ok();
        ws.run(&["snapshot", "vm.a", "--name", "k3"]).ok();
        let text = std::fs::read_to_string(ws.manifest()).unwrap();
        std::fs::write(ws.manifest(), text.replace("keep = 5", "keep = 2")).unwrap();
        let plan = ws.run(&["plan"]).ok().stdout.clone();
        assert!(plan.contains("~ vm.a"), "{plan}");
        assert!(plan.contains("~ keep: 5 → 2"), "{plan}");
        assert!(
            plan.contains(
                "Plan: 0 to create, 1 to update, 0 to restart, 0 to replace, 0 to destroy."
            ),
            "{plan}"
        );
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(qemu_pid(&ws), Some(pid));
        let labels = || {
            let mut v: Vec<String> = std::fs::read_dir(state.join("snapshots/a/checkpoints"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(labels(), ["k2", "k3"]);
        plan_is_empty(&ws);
        let out = ws
            .run(&["snapshot", "vm.a", "--name", "k4"])
            .ok()
            .stdout
            .clone();
        assert!(
            out.ends_with("vm.a: removed checkpoint \"k2\" (keep)\n"),
            "{out}"
        );
        assert_eq!(labels(), ["k3", "k4"]);
        // `--prune` without `--keep` uses the VM's.
        let out = ws.run(&["snapshot", "vm.a", "--prune"]).ok().stdout.clone();
        assert_eq!(out, "vm.a: no checkpoint removed (keep = 2)\n");
        ws.run(&["snapshot", "vm.a", "--prune", "--keep", "0"]).ok();
        assert_eq!(labels(), Vec::<String>::new());

        // A full disk: the checkpoint and the suspend fail with the space needed, the VM runs
        // on in the same QEMU, nothing partial is left.
        let snaps = state.join("snapshots");
        let _tmpfs = Tmpfs::mount(&snaps, "16m");
        let err = fails(&ws, &["snapshot", "vm.a", "--name", "full"]);
        let want = "error: the disk is full: writing the snapshot needs up to 192MiB (the guest's memory), ";
        assert!(err.starts_with(want), "{err}");
        assert!(
            err.ends_with(&format!(
                " more were free on {}",
                snaps.join("a/checkpoints/.full.tmp/memory").display()
            )),
            "{err}"
        );
        assert_eq!(files_below(&snaps), Vec::<PathBuf>::new());
        assert_eq!(qemu_pid(&ws), Some(pid));
        assert_eq!(
            fort::host::vmm::qmp::status(&state.join("run/a")).as_deref(),
            Some("running")
        );
        assert_eq!(exec(&ws, "cat /tmp/t"), "in-ram");
        plan_is_empty(&ws);

        manifest(&ws, &srv, "suspended");
        let r = ws.run(&["apply", "--yes"]);
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains(want.trim_start_matches("error: ")),
            "{}\n{}",
            r.stdout,
            r.stderr
        );
        assert!(
            r.stdout.contains(&format!(
                " more were free on {}",
                snaps.join("a/.suspend.tmp/memory").display()
            )),
            "{}",
            r.stdout
        );
        assert_eq!(files_below(&snaps), Vec::<PathBuf>::new());
        assert_eq!(qemu_pid(&ws), Some(pid));
        assert!(alive(pid));
        assert_eq!(
            fort::host::vmm::qmp::status(&state.join("run/a")).as_deref(),
            Some("running")
        );
        assert_eq!(exec(&ws, "cat /tmp/t"), "in-ram");
        let plan = ws.run(&["plan"]).ok().stdout.clone();
        assert!(plan.contains("~ vm.a"), "{plan}");
        assert!(
            plan.contains("suspends: writes up to 192MiB (its memory) to snapshots/a/suspend/"),
            "{plan}"
        );
        assert!(!plan.contains("- vm.a"), "{plan}");
        drop(_tmpfs);

        manifest(&ws, &srv, "running");
        ws.run(&["destroy", "--yes", "--allow-data-loss"]).ok();
        assert!(!state.join("snapshots/a").exists());
    });
}

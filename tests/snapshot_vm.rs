//! Issue 16 in a real VM, under the VMM `FORT_TEST_VMM` names (tests/common/vms.rs: QEMU
//! under TCG by default; `firecracker` needs KVM): `state = "paused"` stops the guest's vCPUs
//! in the same VMM process; `state = "suspended"` writes a snapshot and ends it, and `running`
//! resumes it with the guest's processes, its tmpfs and a stepped clock; a corrupt snapshot
//! is never loaded (the VM boots from its drives, which keep their data). Nothing here talks
//! to the VMM directly: only the snapshot's files differ (QEMU's `vmstate` stream,
//! Firecracker's `snapshot.bin` and `mem.bin`).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fort::{sha256_hex, Workspace};
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::server::{Reply, Server};
use common::vms::{assets, kernel_file, vmm, ConsoleOnFailure, ONE_AT_A_TIME};

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
cidr = "10.79.0.0/24"
isolated = true

[vm.s]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "192MiB"
network = "lan"
state = "{state}"
"#,
        k = dir.join(kernel_file()).display(),
        i = dir.join("initrd.cpio.gz").display(),
        url = srv.url("").trim_end_matches('/'),
        vmm = vmm(),
    ));
}

/// The file of the snapshot whose bytes are the guest's memory, which the corruption test
/// flips a byte of.
fn memory_file() -> &'static str {
    if vmm() == "firecracker" {
        "mem.bin"
    } else {
        "memory"
    }
}

fn exec(ws: &Workspace, cmd: &str) -> String {
    ws.run(&["exec", "vm.s", "--", "sh", "-c", cmd])
        .ok()
        .stdout
        .trim()
        .to_string()
}

fn counter(ws: &Workspace) -> (u64, Instant) {
    let v = exec(ws, "cat /tmp/c");
    (
        v.parse().unwrap_or_else(|_| panic!("counter: {v:?}")),
        Instant::now(),
    )
}

fn vmm_pid(ws: &Workspace) -> Option<u32> {
    std::fs::read_to_string(ws.state_dir().join("run/s/pid"))
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
    assert!(p.contains("No changes."), "plan after apply:\n{p}");
}

fn host_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn pause_suspend_resume_and_a_corrupt_snapshot_in_a_real_vm() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let srv = Server::start();
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        manifest(&ws, &srv, "running");
        ws.run(&["apply", "--yes"]).ok();
        exec(&ws, "busybox --install -s /bin");
        // A counter every 100 ms, a file in tmpfs, a long sleep, and data on the root drive.
        ws.run(&[
            "exec",
            "-d",
            "vm.s",
            "--",
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.1; done",
        ])
        .ok();
        ws.run(&["exec", "-d", "vm.s", "--", "sleep", "1000"]).ok();
        exec(
            &ws,
            "echo kept > /tmp/f; echo on-disk > /root/persist; sync",
        );
        // The counter's `sleep 0.1`s come and go while this looks: one may be gone by the time
        // its cmdline is read (seen in CI), which is no error.
        let sleep_pid = exec(&ws, "pidof sleep | tr ' ' '\\n' | while read p; do [ \"$(cat /proc/$p/cmdline 2>/dev/null | tr '\\0' ' ')\" = 'sleep 1000 ' ] && echo $p; done; true");
        assert!(sleep_pid.parse::<u32>().is_ok(), "{sleep_pid:?}");

        // Pause: the counter stops advancing, the VMM stays the same process.
        std::thread::sleep(Duration::from_secs(1));
        let (a, ta) = counter(&ws);
        std::thread::sleep(Duration::from_secs(2));
        let (b, tb) = counter(&ws);
        let rate = (b - a) as f64 / (tb - ta).as_secs_f64();
        assert!(rate > 1.0, "the counter does not run: {a} → {b}");
        let pid = vmm_pid(&ws).unwrap();
        manifest(&ws, &srv, "paused");
        let plan = ws.run(&["plan"]).ok().stdout.clone();
        assert!(plan.contains("~ vm.s"), "{plan}");
        let (c0, t0) = counter(&ws);
        ws.run(&["apply", "--yes"]).ok();
        plan_is_empty(&ws);
        let paused_at = Instant::now();
        let status = ws.run(&["status"]).ok().stdout.clone();
        assert!(status.contains("paused (up "), "{status}");
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(vmm_pid(&ws), Some(pid));
        manifest(&ws, &srv, "running");
        ws.run(&["apply", "--yes"]).ok();
        let paused_for = paused_at.elapsed().as_secs_f64();
        let (c1, t1) = counter(&ws);
        assert_eq!(vmm_pid(&ws), Some(pid), "pausing restarted the VMM");
        let ran = (t1 - t0).as_secs_f64() - paused_for;
        let expected_if_never_paused = rate * (t1 - t0).as_secs_f64();
        assert!(
            ((c1 - c0) as f64) < expected_if_never_paused - rate * 3.0,
            "the counter went {c0} → {c1} in {:.1}s of which {paused_for:.1}s paused (rate {rate:.1}/s, {ran:.1}s running)",
            (t1 - t0).as_secs_f64()
        );
        plan_is_empty(&ws);

        // Suspend: the VMM ends, the snapshot is on disk, the plan is empty.
        manifest(&ws, &srv, "suspended");
        let plan = ws.run(&["plan"]).ok().stdout.clone();
        assert!(
            plan.contains("suspends: writes up to 192MiB (its memory) to snapshots/s/suspend/"),
            "{plan}"
        );
        ws.run(&["apply", "--yes"]).ok();
        assert!(!alive(pid), "the VMM {pid} still runs after the suspend");
        assert_eq!(vmm_pid(&ws), None);
        let snap = ws.state_dir().join("snapshots/s/suspend");
        let len = |f: &str| std::fs::metadata(snap.join(f)).unwrap().len();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(snap.join("snapshot.json")).unwrap())
                .unwrap();
        assert_eq!(meta["vmm"], vmm());
        if vmm() == "firecracker" {
            // A full snapshot: all of the guest's memory, and the microVM state beside it.
            assert_eq!(len("mem.bin"), 192 << 20);
            assert_eq!(meta["state_bytes"], len("snapshot.bin") + len("mem.bin"));
            assert_eq!(
                std::fs::read_to_string(snap.join("firecracker-version"))
                    .unwrap()
                    .trim(),
                meta["vmm_version"].as_str().unwrap()
            );
        } else {
            // The devices' state in the stream, the guest's RAM beside it: a sparse file of
            // the guest's size holding the pages the guest touched.
            let stream = len("vmstate");
            assert!(stream < 1 << 20, "a stream of {stream} bytes");
            assert_eq!(len("memory"), 192 << 20);
            use std::os::unix::fs::MetadataExt;
            let allocated = std::fs::metadata(snap.join("memory")).unwrap().blocks() * 512;
            assert!(
                allocated > 1 << 20 && allocated < 192 << 20,
                "memory of {allocated} bytes on disk"
            );
            assert_eq!(meta["files"][0]["name"], "vmstate");
            assert_eq!(meta["files"][0]["bytes"], stream);
            assert_eq!(meta["files"][1]["name"], "memory");
            let saved = meta["files"][1]["bytes"].as_u64().unwrap();
            assert!(saved <= allocated, "{saved} saved, {allocated} allocated");
            assert_eq!(meta["state_bytes"], stream + saved);
        }
        assert!(!ws.state_dir().join("snapshots/s/.suspend.tmp").exists());
        let status = ws.run(&["status"]).ok().stdout.clone();
        assert!(status.contains("suspended ("), "{status}");
        plan_is_empty(&ws);
        ws.run(&["apply", "--yes"]).ok();
        assert!(
            !ws.state_dir().join("run/s/pid").exists(),
            "a second apply started it"
        );

        // Resume: the same processes, the tmpfs file, the clock stepped.
        manifest(&ws, &srv, "running");
        let plan = ws.run(&["plan"]).ok().stdout.clone();
        assert!(plan.contains("resumes from its snapshot ("), "{plan}");
        ws.run(&["apply", "--yes"]).ok();
        assert!(!snap.exists(), "the used snapshot is kept");
        assert_eq!(exec(&ws, "cat /tmp/f"), "kept");
        assert_eq!(
            exec(
                &ws,
                &format!("cat /proc/{sleep_pid}/cmdline | tr '\\0' ' '")
            ),
            "sleep 1000"
        );
        let before = host_now();
        // busybox's date has whole seconds only.
        let guest: f64 = exec(&ws, "date +%s").parse().unwrap();
        let after = host_now();
        assert!(
            guest >= before.floor() - 1.0 && guest <= after + 1.0,
            "guest clock {guest} vs host {before}..{after}"
        );
        let (r0, _) = counter(&ws);
        std::thread::sleep(Duration::from_secs(1));
        let (r1, _) = counter(&ws);
        assert!(
            r1 > r0,
            "the counter did not go on after the resume: {r0} → {r1}"
        );
        plan_is_empty(&ws);

        // A corrupt snapshot is never loaded: the VM boots from its drives, which kept their data.
        manifest(&ws, &srv, "suspended");
        ws.run(&["apply", "--yes"]).ok();
        let state = snap.join(memory_file());
        let mut bytes = std::fs::read(&state).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&state, &bytes).unwrap();
        manifest(&ws, &srv, "running");
        let applied = ws.run(&["apply", "--yes"]).ok().stderr.clone();
        assert!(applied.contains("is corrupt: its sha256 is"), "{applied}");
        assert_eq!(
            exec(&ws, "cat /tmp/f 2>&1 || echo gone"),
            "cat: can't open '/tmp/f': No such file or directory\ngone"
        );
        assert_eq!(exec(&ws, "cat /root/persist"), "on-disk");
        assert!(!snap.exists());
        plan_is_empty(&ws);
        ws.run(&["destroy", "--yes"]).ok();
        assert!(!ws.state_dir().join("snapshots/s").exists());
    });
}

//! The lifecycle failures a new user hit (issue 12), each with real VMs under QEMU/TCG:
//! an apply killed while a pool's new VM boots (the VM must be recorded and adopted, not
//! fought for its TAP), a failed boot's log poisoning every later boot, a memory change on a
//! running VM skipping the host-memory check, and a drive deleted under the VMM using it.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fort::Workspace;
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::vms::{assets, host_memory, processes_mentioning, ConsoleOnFailure, ONE_AT_A_TIME};

fn pool(dir: &Path, count: u32, memory: &str) -> String {
    format!(
        "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n\
         [rootfs.bb]\nurl = \"file://{r}\"\n\n\
         [template.t]\nrootfs = \"bb\"\nsize = \"128MiB\"\n\n\
         [network.lan]\ncidr = \"10.80.0.0/24\"\nisolated = true\n\n\
         [vm.pool]\ncount = {count}\nvmm = \"qemu\"\nkernel = \"deb\"\n\
         root = {{ template = \"t\", size = \"256MiB\" }}\nmemory = \"{memory}\"\nnetwork = \"lan\"\n",
        k = dir.join("vmlinuz").display(),
        i = dir.join("initrd.cpio.gz").display(),
        r = dir.join("rootfs.tar.gz").display(),
    )
}

fn vm_pid(ws: &Workspace, vm: &str) -> u64 {
    let s: serde_json::Value =
        serde_json::from_str(&ws.run(&["state", "show", vm, "--json"]).ok().stdout).unwrap();
    s["outputs"]["started"]["vmm"]["pid"].as_u64().unwrap()
}

#[test]
fn killed_while_a_pool_grows_poisoned_logs_memory_and_drives_in_use() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    let dir = assets();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        ws.write_manifest(&pool(&dir, 2, "192MiB"));
        ws.run(&["apply", "--yes"]).ok();

        // 1. Grow the pool and SIGKILL fort while vm.pool-2 boots (its VMM runs: the pid
        // file is written right after the VMM is recorded).
        ws.write_manifest(&pool(&dir, 3, "192MiB"));
        let mut child = ws.command(&["apply", "--yes"]).spawn().unwrap();
        let pid_file = ws.state_dir().join("run/pool-2/pid");
        let t = Instant::now();
        while !pid_file.exists() && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(pid_file.exists(), "vm.pool-2 never started");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let booting: u64 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The record says what runs, before the agent ever answered.
        let list = ws.run(&["state", "list"]).ok().stdout.clone();
        assert!(
            list.lines()
                .any(|l| l.split_whitespace().take(2).eq(["vm.pool-2", "pending"])),
            "{list}"
        );
        assert_eq!(vm_pid(&ws, "vm.pool-2"), booting);
        let plan = ws.run(&["plan"]);
        plan.ok();
        assert!(
            plan.stdout.contains("  + vm.pool-2\n      reason: not yet created\n      reason: an interrupted apply left it unfinished (after step vm.spawned)\n")
                && plan.stdout.contains(&format!("qemu (PID {booting}) is running")),
            "{}",
            plan.stdout
        );
        // The next apply adopts the booting VM (same QEMU) instead of starting a second one.
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(
            vm_pid(&ws, "vm.pool-2"),
            booting,
            "vm.pool-2 was restarted, not adopted"
        );
        assert_eq!(
            ws.run(&["exec", "vm.pool-2", "--", "hostname"]).ok().stdout,
            "pool-2\n"
        );
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        let qemus = processes_mentioning(&format!("{}/run/pool-2/", ws.state_dir().display()));
        assert_eq!(
            qemus.len(),
            2,
            "one QEMU and one vhost-device-vsock: {qemus:#?}"
        );

        // 2. An earlier boot's failure in vmm.log does not fail the next boot: kill vm.pool-0's
        // VMM after writing what a failed boot leaves in its log; the restart succeeds.
        let run0 = ws.state_dir().join("run/pool-0");
        let old = "qemu-system-x86_64: -netdev tap,id=net0: could not configure /dev/net/tun (fort-pool-0): Device or resource busy\n";
        std::fs::write(run0.join("vmm.log"), old).unwrap();
        let pid0 = vm_pid(&ws, "vm.pool-0");
        // SAFETY: kill(2) of the VMM this test's fort started.
        unsafe { libc::kill(pid0 as i32, libc::SIGKILL) };
        let t = Instant::now();
        while Path::new(&format!("/proc/{pid0}/stat")).exists()
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = ws.run(&["apply", "--yes"]);
        r.ok();
        assert!(r.stdout.contains("vm.pool-0: created in"), "{}", r.stdout);
        assert_eq!(
            std::fs::read_to_string(run0.join("vmm.log.1")).unwrap(),
            old
        );
        let log = std::fs::read_to_string(run0.join("vmm.log")).unwrap_or_default();
        assert!(!log.contains("could not"), "{log}");
        ws.run(&["exec", "vm.pool-0", "--", "true"]).ok();

        // 3. More memory than the host has, on running VMs: refused like a new VM, with the
        // numbers, and nothing restarts.
        let pids: Vec<u64> = (0..3)
            .map(|i| vm_pid(&ws, &format!("vm.pool-{i}")))
            .collect();
        ws.write_manifest(&pool(&dir, 3, "99GiB"));
        for args in [&["plan"][..], &["apply", "--yes"][..]] {
            let r = ws.run(args);
            r.code(1);
            let want = format!(
                "error: vm.pool-0: the manifest wants 297GiB of VM memory running on this host (vm.pool-0 99GiB, vm.pool-1 99GiB, vm.pool-2 99GiB), more than the {} it has in total",
                host_memory()
            );
            assert!(r.stderr.contains(&want), "{}", r.stderr);
        }
        let after: Vec<u64> = (0..3)
            .map(|i| vm_pid(&ws, &format!("vm.pool-{i}")))
            .collect();
        assert_eq!(pids, after, "a refused plan restarted something");
        ws.write_manifest(&pool(&dir, 3, "192MiB"));
        ws.run(&["plan", "--detailed-exitcode"]).ok();

        // 4. A drive a running VMM uses is never deleted under it.
        let drive = ws.state_dir().join("drives/pool-1-root.ext4");
        let before = std::fs::metadata(&drive).unwrap();
        let r = ws.run(&[
            "apply",
            "--yes",
            "--replace",
            "drive.pool-1-root",
            "--allow-data-loss",
        ]);
        r.code(1);
        assert!(
            r.stdout.contains(&format!(
                "drive.pool-1-root: replacing failed: drive.pool-1-root: {} is open by qemu-system-x86 (PID {})",
                drive.display(),
                vm_pid(&ws, "vm.pool-1")
            )),
            "{}",
            r.stdout
        );
        let now = std::fs::metadata(&drive).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(before.ino(), now.ino(), "the drive file was replaced");
        ws.run(&["exec", "vm.pool-1", "--", "true"]).ok();

        // Scale down and destroy: nothing of the state dir keeps running.
        ws.write_manifest(&pool(&dir, 1, "192MiB"));
        ws.run(&["apply", "--yes", "--allow-data-loss"]).ok();
        for i in 1..3 {
            let run = format!("{}/run/pool-{i}/", ws.state_dir().display());
            assert!(processes_mentioning(&run).is_empty(), "{run}");
            assert!(!Path::new(&run).exists(), "{run}");
        }
        ws.run(&["destroy", "--yes", "--allow-data-loss"]).ok();
        assert!(processes_mentioning(&ws.state_dir().display().to_string()).is_empty());
    });
}

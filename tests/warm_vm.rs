//! Issue 16, warm templates, in real VMs (QEMU under TCG): a pool of 3 from a `warm = true`
//! template is restored from one snapshot of a booted VM — the three have that boot's kernel
//! command line — and each has its own hostname, MAC, address (it reaches the
//! gateway with them), machine-id and random numbers, and its own root drive.
//!
//! Under QEMU by default; with `FORT_TEST_VMM=firecracker` (a host with KVM, as root) the
//! same pool runs under Firecracker through its jailer, from the release archive
//! `FORT_TEST_FIRECRACKER_TGZ` names (`FORT_TEST_FIRECRACKER_VERSION`, default v1.12.0, gives
//! its members' names): docs/snapshots.md "Warm clones".

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::fort::{sha256_hex, Workspace};
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::server::{Reply, Server};
use common::vms::{
    assets, kernel_file, processes_mentioning, vmm, ConsoleOnFailure, ONE_AT_A_TIME,
};

/// The VM's VMM lines, and for Firecracker the jailed asset they name.
fn vmm_section() -> (String, String) {
    if vmm() != "firecracker" {
        return (String::new(), "vmm = \"qemu\"".into());
    }
    let tgz = std::env::var("FORT_TEST_FIRECRACKER_TGZ").expect(
        "FORT_TEST_FIRECRACKER_TGZ: Firecracker's release archive (warm clones need its jailer)",
    );
    let v = std::env::var("FORT_TEST_FIRECRACKER_VERSION").unwrap_or_else(|_| "v1.12.0".into());
    let sha = sha256_hex(&std::fs::read(&tgz).unwrap());
    let asset = format!(
        r#"[firecracker.fc]
url = "file://{tgz}"
sha256 = "{sha}"
member = "release-{v}-x86_64/firecracker-{v}-x86_64"
jailer_member = "release-{v}-x86_64/jailer-{v}-x86_64"

"#
    );
    (asset, "vmm = \"firecracker\"\nfirecracker = \"fc\"".into())
}

/// What the command line of a running builder mentions: QEMU's names its drive in the warm
/// snapshot's temporary directory; a jailed Firecracker's, its jail's id.
fn builder_needle(state: &str) -> String {
    if vmm() == "firecracker" {
        "vm-w-".into()
    } else {
        format!("{state}/warm/")
    }
}

fn manifest(ws: &Workspace, srv: &Server, count: u32, memory: &str) {
    let dir = assets();
    let rootfs = std::fs::read(dir.join("rootfs.tar.gz")).unwrap();
    let sha = sha256_hex(&rootfs);
    srv.route("/rootfs.tar.gz", Reply::ok(rootfs));
    let (asset, vmm_lines) = vmm_section();
    ws.write_manifest(&format!(
        r#"{asset}[kernel.deb]
url = "file://{k}"
initrd = {{ url = "file://{i}" }}

[rootfs.bb]
url = "{url}/rootfs.tar.gz"
sha256 = "{sha}"

[template.base]
rootfs = "bb"
size = "128MiB"
warm = true

[network.lan]
cidr = "10.81.0.0/24"

[vm.w]
count = {count}
{vmm_lines}
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "{memory}"
network = "lan"
"#,
        k = dir.join(kernel_file()).display(),
        i = dir.join("initrd.cpio.gz").display(),
        url = srv.url("").trim_end_matches('/'),
    ));
}

fn exec(ws: &Workspace, vm: &str, cmd: &str) -> String {
    ws.run(&["exec", vm, "--", "sh", "-c", cmd])
        .ok()
        .stdout
        .trim()
        .to_string()
}

fn warm_snapshots(ws: &Workspace) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(ws.state_dir().join("warm"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_warm_pool_of_three_has_one_snapshot_and_three_identities() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let srv = Server::start();
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        manifest(&ws, &srv, 3, "192MiB");
        let plan = ws.run(&["plan"]).ok().stdout.clone();
        assert!(
            plan.contains("starts warm: restored from template.base's snapshot"),
            "{plan}"
        );
        // Killed while the builder runs, then after it was saved (QEMU: before its snapshot
        // was committed; Firecracker commits before the builder is killed): an unfinished
        // build is never used, and the next apply converges.
        let state = ws.state_dir().display().to_string();
        let firecracker = vmm() == "firecracker";
        for (point, builder_runs) in [("vm.spawned", true), ("vm.stopped", false)] {
            let out = ws
                .command(&["apply", "--yes"])
                .env("FORT_CRASH_AT", point)
                .output()
                .unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(out.status.signal(), Some(9), "{point}: {out:?}");
            let snaps = warm_snapshots(&ws);
            let committed = firecracker && point == "vm.stopped";
            assert!(
                snaps.len() == 1 && snaps[0].ends_with(".tmp") != committed,
                "{point}: only an unfinished build (or Firecracker's committed one): {snaps:?}"
            );
            let builders = processes_mentioning(&builder_needle(&state));
            assert_eq!(
                builders.len(),
                usize::from(builder_runs),
                "{point}: {builders:?}"
            );
        }
        ws.run(&["apply", "--yes"]).ok();
        let snaps = warm_snapshots(&ws);
        if !firecracker {
            // (A jailed Firecracker's command line names its jail's id, the clones' too.)
            assert!(
                processes_mentioning(&builder_needle(&state)).is_empty(),
                "no builder is left running"
            );
        }
        assert!(
            snaps.len() == 1 && !snaps[0].ends_with(".tmp"),
            "one snapshot for the pool, no unfinished build: {snaps:?}"
        );
        let vms = ["vm.w-0", "vm.w-1", "vm.w-2"];
        for vm in vms {
            exec(&ws, vm, "busybox --install -s /bin");
        }
        let read = |cmd: &str| -> Vec<String> { vms.iter().map(|v| exec(&ws, v, cmd)).collect() };
        let distinct = |what: &str, v: &[String]| {
            let set: BTreeSet<&String> = v.iter().collect();
            assert_eq!(set.len(), v.len(), "{what} must differ: {v:?}");
            assert!(v.iter().all(|s| !s.is_empty()), "{what}: {v:?}");
        };
        // Restored, not booted: the kernel's command line is the builder's, in all three.
        for c in read("cat /proc/cmdline") {
            assert!(c.contains("fort.hostname=fort-warm"), "{c}");
        }
        // Each its own identity.
        let hostnames = read("hostname");
        assert_eq!(hostnames, ["w-0", "w-1", "w-2"]);
        distinct("machine-ids", &read("cat /etc/machine-id"));
        distinct("MACs", &read("cat /sys/class/net/eth0/address"));
        let ips = read("ip -4 -o addr show eth0 | awk '{print $4}'");
        distinct("addresses", &ips);
        for ip in &ips {
            assert!(ip.starts_with("10.81.0.") && ip.ends_with("/24"), "{ips:?}");
        }
        distinct(
            "random bytes",
            &read("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"),
        );
        // Their new MACs and addresses work: each reaches the gateway through its TAP (the VMM
        // delivers the replies to the MAC the guest set).
        for vm in vms {
            let r = ws.run(&["exec", vm, "--", "ping", "-c", "1", "-W", "5", "10.81.0.1"]);
            assert!(
                r.stdout.contains("1 packets received"),
                "{vm}: {}",
                r.stdout
            );
        }
        // Their own root drives.
        exec(&ws, "vm.w-0", "echo mine > /root-mark && sync");
        for vm in &vms[1..] {
            assert_eq!(
                exec(&ws, vm, "cat /root-mark 2>/dev/null || echo absent"),
                "absent"
            );
        }
        let plan = ws.run(&["plan"]).ok().stdout.clone();
        assert!(plan.contains("No changes."), "plan after apply:\n{plan}");

        // A fourth instance is restored from the same snapshot.
        manifest(&ws, &srv, 4, "192MiB");
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(warm_snapshots(&ws), snaps);
        assert!(exec(&ws, "vm.w-3", "cat /proc/cmdline").contains("fort.hostname=fort-warm"));
        assert_eq!(
            exec(&ws, "vm.w-3", "cat /root-mark 2>/dev/null || echo absent"),
            "absent"
        );
        // The earlier instances keep running (restarting them would be a cold boot of theirs).
        assert_eq!(exec(&ws, "vm.w-0", "cat /root-mark"), "mine");

        ws.run(&["destroy", "--yes"]).ok();
        assert!(
            warm_snapshots(&ws).is_empty(),
            "destroying the template removes its warm snapshots: {:?}",
            warm_snapshots(&ws)
        );
    });
}

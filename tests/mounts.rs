//! Mounted data drives with a real VM (QEMU under TCG): `drives = [{ drive = "data", mount =
//! "/data" }, "scratch"]` is mounted by the guest agent at boot and the plain drive is only
//! attached; data survives a stop and a start; `options = "ro"` is a restart and makes it
//! read-only; a drive that cannot be mounted is reported by `fort apply`, `fort exec` and
//! `fort status`, and the plan stays empty throughout.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Seek, SeekFrom, Write};

use common::fort::Workspace;
use common::rootfs::static_agent;
use common::vms::{assets, kernel_file, vmm, ConsoleOnFailure, ONE_AT_A_TIME};

fn manifest(ws: &Workspace, state: &str, options: &str) {
    let dir = assets();
    ws.write_manifest(&format!(
        r#"[kernel.deb]
url = "file://{k}"
initrd = {{ url = "file://{i}" }}

[rootfs.bb]
url = "file://{r}"

[template.base]
rootfs = "bb"
size = "128MiB"

[drive.data]
size = "32MiB"

[drive.scratch]
size = "16MiB"

[vm.m]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
drives = [{{ drive = "data", mount = "/data"{options} }}, "scratch"]
memory = "256MiB"
state = "{state}"
"#,
        k = dir.join(kernel_file()).display(),
        i = dir.join("initrd.cpio.gz").display(),
        r = dir.join("rootfs.tar.gz").display(),
        vmm = vmm(),
    ));
}

fn exec(ws: &Workspace, argv: &[&str]) -> common::fort::Run {
    let mut args = vec!["exec", "vm.m", "--"];
    args.extend_from_slice(argv);
    ws.run(&args)
}

/// The /proc/mounts line of `path` in the guest, if any.
fn guest_mount(ws: &Workspace, path: &str) -> Option<String> {
    let m = exec(ws, &["cat", "/proc/mounts"]).ok().stdout.clone();
    m.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(path))
        .map(str::to_string)
}

#[test]
fn data_drives_are_mounted_where_the_manifest_says() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("FORT_GUEST_AGENT", static_agent());
    let ws = Workspace::new();
    let _console = ConsoleOnFailure(ws.state_dir().join("run"));

    manifest(&ws, "running", "");
    let p = ws.run(&["plan"]);
    assert!(
        p.stdout.contains("      mounts drive.data at /data (rw)\n"),
        "{}",
        p.stdout
    );
    ws.run(&["apply", "--yes"]).ok();
    ws.run(&["plan", "--detailed-exitcode"]).ok();

    // Mounted by the agent, read-write, from the disk with the drive's serial.
    let line = guest_mount(&ws, "/data").expect("/data is mounted");
    assert!(line.starts_with("/dev/vdb /data ext4 rw"), "{line}");
    assert_eq!(
        exec(&ws, &["cat", "/sys/block/vdb/serial"]).ok().stdout,
        "fort-data"
    );
    // The plain drive is attached (with its serial) and not mounted.
    assert_eq!(
        exec(&ws, &["cat", "/sys/block/vdc/serial"]).ok().stdout,
        "fort-scratch"
    );
    let mounts = exec(&ws, &["cat", "/proc/mounts"]).ok().stdout.clone();
    assert!(!mounts.contains("/dev/vdc"), "{mounts}");
    let status = ws.run(&["status"]).ok().stdout.clone();
    assert!(status.contains("; drive.data on /data"), "{status}");

    // Written, stopped, started: read back.
    exec(&ws, &["sh", "-c", "echo kept > /data/f && sync"]).ok();
    manifest(&ws, "stopped", "");
    ws.run(&["apply", "--yes"]).ok();
    ws.run(&["plan", "--detailed-exitcode"]).ok();
    manifest(&ws, "running", "");
    ws.run(&["apply", "--yes"]).ok();
    assert_eq!(exec(&ws, &["cat", "/data/f"]).ok().stdout, "kept\n");
    ws.run(&["plan", "--detailed-exitcode"]).ok();

    // New options are a restart, shown in the plan; `ro` makes writes fail.
    manifest(&ws, "running", ", options = \"ro,noatime\"");
    let p = ws.run(&["plan"]);
    assert!(p.stdout.contains("  ~restart vm.m\n"), "{}", p.stdout);
    assert!(p.stdout.contains("      ~ mounts: "), "{}", p.stdout);
    assert!(
        p.stdout
            .contains("      mounts drive.data at /data (ro,noatime)\n"),
        "{}",
        p.stdout
    );
    ws.run(&["apply", "--yes"]).ok();
    ws.run(&["plan", "--detailed-exitcode"]).ok();
    let line = guest_mount(&ws, "/data").expect("/data is mounted");
    assert!(line.starts_with("/dev/vdb /data ext4 ro,noatime"), "{line}");
    let w = exec(&ws, &["sh", "-c", "echo x > /data/g"]);
    assert_ne!(w.code, 0, "a write to a read-only mount succeeded");
    assert!(w.stderr.contains("Read-only file system"), "{}", w.stderr);
    assert_eq!(exec(&ws, &["cat", "/data/f"]).ok().stdout, "kept\n");

    // A drive that cannot be mounted (its superblock zeroed while the VM is stopped) is
    // reported, not skipped; the VM still runs and the plan stays empty.
    manifest(&ws, "stopped", ", options = \"ro,noatime\"");
    ws.run(&["apply", "--yes"]).ok();
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(ws.state_dir().join("drives/data.ext4"))
            .unwrap();
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.write_all(&[0u8; 1024]).unwrap();
        f.sync_all().unwrap();
    }
    manifest(&ws, "running", ", options = \"ro,noatime\"");
    let a = ws.run(&["apply", "--yes"]);
    a.ok();
    let why = "/dev/vdb holds no ext4 filesystem (no ext4 superblock magic at byte 1080)";
    assert!(
        a.stderr
            .contains(&format!("vm.m: drive.data is not mounted at /data: {why}")),
        "{}",
        a.stderr
    );
    let r = exec(&ws, &["true"]);
    r.ok();
    assert_eq!(
        r.stderr,
        format!("fort: warning: drive.data is not mounted at /data: {why}\n")
    );
    assert_eq!(guest_mount(&ws, "/data"), None);
    let status = ws.run(&["status"]).ok().stdout.clone();
    assert!(
        status.contains(&format!("; drive.data NOT mounted at /data: {why}")),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ws.run(&["status", "--json"]).ok().stdout).unwrap();
    let vm = json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "vm.m")
        .unwrap();
    assert_eq!(
        vm["mounts"],
        serde_json::json!([{"drive": "data", "path": "/data", "device": "/dev/vdb", "mounted": false, "error": why}])
    );
    ws.run(&["plan", "--detailed-exitcode"]).ok();

    ws.run(&["destroy", "--yes"]).ok();
}

//! Drives for real: clones of a template image on btrfs (reflink, shared extents) and on a
//! filesystem without reflink (sparse copy), empty drives, growth, data safety, drift.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fort::{sha256_hex, Workspace};
use common::rootfs::{busybox_rootfs, static_agent};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A btrfs filesystem on a loop-mounted image file, unmounted on drop.
struct Btrfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Btrfs {
    fn new() -> Btrfs {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("btrfs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        sh(&format!(
            "truncate -s 2G {} && mkfs.btrfs -q {} && mount -o loop {} {}",
            img.display(),
            img.display(),
            img.display(),
            mnt.display()
        ));
        Btrfs { mnt, _dir: dir }
    }

    fn used_bytes(&self) -> u64 {
        sh(&format!(
            "sync; stat -f -c '%b %f %S' {}",
            self.mnt.display()
        ))
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap())
        .collect::<Vec<_>>()
        .chunks(3)
        .map(|v| (v[0] - v[1]) * v[2])
        .next()
        .unwrap()
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn fort(ws: &Workspace, state: &Path, agent: &Path, args: &[&str]) -> common::fort::Run {
    let mut c = Command::new(common::fort::FORT);
    c.arg("-f")
        .arg(ws.manifest())
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("FORT_GUEST_AGENT", agent)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null());
    common::fort::Run::from(c.output().unwrap())
}

fn manifest(ws: &Workspace, drives: &str) {
    busybox_rootfs(&ws.path().join("rootfs.tar.gz"));
    ws.write_manifest(&format!(
        "[rootfs.bb]\nurl = \"rootfs.tar.gz\"\n\n[template.t]\nrootfs = \"bb\"\nsize = \"256MiB\"\n[template.t.files]\n\"/etc/motd\" = \"from the template\\n\"\n\n{drives}"
    ));
}

fn outputs(ws: &Workspace, state: &Path, agent: &Path, addr: &str) -> serde_json::Value {
    let r = fort(ws, state, agent, &["state", "show", addr, "--json"]);
    serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["outputs"].clone()
}

#[test]
fn clones_on_btrfs_share_extents_and_grow() {
    let agent = static_agent();
    let fs = Btrfs::new();
    let state = fs.mnt.join("state");
    let ws = Workspace::new();
    let drives: String = (0..10)
        .map(|i| format!("[drive.d{i}]\ntemplate = \"t\"\nsize = \"1GiB\"\n\n"))
        .collect();
    manifest(&ws, &drives);
    fort(
        &ws,
        &state,
        &agent,
        &["apply", "--yes", "--target", "template.t"],
    )
    .ok();
    let plan = fort(&ws, &state, &agent, &["plan"]);
    assert!(
        plan.stdout.contains(&format!("10 drives will be cloned from template images by reflink: {}/drives is on btrfs, so clones share the image's extents (instant, no space used until written)", state.display())),
        "{}",
        plan.stdout
    );
    let before = fs.used_bytes();
    fort(&ws, &state, &agent, &["apply", "--yes"]).ok();
    let grown = fs.used_bytes() - before;
    // Ten 1 GiB drives from a 256 MiB image: only metadata and resize2fs's changes are new.
    assert!(
        grown < 100 << 20,
        "btrfs used space grew by {grown} bytes for 10 clones"
    );
    let out = outputs(&ws, &state, &agent, "drive.d3");
    assert_eq!(out["method"], "reflink");
    let path = out["path"].as_str().unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), 1 << 30);
    let header = sh(&format!("dumpe2fs -h {path} 2>/dev/null"));
    let field = |name: &str| -> u64 {
        header
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        field("Block count:") * field("Block size:"),
        1 << 30,
        "the filesystem was resized, not just the file"
    );
    assert_eq!(
        sh(&format!("debugfs -R 'cat /etc/motd' {path} 2>/dev/null")),
        "from the template\n"
    );
    let plan = fort(&ws, &state, &agent, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.stdout);
}

#[test]
fn without_reflink_drives_are_sparse_copies_and_data_is_safe() {
    let agent = static_agent();
    let ws = Workspace::new();
    let state = ws.state_dir();
    manifest(&ws, "[drive.root]\ntemplate = \"t\"\nsize = \"512MiB\"\n\n[drive.data]\nsize = \"64MiB\"\nprotect = true\n");
    let (expected, how) = if sh(&format!("stat -f -c %T {}", ws.path().display())).trim() == "btrfs"
    {
        ("reflink", "reflink")
    } else {
        ("copy", "sparse copy")
    };
    let plan = fort(&ws, &state, &agent, &["plan"]);
    let note = format!(
        "1 drive will be cloned from template images by {how}: {}/drives is on ",
        state.display()
    );
    assert!(plan.stdout.contains(&note), "{}", plan.stdout);
    fort(&ws, &state, &agent, &["apply", "--yes"]).ok();
    let root = outputs(&ws, &state, &agent, "drive.root");
    assert_eq!(root["method"], expected);
    let data = outputs(&ws, &state, &agent, "drive.data");
    assert_eq!(data["method"], "mkfs");
    let data_path = data["path"].as_str().unwrap().to_string();
    assert!(sh(&format!("dumpe2fs -h {data_path} 2>/dev/null"))
        .contains("Filesystem magic number:  0xEF53"));
    // Sparse: far fewer blocks allocated than the size.
    let allocated: u64 = sh(&format!("stat -c %b {}", root["path"].as_str().unwrap()))
        .trim()
        .parse::<u64>()
        .unwrap()
        * 512;
    assert!(
        allocated < 256 << 20,
        "the copy allocated {allocated} bytes"
    );
    fort(&ws, &state, &agent, &["plan", "--detailed-exitcode"]).ok();

    // Shrinking is refused at plan time.
    let m = std::fs::read_to_string(ws.manifest()).unwrap();
    std::fs::write(
        ws.manifest(),
        m.replace("size = \"512MiB\"", "size = \"300MiB\""),
    )
    .unwrap();
    let r = fort(&ws, &state, &agent, &["plan"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("error: drive.root: size 300MiB is smaller than its current 512MiB: drives are never shrunk (use --replace drive.root to start over, losing its data)"), "{}", r.stderr);
    std::fs::write(ws.manifest(), &m).unwrap();

    // Removing a protected drive from the manifest is refused; the data stays.
    let sum = sha256_hex(&std::fs::read(&data_path).unwrap());
    let r = fort(
        &ws,
        &state,
        &agent,
        &["apply", "--yes", "--replace", "drive.data"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("error: drive.data is protected (protect = true) and this plan would replace it, losing its data; re-run with --allow-data-loss if that is what you want"), "{}", r.stderr);
    assert_eq!(sha256_hex(&std::fs::read(&data_path).unwrap()), sum);
    std::fs::write(
        ws.manifest(),
        m.replace("[drive.data]\nsize = \"64MiB\"\nprotect = true\n", ""),
    )
    .unwrap();
    let r = fort(&ws, &state, &agent, &["apply", "--yes"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("error: drive.data is protected (protect = true) and this plan would destroy it, losing its data; re-run with --allow-data-loss if that is what you want"), "{}", r.stderr);
    assert_eq!(sha256_hex(&std::fs::read(&data_path).unwrap()), sum);
    let r = fort(
        &ws,
        &state,
        &agent,
        &["apply", "--yes", "--allow-data-loss"],
    );
    assert!(r.stdout.contains("  - drive.data !\n"), "{}", r.stdout);
    r.ok();
    assert!(!Path::new(&data_path).exists());
    std::fs::write(ws.manifest(), &m).unwrap();

    // A vanished drive is drift: recreated from its template, and the plan says the data is gone.
    fort(&ws, &state, &agent, &["apply", "--yes"]).ok();
    let root_path = root["path"].as_str().unwrap();
    std::fs::remove_file(root_path).unwrap();
    let plan = fort(&ws, &state, &agent, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2);
    assert!(plan.stdout.contains(&format!("  + drive.root\n      reason: drift: drive file {root_path} is missing\n      reason: its data is gone: it will be recreated from its template (or empty)\n")), "{}", plan.stdout);
    fort(&ws, &state, &agent, &["apply", "--yes"]).ok();
    assert_eq!(
        sh(&format!(
            "debugfs -R 'cat /etc/motd' {root_path} 2>/dev/null"
        )),
        "from the template\n"
    );
    fort(&ws, &state, &agent, &["plan", "--detailed-exitcode"]).ok();
}

#[test]
fn old_images_live_as_long_as_a_drive_uses_them() {
    let agent = static_agent();
    let ws = Workspace::new();
    let state = ws.state_dir();
    manifest(&ws, "[drive.root]\ntemplate = \"t\"\nsize = \"512MiB\"\n");
    fort(&ws, &state, &agent, &["apply", "--yes"]).ok();
    let old = outputs(&ws, &state, &agent, "template.t")["image"]
        .as_str()
        .unwrap()
        .to_string();
    // A new template version: a new image; the drive keeps its data and its old base.
    let m = std::fs::read_to_string(ws.manifest()).unwrap();
    std::fs::write(
        ws.manifest(),
        m.replace("from the template", "from template v2"),
    )
    .unwrap();
    let r = fort(&ws, &state, &agent, &["apply", "--yes"]);
    r.ok();
    assert!(r.stdout.contains("  ~ template.t\n"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("  ~ drive.root") && !r.stdout.contains("-/+ drive.root"),
        "a template change must not touch drives: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("note: drive.root is based on an older image of template.t and keeps it (drives are never rebuilt from a changed template; `--replace drive.root` rebuilds it, losing its data)"),
        "{}",
        r.stdout
    );
    let new = outputs(&ws, &state, &agent, "template.t")["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(old, new);
    assert!(
        Path::new(&old).exists(),
        "drive.root still refers to the old image"
    );
    fort(&ws, &state, &agent, &["plan", "--detailed-exitcode"]).ok();
    // `--replace` rebuilds the drive from the current image, on request only; once no drive
    // uses the old image, apply removes it.
    let r = fort(
        &ws,
        &state,
        &agent,
        &["apply", "--yes", "--replace", "drive.root"],
    );
    r.ok();
    assert!(
        r.stdout.contains(
            "  -/+ drive.root !
"
        ),
        "{}",
        r.stdout
    );
    let drive = outputs(&ws, &state, &agent, "drive.root");
    assert_eq!(drive["image"], new.as_str());
    assert_eq!(
        sh(&format!(
            "debugfs -R 'cat /etc/motd' {} 2>/dev/null",
            drive["path"].as_str().unwrap()
        )),
        "from template v2\n"
    );
    assert!(!Path::new(&old).exists());
    let plan = fort(&ws, &state, &agent, &["plan", "--detailed-exitcode"]);
    plan.ok();
    assert!(!plan.stdout.contains("older image"), "{}", plan.stdout);
    // Without drives the template's own image stays.
    std::fs::write(
        ws.manifest(),
        m.replace("from the template", "from template v2")
            .replace("[drive.root]\ntemplate = \"t\"\nsize = \"512MiB\"\n", ""),
    )
    .unwrap();
    fort(&ws, &state, &agent, &["apply", "--yes"]).ok();
    assert!(Path::new(&new).exists());
    fort(&ws, &state, &agent, &["plan", "--detailed-exitcode"]).ok();
}

#[test]
fn pool_inline_roots_are_drives_cloned_the_same_way() {
    let agent = static_agent();
    let ws = Workspace::new();
    let state = ws.state_dir();
    std::fs::write(ws.path().join("vmlinux"), b"not a real kernel").unwrap();
    manifest(
        &ws,
        "[kernel.k]\nurl = \"vmlinux\"\n\n[vm.w]\ncount = 2\nkernel = \"k\"\nroot = { template = \"t\", size = \"300MiB\" }\n",
    );
    let r = fort(
        &ws,
        &state,
        &agent,
        &[
            "apply",
            "--yes",
            "--target",
            "drive.w-0-root",
            "--target",
            "drive.w-1-root",
        ],
    );
    r.ok();
    for i in 0..2 {
        let out = outputs(&ws, &state, &agent, &format!("drive.w-{i}-root"));
        let path = out["path"].as_str().unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), 300 << 20);
        assert_ne!(out["method"], "mkfs");
        assert_eq!(
            sh(&format!("debugfs -R 'cat /etc/motd' {path} 2>/dev/null")),
            "from the template\n"
        );
    }
    let plan = fort(
        &ws,
        &state,
        &agent,
        &[
            "plan",
            "--detailed-exitcode",
            "--target",
            "drive.w-0-root",
            "--target",
            "drive.w-1-root",
        ],
    );
    plan.ok();
}

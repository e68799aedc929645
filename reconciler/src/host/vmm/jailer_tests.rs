//! The jailer's command line, the jailed config and the chroot layout against golden files
//! written from Firecracker's docs/jailer.md (Firecracker cannot run on the machines that test
//! fort, so its documented behaviour is the reference).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::host::vmm::firecracker::tests::cfg;
use crate::host::vmm::{Confine, Limits};

fn golden(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(name);
    std::fs::read_to_string(&p).unwrap()
}

pub(crate) fn confine(version: u8) -> Confine {
    Confine {
        uid: 2_000_000_007,
        gid: 2_000_000_007,
        groups: vec![],
        cgroup: "fort/0123abcd/vm-a".into(),
        cgroup_version: version,
        cgroup_dirs: vec![],
        limits: Limits {
            cpu_quota_us: 200_000,
            cpu_period_us: 100_000,
            memory_bytes: 640 << 20,
            pids: 256,
        },
    }
}

#[test]
fn the_command_line_is_the_documented_one_for_both_cgroup_versions() {
    let golden = golden("firecracker-jailer-args.txt");
    // Two sections, each after its `# cgroup vN` comment line.
    let (mut v1, mut v2) = (Vec::new(), Vec::new());
    let mut section = &mut v1;
    for l in golden.lines() {
        if l.starts_with("# cgroup v2") {
            section = &mut v2;
        } else if !l.starts_with('#') {
            section.push(l.to_string());
        }
    }
    let c = cfg();
    assert_eq!(args(&layout(&c), &confine(1)), v1);
    assert_eq!(args(&layout(&c), &confine(2)), v2);
    // A cgroup the jailer's --parent-cgroup/--id cannot name gets no cgroup arguments.
    let mut odd = confine(2);
    odd.cgroup = "elsewhere/vm-b".into();
    assert_eq!(args(&layout(&c), &odd), v1);
}

#[test]
fn the_jail_is_named_after_the_vm_inside_its_run_dir() {
    let jail = layout(&cfg());
    assert_eq!(jail.id, "vm-a");
    assert_eq!(
        jail.root,
        Path::new("/var/lib/fort/run/a/jail/firecracker/vm-a/root")
    );
}

#[test]
fn the_config_names_every_file_as_the_jailed_firecracker_sees_it() {
    let want: Value = serde_json::from_str(&golden("firecracker-jailed-config.json")).unwrap();
    let c = cfg();
    assert_eq!(config(&c, &layout(&c)), want);
}

/// One line per entry under `dir`, sorted, as in the layout golden file.
fn listing(dir: &Path, names: &[(&Path, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort();
    for p in all {
        let rel = p.strip_prefix(dir).unwrap().display().to_string();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            out.push(format!("{rel}  symlink -> {}", t.display()));
            continue;
        }
        let kind = if m.is_dir() { "dir" } else { "file" };
        let mut line = format!(
            "{rel}  {kind} {:04o} {}:{}",
            m.permissions().mode() & 0o7777,
            m.uid(),
            m.gid()
        );
        if m.is_file() {
            let same = names
                .iter()
                .find(|(other, _)| {
                    *other != p.as_path() && std::fs::metadata(other).unwrap().ino() == m.ino()
                })
                .map(|(_, label)| *label);
            if let Some(label) = same {
                line.push_str(&format!("  same file as {label}"));
            }
        }
        out.push(line);
    }
    out
}

#[test]
fn prepare_builds_the_documented_chroot_and_keeps_forts_paths() {
    let t = tempfile::tempdir().unwrap();
    // The modes in the golden file are those a umask of 022 gives.
    // SAFETY: umask(2) only sets this process's file-creation mask; tests creating files at
    // the same time get the common default.
    unsafe { libc::umask(0o022) };
    let (cache, drives, run) = (
        t.path().join("cache"),
        t.path().join("drives"),
        t.path().join("run/a"),
    );
    for d in [&cache, &drives, &run] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut c = cfg();
    c.run_dir = run.clone();
    c.kernel = cache.join("vmlinux");
    c.initrd = Some(cache.join("initrd"));
    c.root = drives.join("a-root.ext4");
    c.drives = vec![drives.join("data.ext4")];
    for f in [&c.kernel, c.initrd.as_ref().unwrap(), &c.root, &c.drives[0]] {
        std::fs::write(f, b"x").unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let bin = cache.join("firecracker-bin");
    std::fs::write(&bin, b"#!/bin/true\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A previous boot's jail is replaced, not merged.
    std::fs::create_dir_all(run.join("jail/firecracker/vm-a/root/dev")).unwrap();

    let conf = confine(1);
    let jail = prepare(&c, &conf, &bin).unwrap();
    let vmm_log = RunDir(&run).vmm_log();
    let labels: Vec<(&Path, &str)> = vec![
        (&bin, "$C/firecracker-bin"),
        (&c.kernel, "$C/vmlinux"),
        (c.initrd.as_deref().unwrap(), "$C/initrd"),
        (&c.root, "$D/a-root.ext4"),
        (&c.drives[0], "$D/data.ext4"),
        (&vmm_log, "vmm.log"),
    ];
    let want: Vec<String> = golden("firecracker-jail-layout.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(String::from)
        .collect();
    let got = listing(&run, &labels);
    assert_eq!(got, want);
    // The config in the jail is the one the jailed Firecracker is told about.
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(jail.root.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(written, config(&c, &jail));
    // Again (the next boot): same layout, and the drives' data untouched.
    prepare(&c, &conf, &bin).unwrap();
    assert_eq!(listing(&run, &labels), want);
    assert_eq!(std::fs::read(&c.root).unwrap(), b"x");
    assert!(std::fs::symlink_metadata(run.join("vsock.sock"))
        .unwrap()
        .file_type()
        .is_symlink());
}

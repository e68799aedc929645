//! Templates built for real: a busybox rootfs tarball made here, overlays, the static agent as
//! /sbin/init, `mke2fs -d`, and the image inspected with `debugfs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::fort::Workspace;
use common::rootfs::{busybox_rootfs, static_agent};

fn debugfs(image: &str, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd, image])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn manifest(ws: &Workspace, size: &str) {
    std::fs::write(ws.path().join("tools.sh"), "export EDITOR=vi\n").unwrap();
    ws.write_manifest(&format!(
        "[rootfs.bb]\nurl = \"rootfs.tar.gz\"\n\n[template.agent]\nrootfs = \"bb\"\nsize = \"{size}\"\n\n\
         [template.agent.files]\n\"/etc/motd\" = \"Welcome to a fort VM\\n\"\n\"/etc/profile.d/tools.sh\" = {{ source = \"tools.sh\", mode = \"0755\" }}\n"
    ));
}

#[test]
fn a_template_becomes_an_ext4_image_with_owners_modes_links_overlays_and_the_agent() {
    let agent = static_agent();
    let ws = Workspace::new();
    busybox_rootfs(&ws.path().join("rootfs.tar.gz"));
    manifest(&ws, "32MiB");
    let apply = ws
        .command(&["apply", "--yes"])
        .env("FORT_GUEST_AGENT", &agent)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&apply.stdout);
    assert!(
        apply.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    let show = ws
        .command(&["state", "show", "template.agent", "--json"])
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let image = rec["outputs"]["image"].as_str().unwrap().to_string();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 32 << 20);

    let shadow = debugfs(&image, "stat /etc/shadow");
    assert!(shadow.contains("Mode:  0640"), "{shadow}");
    assert!(shadow.contains("User:     0   Group:    42"), "{shadow}");
    let sh = debugfs(&image, "stat /bin/sh");
    assert!(
        sh.contains("Type: symlink") && sh.contains("Fast link dest: \"busybox\""),
        "{sh}"
    );
    assert_eq!(debugfs(&image, "cat /etc/motd"), "Welcome to a fort VM\n");
    let tools = debugfs(&image, "stat /etc/profile.d/tools.sh");
    assert!(
        tools.contains("Mode:  0755") && tools.contains("User:     0   Group:     0"),
        "{tools}"
    );
    let init = debugfs(&image, "stat /sbin/init");
    assert!(
        init.contains("Type: regular") && init.contains("Mode:  0755"),
        "/sbin/init is the agent, not busybox's link: {init}"
    );
    assert!(
        init.contains(&format!(
            "Size: {}",
            std::fs::metadata(&agent).unwrap().len()
        )),
        "{init}"
    );

    // Idempotent: nothing to do, the image is not rebuilt.
    let mtime = std::fs::metadata(&image).unwrap().modified().unwrap();
    let plan = ws
        .command(&["plan", "--detailed-exitcode"])
        .env("FORT_GUEST_AGENT", &agent)
        .output()
        .unwrap();
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
    let again = ws
        .command(&["apply", "--yes"])
        .env("FORT_GUEST_AGENT", &agent)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "No changes. The host matches the manifest.\n"
    );
    assert_eq!(
        std::fs::metadata(&image).unwrap().modified().unwrap(),
        mtime
    );

    // Deleting the image is drift that apply repairs.
    std::fs::remove_file(&image).unwrap();
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains(&format!(
            "  + template.agent\n      reason: drift: image {image} is missing\n"
        )),
        "{}",
        plan.stdout
    );
    let fix = ws
        .command(&["apply", "--yes"])
        .env("FORT_GUEST_AGENT", &agent)
        .output()
        .unwrap();
    assert!(fix.status.success());
    assert!(Path::new(&image).exists());
}

#[test]
fn too_small_a_size_says_what_is_needed_and_leaves_nothing() {
    let agent = static_agent();
    let ws = Workspace::new();
    busybox_rootfs(&ws.path().join("rootfs.tar.gz"));
    manifest(&ws, "2MiB");
    let apply = ws
        .command(&["apply", "--yes"])
        .env("FORT_GUEST_AGENT", &agent)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&apply.stdout);
    assert_eq!(apply.status.code(), Some(1));
    // What the files need follows the busybox and agent binaries' sizes (the agent shrank
    // with its build profile): read the figure, then check the whole line is exactly that.
    let prefix = "template.agent: creating failed: the files need about ";
    let n: u64 = stdout
        .split_once(prefix)
        .and_then(|(_, rest)| rest.split_once("MiB"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        stdout.contains(&format!(
            "{prefix}{n}MiB but the image size is 2MiB: raise `size` to at least {n}MiB\n"
        )),
        "{stdout}"
    );
    let binaries =
        std::fs::metadata("/bin/busybox").unwrap().len() + std::fs::metadata(&agent).unwrap().len();
    assert!(
        n > binaries >> 20 && n < (binaries >> 20) + 8,
        "{n} MiB for {binaries} bytes of binaries"
    );
    let images: Vec<_> = std::fs::read_dir(ws.state_dir().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(images, vec![std::ffi::OsString::from("tmp")]);
    assert_eq!(
        std::fs::read_dir(ws.state_dir().join("images/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_dynamic_agent_is_refused() {
    let ws = Workspace::new();
    busybox_rootfs(&ws.path().join("rootfs.tar.gz"));
    manifest(&ws, "32MiB");
    let apply = ws
        .command(&["apply", "--yes"])
        .env("FORT_GUEST_AGENT", "/bin/ls")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&apply.stdout);
    assert_eq!(apply.status.code(), Some(1));
    assert!(
        stdout.contains("template.agent: creating failed: the guest agent /bin/ls is dynamically linked (it needs a loader the guest may not have): build it static with scripts/build-agent"),
        "{stdout}"
    );
}

/// The image files (`*.ext4`) in `state/images`, i.e. what looks like a finished image.
fn finished_images(ws: &Workspace) -> Vec<String> {
    std::fs::read_dir(ws.state_dir().join("images"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ext4"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_hostile_rootfs_is_refused_writes_nothing_outside_and_registers_no_image() {
    let ws = Workspace::new();
    let outside = ws.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // A symlink pointing outside the image, then a file written through it.
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    t.append_link(&mut h, "etc", &outside).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    t.append_data(&mut h, "etc/pwned", &b"x\n"[..]).unwrap();
    let tarball = ws.path().join("evil.tar");
    std::fs::write(&tarball, t.into_inner().unwrap()).unwrap();
    ws.write_manifest(
        "[rootfs.evil]\nurl = \"evil.tar\"\n\n[template.t]\nrootfs = \"evil\"\nsize = \"16MiB\"\nguest_agent = false\n",
    );
    let apply = ws.run(&["apply", "--yes"]);
    assert_eq!(apply.code, 1, "{}", apply.stdout);
    let cache = ws.run(&["state", "show", "rootfs.evil", "--json"]);
    let entry: serde_json::Value = serde_json::from_str(&cache.stdout).unwrap();
    let entry = entry["outputs"]["path"].as_str().unwrap().to_string();
    assert!(
        apply.stdout.contains(&format!(
            "template.t: creating failed: unsafe archive {entry}: entry `etc/pwned` would be written through the symlink `etc`"
        )),
        "{}",
        apply.stdout
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(finished_images(&ws), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(ws.state_dir().join("images/tmp"))
            .unwrap()
            .count(),
        0,
        "the work dir is left behind"
    );
    // Not recorded as applied: the next plan still wants to create it.
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.stdout);
    assert!(plan.stdout.contains("template.t"), "{}", plan.stdout);
}

fn mke2fs_running_on(path_part: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(path_part))
            .unwrap_or(false)
    })
}

#[test]
fn a_build_killed_half_way_leaves_no_finished_image_and_the_next_apply_builds_it() {
    let ws = Workspace::new();
    // Big enough that mke2fs runs for a while: 96 MiB of incompressible data.
    let mut t = tar::Builder::new(Vec::new());
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..24 {
        let data: Vec<u8> = (0..4 << 20)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        t.append_data(&mut h, format!("data/blob{i}"), &data[..])
            .unwrap();
    }
    std::fs::write(ws.path().join("big.tar"), t.into_inner().unwrap()).unwrap();
    ws.write_manifest(
        "[rootfs.big]\nurl = \"big.tar\"\n\n[template.t]\nrootfs = \"big\"\nsize = \"256MiB\"\nguest_agent = false\n",
    );
    ws.run(&["apply", "--yes", "--target", "rootfs.big"]).ok();
    let mut child = ws
        .command(&["apply", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = ws.state_dir().join("images/tmp");
    let start = std::time::Instant::now();
    // Kill fort while it is building: once the work dir or the image being written exists.
    loop {
        let building = std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some());
        if building {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the build never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "fort finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    child.kill().unwrap();
    child.wait().unwrap();
    // An orphaned mke2fs may still be writing its `.part` file: let it finish.
    let tmp_s = tmp.display().to_string();
    while mke2fs_running_on(&tmp_s) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(finished_images(&ws), Vec::<String>::new());
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.stdout);
    assert!(plan.stdout.contains("+ template.t"), "{}", plan.stdout);
    ws.run(&["apply", "--yes"]).ok();
    assert_eq!(finished_images(&ws).len(), 1);
    ws.run(&["plan", "--detailed-exitcode"]).code(0);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn overlays_and_the_agent_follow_the_rootfs_links_inside_the_image_only() {
    // A rootfs whose /sbin is an absolute link to a host directory: the agent (/sbin/init)
    // and an overlay below /sbin land inside the image (as the guest resolves the link), the
    // host directory stays empty.
    let ws = Workspace::new();
    let host_dir = ws.path().join("host-sbin");
    std::fs::create_dir(&host_dir).unwrap();
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    t.append_link(&mut h, "sbin", &host_dir).unwrap();
    std::fs::write(ws.path().join("linked.tar"), t.into_inner().unwrap()).unwrap();
    ws.write_manifest(
        "[rootfs.l]\nurl = \"linked.tar\"\n\n[template.t]\nrootfs = \"l\"\nsize = \"16MiB\"\n[template.t.files]\n\"/sbin/tool\" = \"x\"\n",
    );
    let out = ws
        .command(&["apply", "--yes"])
        .env("FORT_GUEST_AGENT", static_agent())
        .output()
        .unwrap();
    common::fort::Run::from(out).ok();
    assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 0);
    let show: serde_json::Value = serde_json::from_str(
        &ws.run(&["state", "show", "template.t", "--json"])
            .ok()
            .stdout,
    )
    .unwrap();
    let img = show["outputs"]["image"].as_str().unwrap().to_string();
    let inside = host_dir.strip_prefix("/").unwrap().display().to_string();
    let ls = Command::new("debugfs")
        .args(["-R", &format!("ls /{inside}")])
        .arg(&img)
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains("init") && ls.contains("tool"), "{ls}");
}

/// Two templates with the same inputs (as a `warm` one and a cold one of one rootfs are) share
/// one image key and are applied in the same wave: one builds the image, the other takes it,
/// instead of both unpacking into the same temporary directory.
#[test]
fn two_templates_with_the_same_inputs_share_one_image_built_once() {
    let agent = static_agent();
    let ws = Workspace::new();
    busybox_rootfs(&ws.path().join("rootfs.tar.gz"));
    ws.write_manifest(
        "[rootfs.bb]\nurl = \"rootfs.tar.gz\"\n\n\
         [template.cold]\nrootfs = \"bb\"\nsize = \"32MiB\"\n\n\
         [template.other]\nrootfs = \"bb\"\nsize = \"32MiB\"\n",
    );
    let apply = ws
        .command(&["apply", "--yes"])
        .env("FORT_GUEST_AGENT", &agent)
        .output()
        .unwrap();
    assert!(
        apply.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&apply.stdout),
        String::from_utf8_lossy(&apply.stderr)
    );
    let image_of = |addr: &str| {
        let show = ws
            .command(&["state", "show", addr, "--json"])
            .output()
            .unwrap();
        let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
        rec["outputs"]["image"].as_str().unwrap().to_string()
    };
    let (cold, other) = (image_of("template.cold"), image_of("template.other"));
    assert_eq!(cold, other);
    assert_eq!(finished_images(&ws).len(), 1, "{:?}", finished_images(&ws));
    assert_eq!(std::fs::metadata(&cold).unwrap().len(), 32 << 20);
    let motd = debugfs(&cold, "stat /sbin/init");
    assert!(motd.contains("Type: regular"), "{motd}");
    let plan = ws.command(&["plan"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("No changes"),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
}

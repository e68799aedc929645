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
    assert!(
        stdout.contains("template.agent: creating failed: the files need about 11MiB but the image size is 2MiB: raise `size` to at least 11MiB"),
        "{stdout}"
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

//! The warm build and clone drivers against the stand-in API server, with the helpers of the
//! suspend driver's tests: the exact requests in their order (pause, create with the chroot's
//! paths; load paused with the clone's TAP, resume), what is committed and left for the next
//! clone, the one memory file every clone maps, and the refusals that send nothing.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::*;
use crate::host::snapshot;
use crate::host::vmm::firecracker_snapshot::tests::{serve_with, NO_CONTENT};
use crate::host::vmm::firecracker_suspend::tests::{
    body, describe, golden, vm, writes_snapshot, Vm, V,
};

fn inputs() -> Value {
    json!({"template": "base", "template_key": "k1", "vmm": "firecracker", "vmm_version": V})
}

fn builder() -> Describe {
    Describe {
        vm: "template.base".into(),
        spec: inputs(),
        ..describe()
    }
}

/// The warm snapshot of a jailed builder, committed at `state/warm/KEY`, and the requests
/// the builder's Firecracker was sent.
async fn built(b: &Vm) -> (PathBuf, Meta, Vec<String>) {
    let (dest, tmp) = crate::host::warm::dirs(&b.state, "0123456789abcdef");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join(crate::host::warm::ROOT_FILE), b"builder's disk").unwrap();
    let server = serve_with(
        &b.sock,
        vec![Some(NO_CONTENT), Some(NO_CONTENT)],
        writes_snapshot(b.root.clone()),
    )
    .await;
    let meta = build(&b.run, &tmp, &dest, None, builder()).await.unwrap();
    (dest, meta, server.await.unwrap())
}

#[tokio::test]
async fn the_builder_is_paused_and_snapshotted_in_its_chroot_and_committed_shareable() {
    let b = vm(true);
    let (dest, meta, seen) = built(&b).await;
    let lines: Vec<&str> = seen.iter().map(|r| r.lines().next().unwrap()).collect();
    assert_eq!(
        lines,
        ["PATCH /vm HTTP/1.1", "PUT /snapshot/create HTTP/1.1"]
    );
    assert_eq!(body(&seen[0]), golden("firecracker-snapshot-pause.json"));
    assert_eq!(body(&seen[1]), golden("firecracker-warm-create.json"));
    // Committed whole, with the root image it was made on.
    let (_, tmp) = crate::host::warm::dirs(&b.state, "0123456789abcdef");
    assert!(!tmp.exists());
    assert_eq!(
        std::fs::read(dest.join(crate::host::warm::ROOT_FILE)).unwrap(),
        b"builder's disk"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("firecracker-version")).unwrap(),
        format!("{V}\n")
    );
    assert_eq!(snapshot::read_meta(&dest).unwrap(), meta);
    assert_eq!(
        (
            meta.vm.as_str(),
            meta.vmm.as_str(),
            meta.vmm_version.as_str()
        ),
        ("template.base", "firecracker", V)
    );
    assert_eq!(meta.spec, inputs());
    let names: Vec<&str> = meta.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["snapshot.bin", "mem.bin"]);
    use sha2::Digest;
    assert_eq!(
        meta.files[1].sha256,
        hex::encode(sha2::Sha256::digest(b"guest memory"))
    );
    // Read-only for every clone's uid, and fort's.
    for f in ["snapshot.bin", "mem.bin"] {
        let m = std::fs::metadata(dest.join(f)).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o444, "{f}");
        assert_eq!(m.uid(), rustix::process::geteuid().as_raw(), "{f}");
    }
    // The chroot keeps no name of them.
    let root = b.root.as_ref().unwrap();
    assert!(!root.join("mem.bin").exists() && !root.join("snapshot.bin").exists());
}

/// A stand-in that records every request and, at a load, the inode of the chroot's
/// `mem.bin` (the file the clone's Firecracker would map).
async fn clone_server(
    c: &Vm,
) -> (
    tokio::task::JoinHandle<Vec<String>>,
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<u64>>>,
) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let inodes = Arc::new(Mutex::new(Vec::new()));
    let (a, i, root) = (asked.clone(), inodes.clone(), c.root.clone().unwrap());
    let server = serve_with(
        &c.sock,
        vec![Some(NO_CONTENT), Some(NO_CONTENT)],
        move |r| {
            a.lock().unwrap().push(r.to_string());
            if r.starts_with("PUT /snapshot/load ") {
                i.lock()
                    .unwrap()
                    .push(std::fs::metadata(root.join("mem.bin")).unwrap().ino());
            }
        },
    )
    .await;
    (server, asked, inodes)
}

#[tokio::test]
async fn two_clones_load_paused_on_their_own_taps_map_one_memory_file_and_leave_it() {
    let b = vm(true);
    let (dest, meta, _) = built(&b).await;
    let mem_ino = std::fs::metadata(dest.join("mem.bin")).unwrap().ino();
    for (n, tap) in ["fort-w-1", "fort-w-2"].into_iter().enumerate() {
        let c = vm(true);
        let (server, _, inodes) = clone_server(&c).await;
        clone(&c.run, &dest, &meta, V, Some(tap)).await.unwrap();
        let seen = server.await.unwrap();
        let lines: Vec<&str> = seen.iter().map(|r| r.lines().next().unwrap()).collect();
        assert_eq!(lines, ["PUT /snapshot/load HTTP/1.1", "PATCH /vm HTTP/1.1"]);
        let mut want = golden("firecracker-warm-load.json");
        want["network_overrides"][0]["host_dev_name"] = json!(tap);
        assert_eq!(body(&seen[0]), want, "clone {n}");
        assert_eq!(body(&seen[1]), golden("firecracker-snapshot-resume.json"));
        // The chroot's link was the warm snapshot's own mem.bin, not a copy.
        assert_eq!(*inodes.lock().unwrap(), [mem_ino], "clone {n}");
        // The warm snapshot stays whole for the next clone; the chroot keeps no link.
        snapshot::verify_files(&dest, &meta).unwrap();
        assert!(dest.join(crate::host::warm::ROOT_FILE).is_file());
        assert!(!c.root.as_ref().unwrap().join("mem.bin").exists());
    }
}

#[tokio::test]
async fn a_clone_without_a_nic_is_loaded_without_overrides() {
    let b = vm(true);
    let (dest, meta, _) = built(&b).await;
    let c = vm(true);
    let (server, _, _) = clone_server(&c).await;
    clone(&c.run, &dest, &meta, V, None).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(body(&seen[0]), golden("firecracker-snapshot-load.json"));
}

#[tokio::test]
async fn another_build_a_flipped_byte_or_no_jail_sends_no_load() {
    let b = vm(true);
    let (dest, meta, _) = built(&b).await;
    let c = vm(true);
    let (server, asked, _) = clone_server(&c).await;
    let e = clone(
        &c.run,
        &dest,
        &meta,
        "Firecracker v1.13.0",
        Some("fort-w-1"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(e, format!("the snapshot in {} was made by {V}, not Firecracker v1.13.0: restore it with that Firecracker or discard it", dest.display()));
    let mem = dest.join("mem.bin");
    std::fs::set_permissions(&mem, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&mem, b"guest memorY").unwrap();
    let e = clone(&c.run, &dest, &meta, V, Some("fort-w-1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{} is corrupt: its sha256 is ", mem.display())),
        "{e}"
    );
    assert_eq!(*asked.lock().unwrap(), Vec::<String>::new());
    assert!(!c.root.as_ref().unwrap().join("mem.bin").exists());
    server.abort();

    // Unjailed: its snapshot would name the builder's drive and socket paths.
    let plain = vm(false);
    let (server, asked) = clone_server_plain(&plain).await;
    std::fs::write(&mem, b"guest memory").unwrap();
    let e = clone(&plain.run, &dest, &meta, V, Some("fort-w-1"))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("the Firecracker of {} does not run under the jailer: a warm snapshot reopens the drive and vsock paths it was made with, which only each VM's own chroot makes the clone's own", plain.run.display()));
    let (_, tmp) = crate::host::warm::dirs(&plain.state, "k");
    std::fs::create_dir_all(&tmp).unwrap();
    let e = build(
        &plain.run,
        &tmp,
        &tmp.with_extension("done"),
        None,
        builder(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("the Firecracker of "), "{e}");
    assert_eq!(*asked.lock().unwrap(), Vec::<String>::new());
    server.abort();
}

/// [`clone_server`] for a run dir without a chroot: it records, nothing more.
async fn clone_server_plain(
    c: &Vm,
) -> (
    tokio::task::JoinHandle<Vec<String>>,
    Arc<Mutex<Vec<String>>>,
) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let a = asked.clone();
    let server = serve_with(&c.sock, vec![Some(NO_CONTENT)], move |r| {
        a.lock().unwrap().push(r.to_string())
    })
    .await;
    (server, asked)
}

//! The suspend and resume drivers against the stand-in API server, plain and jailed: the
//! exact requests in their order, what is left on disk (committed files, version,
//! `snapshot.json`) and what is not (a failed suspend's files, the jail's links), and a
//! resume that refuses a bad snapshot without asking Firecracker to load it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::*;
use crate::host::vmm::firecracker_snapshot::tests::{serve_with, NO_CONTENT};

pub(crate) const V: &str = "Firecracker v1.12.0";

/// A VM's run dir, plain or with a jail as `jailer::prepare` leaves it (`api.sock` a link into
/// the chroot); the socket the stand-in listens on; the chroot.
pub(crate) struct Vm {
    _t: tempfile::TempDir,
    pub(crate) state: PathBuf,
    pub(crate) run: PathBuf,
    pub(crate) sock: PathBuf,
    pub(crate) root: Option<PathBuf>,
}

pub(crate) fn vm(jailed: bool) -> Vm {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().to_path_buf();
    let run = state.join("run/a");
    std::fs::create_dir_all(&run).unwrap();
    let (sock, root) = if jailed {
        let root = run.join("jail/firecracker/vm-a/root");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink("jail/firecracker/vm-a/root/api.sock", run.join("api.sock"))
            .unwrap();
        (root.join("api.sock"), Some(root))
    } else {
        (run.join("api.sock"), None)
    };
    Vm {
        _t: t,
        state,
        run,
        sock,
        root,
    }
}

pub(crate) fn body(req: &str) -> Value {
    serde_json::from_str(req.split_once("\r\n\r\n").unwrap().1).unwrap()
}

pub(crate) fn golden(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(name);
    serde_json::from_str::<Value>(&std::fs::read_to_string(p).unwrap()).unwrap()["body"].clone()
}

/// Firecracker's side of a create: it writes the files at the paths it was given (inside its
/// chroot when jailed).
pub(crate) fn writes_snapshot(root: Option<PathBuf>) -> impl Fn(&str) + Send + 'static {
    move |req: &str| {
        if !req.starts_with("PUT /snapshot/create ") {
            return;
        }
        let b = body(req);
        let at = |k: &str| {
            let p = PathBuf::from(b[k].as_str().unwrap());
            match &root {
                Some(r) => r.join(p.strip_prefix("/").unwrap()),
                None => p,
            }
        };
        // Through the pre-created file (its other name is fort's), as Firecracker truncates
        // and overwrites it.
        std::fs::write(at("snapshot_path"), b"microvm state").unwrap();
        std::fs::write(at("mem_file_path"), b"guest memory").unwrap();
    }
}

pub(crate) fn describe() -> Describe {
    Describe {
        vm: "a".into(),
        version: format!("{V}\n"),
        spec: json!({"memory": 268435456, "vcpus": 1}),
        shared: false,
    }
}

async fn suspended(vm: &Vm) -> (PathBuf, Meta, Vec<String>) {
    let (dest, tmp) = snapshot::suspend_dirs(&vm.state, "a");
    std::fs::create_dir_all(&tmp).unwrap();
    let server = serve_with(
        &vm.sock,
        vec![Some(NO_CONTENT), Some(NO_CONTENT)],
        writes_snapshot(vm.root.clone()),
    )
    .await;
    let meta = suspend(&vm.run, &tmp, &dest, None, describe())
        .await
        .unwrap();
    (dest, meta, server.await.unwrap())
}

#[tokio::test]
async fn suspend_pauses_creates_and_commits_the_files_the_version_and_their_sums() {
    for jailed in [false, true] {
        let vm = vm(jailed);
        let (dest, meta, seen) = suspended(&vm).await;
        let (_, tmp) = snapshot::suspend_dirs(&vm.state, "a");
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(body(&seen[0]), json!({"state": "Paused"}));
        assert!(seen[0].starts_with("PATCH /vm HTTP/1.1\r\n"), "{}", seen[0]);
        assert!(seen[1].starts_with("PUT /snapshot/create HTTP/1.1\r\n"));
        // The paths as Firecracker sees them: the documented chroot ones when jailed, the
        // temporary directory's otherwise.
        let want = if jailed {
            golden("firecracker-snapshot-create.json")
        } else {
            json!({
                "snapshot_type": "Full",
                "snapshot_path": tmp.join("snapshot.bin"),
                "mem_file_path": tmp.join("mem.bin"),
            })
        };
        assert_eq!(body(&seen[1]), want, "jailed: {jailed}");
        assert!(!tmp.exists());
        assert_eq!(
            std::fs::read(dest.join("mem.bin")).unwrap(),
            b"guest memory"
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("firecracker-version")).unwrap(),
            format!("{V}\n")
        );
        use sha2::Digest;
        let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
        let on_disk = snapshot::read_meta(&dest).unwrap();
        assert_eq!(on_disk, meta);
        assert_eq!(
            (
                meta.vm.as_str(),
                meta.vmm.as_str(),
                meta.vmm_version.as_str()
            ),
            ("a", "firecracker", V)
        );
        assert_eq!(meta.state_bytes, 25);
        assert_eq!(meta.state_sha256, sha(b"microvm stateguest memory"));
        let files: Vec<(&str, u64, String)> = meta
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.bytes, f.sha256.clone()))
            .collect();
        assert_eq!(
            files,
            [
                ("snapshot.bin", 13, sha(b"microvm state")),
                ("mem.bin", 12, sha(b"guest memory"))
            ]
        );
        if let Some(root) = &vm.root {
            assert!(!root.join("snapshot.bin").exists());
            assert!(!root.join("mem.bin").exists());
        }
    }
}

#[tokio::test]
async fn a_failed_create_resumes_the_vm_and_leaves_no_files() {
    for jailed in [false, true] {
        let vm = vm(jailed);
        let (dest, tmp) = snapshot::suspend_dirs(&vm.state, "a");
        std::fs::create_dir_all(&tmp).unwrap();
        let refused = "HTTP/1.1 400 Bad Request\r\nContent-Length: 33\r\n\r\n{\"fault_message\":\"No space left\"}";
        let server = serve_with(
            &vm.sock,
            vec![Some(NO_CONTENT), Some(refused), Some(NO_CONTENT)],
            |_| {},
        )
        .await;
        let err = suspend(&vm.run, &tmp, &dest, None, describe())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Firecracker refused PUT /snapshot/create: No space left (HTTP 400)"
        );
        let seen = server.await.unwrap();
        let lines: Vec<&str> = seen.iter().map(|r| r.lines().next().unwrap()).collect();
        assert_eq!(
            lines,
            [
                "PATCH /vm HTTP/1.1",
                "PUT /snapshot/create HTTP/1.1",
                "PATCH /vm HTTP/1.1"
            ]
        );
        assert_eq!(body(&seen[2]), json!({"state": "Resumed"}));
        assert!(!tmp.exists() && !dest.exists(), "jailed: {jailed}");
        if let Some(root) = &vm.root {
            assert!(!root.join("mem.bin").exists());
        }
    }
}

#[tokio::test]
async fn a_snapshot_that_cannot_be_committed_resumes_the_vm() {
    let vm = vm(false);
    let (dest, tmp) = snapshot::suspend_dirs(&vm.state, "a");
    std::fs::create_dir_all(&tmp).unwrap();
    // Something that is not a snapshot directory where the snapshot goes.
    std::fs::write(&dest, b"").unwrap();
    let server = serve_with(
        &vm.sock,
        vec![Some(NO_CONTENT), Some(NO_CONTENT), Some(NO_CONTENT)],
        writes_snapshot(None),
    )
    .await;
    let err = suspend(&vm.run, &tmp, &dest, None, describe())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot remove {}", dest.display())),
        "{err}"
    );
    let seen = server.await.unwrap();
    assert_eq!(body(&seen[2]), json!({"state": "Resumed"}));
    assert!(!tmp.exists());
}

#[tokio::test]
async fn resume_loads_a_whole_snapshot_and_refuses_a_bad_one_without_loading() {
    for jailed in [false, true] {
        let vm = vm(jailed);
        let (dest, meta, _) = suspended(&vm).await;
        std::fs::remove_file(&vm.sock).unwrap();
        // Everything Firecracker is asked, whether it answers or not.
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let a = asked.clone();
        let server = serve_with(&vm.sock, vec![Some(NO_CONTENT)], move |r| {
            a.lock().unwrap().push(r.to_string())
        })
        .await;
        let (mem, state) = (dest.join("mem.bin"), dest.join("snapshot.bin"));
        let refused = |e: SnapshotError| e.to_string();
        // Another Firecracker.
        let e = refused(
            restore(&vm.run, &dest, &meta, "Firecracker v1.13.0", &[])
                .await
                .unwrap_err(),
        );
        assert_eq!(e, format!("the snapshot in {} was made by {V}, not Firecracker v1.13.0: restore it with that Firecracker or discard it", dest.display()));
        // A flipped byte in the memory.
        std::fs::write(&mem, b"guest memorY").unwrap();
        let e = refused(restore(&vm.run, &dest, &meta, V, &[]).await.unwrap_err());
        let want = format!("{} is corrupt: its sha256 is ", mem.display());
        assert!(e.starts_with(&want), "{e}");
        assert!(e.ends_with(&format!("the snapshot recorded {}", meta.files[1].sha256)));
        std::fs::write(&mem, b"guest memory").unwrap();
        // A truncated state file.
        std::fs::write(&state, b"microvm").unwrap();
        let e = refused(restore(&vm.run, &dest, &meta, V, &[]).await.unwrap_err());
        assert_eq!(
            e,
            format!(
                "{} is truncated: it has 7 bytes, the snapshot recorded 13",
                state.display()
            )
        );
        assert_eq!(
            *asked.lock().unwrap(),
            Vec::<String>::new(),
            "jailed: {jailed}"
        );
        if let Some(root) = &vm.root {
            assert!(!root.join("snapshot.bin").exists());
        }

        // Whole again: loaded, paused (the caller marks the snapshot used, then resumes).
        std::fs::write(&state, b"microvm state").unwrap();
        restore(&vm.run, &dest, &meta, V, &[]).await.unwrap();
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].starts_with("PUT /snapshot/load HTTP/1.1\r\n"));
        let want = if jailed {
            golden("firecracker-snapshot-load.json")
        } else {
            json!({
                "snapshot_path": state,
                "mem_backend": {"backend_type": "File", "backend_path": mem},
                "resume_vm": false,
            })
        };
        assert_eq!(body(&seen[0]), want);
        if let Some(root) = &vm.root {
            // The loaded VM holds mem.bin mapped; the chroot keeps no name of it.
            assert!(!root.join("mem.bin").exists());
        }
    }
}

#[test]
fn the_jail_is_found_by_the_api_socket_link() {
    let plain = vm(false);
    assert_eq!(jail_root(&plain.run), None);
    let jailed = vm(true);
    assert_eq!(
        jail_root(&jailed.run),
        Some(jailed.run.join("jail/firecracker/vm-a/root"))
    );
}

//! Warm-template snapshots on disk: `state_dir/warm/KEY/` holds one booted VM of a template
//! — its state (QEMU: the stream `vmstate`; Firecracker: `snapshot.bin`, `mem.bin` and
//! `firecracker-version`), its root drive as the state expects it (`root.img`) and
//! `snapshot.json` (what it was made of: the template's image, the kernel, the VM's shape,
//! the VMM and its version). KEY is a hash of that, so a changed template or shape is another
//! snapshot. A snapshot is built in `KEY.tmp/` and committed by one rename; one build runs at
//! a time per KEY (`KEY.lock`, an flock that dies with its holder).

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::snapshot::{self, Meta, SnapshotError, STATE_FILE};

/// The builder's root drive, as it was when its memory was saved.
pub const ROOT_FILE: &str = "root.img";

/// `state_dir/warm`.
pub fn base(state_dir: &Path) -> PathBuf {
    state_dir.join("warm")
}

/// The snapshot's key: 16 hex digits of the sha256 of what it is made of.
pub fn key(inputs: &Value) -> String {
    let h = Sha256::digest(inputs.to_string().as_bytes());
    hex::encode(h)[..16].to_string()
}

/// The snapshot directory of `key` and the temporary one it is built in.
pub fn dirs(state_dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    let b = base(state_dir);
    (b.join(key), b.join(format!("{key}.tmp")))
}

/// Held while a snapshot is looked up or built; released when dropped (or its holder dies).
pub struct Lock {
    _file: std::fs::File,
}

/// Wait for `key`'s lock (blocking).
pub fn lock(state_dir: &Path, key: &str) -> Result<Lock, SnapshotError> {
    try_lock(state_dir, key, true)?
        .ok_or_else(|| SnapshotError::Failed(format!("cannot lock warm snapshot {key}")))
}

fn try_lock(state_dir: &Path, key: &str, wait: bool) -> Result<Option<Lock>, SnapshotError> {
    let b = base(state_dir);
    std::fs::create_dir_all(&b).map_err(|e| SnapshotError::io("cannot create", &b, e))?;
    let path = b.join(format!("{key}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SnapshotError::io("cannot open", &path, e))?;
    let mode = if wait {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    match rustix::fs::flock(&file, mode) {
        Ok(()) => Ok(Some(Lock { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) if !wait => Ok(None),
        Err(e) => Err(SnapshotError::io("cannot lock", &path, e.into())),
    }
}

/// The state files of a warm snapshot made by `vmm` ("qemu", "firecracker").
pub fn state_files(vmm: &str) -> &'static [&'static str] {
    match vmm {
        "qemu" => &[STATE_FILE],
        _ => &crate::host::vmm::firecracker_suspend::STATE_FILES,
    }
}

/// The committed snapshot of `key`, if it is whole and was made of `inputs` by this `vmm`
/// build (its first `--version` line).
pub fn usable(dest: &Path, inputs: &Value, vmm: &str, vmm_version: &str) -> Option<Meta> {
    let meta = snapshot::read_meta(dest).ok()?;
    let whole =
        dest.join(ROOT_FILE).is_file() && state_files(vmm).iter().all(|f| dest.join(f).is_file());
    let same = meta.spec == *inputs && meta.vmm == vmm && meta.vmm_version == vmm_version;
    (whole && same).then_some(meta)
}

/// Remove what no build holds: unfinished builds (`*.tmp` of an unlocked key, left by a
/// killed fort), and the snapshots of `template` made of an image it no longer has
/// (`template_key` differs from `current`). Best effort: what cannot go stays for next time.
pub fn collect_garbage(state_dir: &Path, template: &str, current: &str) {
    let b = base(state_dir);
    let Ok(entries) = std::fs::read_dir(&b) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        if let Some(key) = name.strip_suffix(".tmp") {
            if let Ok(Some(_l)) = try_lock(state_dir, key, false) {
                let _ = snapshot::remove(&path);
            }
            continue;
        }
        if name.ends_with(".lock") {
            continue;
        }
        let Ok(meta) = snapshot::read_meta(&path) else {
            continue;
        };
        let ours = meta.spec.get("template").and_then(Value::as_str) == Some(template);
        let stale = meta.spec.get("template_key").and_then(Value::as_str) != Some(current);
        if ours && stale {
            if let Ok(Some(_l)) = try_lock(state_dir, &name, false) {
                let _ = snapshot::remove(&path);
                let _ = std::fs::remove_file(b.join(format!("{name}.lock")));
            }
        }
    }
}

/// Remove every warm snapshot of `template` (it was destroyed).
pub fn remove_template(state_dir: &Path, template: &str) {
    collect_garbage(state_dir, template, "");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn make(state: &Path, inputs: &Value) -> PathBuf {
        let (dest, tmp) = dirs(state, &key(inputs));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join(STATE_FILE), "state").unwrap();
        std::fs::write(tmp.join(ROOT_FILE), "root").unwrap();
        let meta = Meta::new(
            "template.t",
            "qemu",
            "QEMU 7.2",
            inputs.clone(),
            5,
            "x".into(),
        );
        snapshot::commit(&tmp, &dest, &meta).unwrap();
        dest
    }

    #[test]
    fn a_snapshot_is_usable_only_for_what_it_was_made_of() {
        let d = tempfile::tempdir().unwrap();
        let inputs = json!({"template": "t", "template_key": "k1", "memory": 1});
        let dest = make(d.path(), &inputs);
        assert!(usable(&dest, &inputs, "qemu", "QEMU 7.2").is_some());
        assert!(usable(&dest, &inputs, "qemu", "QEMU 8.0").is_none());
        // Another VMM's, even were its inputs and version line the same.
        assert!(usable(&dest, &inputs, "firecracker", "QEMU 7.2").is_none());
        let other = json!({"template": "t", "template_key": "k1", "memory": 2});
        assert!(usable(&dest, &other, "qemu", "QEMU 7.2").is_none());
        assert_ne!(key(&inputs), key(&other));
        std::fs::remove_file(dest.join(ROOT_FILE)).unwrap();
        assert!(usable(&dest, &inputs, "qemu", "QEMU 7.2").is_none());
    }

    #[test]
    fn a_firecracker_snapshot_is_whole_with_both_state_files() {
        let d = tempfile::tempdir().unwrap();
        let inputs = json!({"template": "t", "vmm": "firecracker"});
        let (dest, tmp) = dirs(d.path(), &key(&inputs));
        std::fs::create_dir_all(&tmp).unwrap();
        for f in ["snapshot.bin", "mem.bin", ROOT_FILE] {
            std::fs::write(tmp.join(f), f).unwrap();
        }
        let meta = Meta::new(
            "template.t",
            "firecracker",
            "Firecracker v1.12.0",
            inputs.clone(),
            1,
            "x".into(),
        );
        snapshot::commit(&tmp, &dest, &meta).unwrap();
        assert!(usable(&dest, &inputs, "firecracker", "Firecracker v1.12.0").is_some());
        assert!(usable(&dest, &inputs, "qemu", "Firecracker v1.12.0").is_none());
        std::fs::remove_file(dest.join("mem.bin")).unwrap();
        assert!(usable(&dest, &inputs, "firecracker", "Firecracker v1.12.0").is_none());
    }

    #[test]
    fn garbage_is_unfinished_builds_and_snapshots_of_an_old_image() {
        let d = tempfile::tempdir().unwrap();
        let old = make(d.path(), &json!({"template": "t", "template_key": "k1"}));
        let new = make(d.path(), &json!({"template": "t", "template_key": "k2"}));
        let other = make(d.path(), &json!({"template": "u", "template_key": "k1"}));
        let (_, tmp) = dirs(d.path(), "abc");
        std::fs::create_dir_all(&tmp).unwrap();
        let (_, held) = dirs(d.path(), "def");
        std::fs::create_dir_all(&held).unwrap();
        let _building = lock(d.path(), "def").unwrap();
        collect_garbage(d.path(), "t", "k2");
        assert!(!old.exists(), "the old image's snapshot goes");
        assert!(new.exists() && other.exists());
        assert!(!tmp.exists(), "an unfinished build nobody holds goes");
        assert!(held.exists(), "a build in progress stays");
        remove_template(d.path(), "t");
        assert!(!new.exists() && other.exists());
    }
}

//! Snapshot files on disk: `state_dir/snapshots/VM/suspend/` holds the VMM's state (QEMU's
//! stream `vmstate`; Firecracker's `snapshot.bin` and `mem.bin`) and `snapshot.json` (what it
//! was made of, its size and sha256). A snapshot is
//! written into `.suspend.tmp/`, fsynced and renamed into place, so a directory named
//! `suspend` is always whole; restoring checks its checksum and that it still matches the
//! VM's spec and VMM version first.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const STATE_FILE: &str = "vmstate";
pub const META_FILE: &str = "snapshot.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Qmp(#[from] crate::host::vmm::qmp::QmpError),
    #[error(transparent)]
    Vmm(#[from] crate::host::vmm::VmmError),
    #[error("the disk is full: writing the snapshot needs up to {needed} (the guest's memory), {written} were written and {free} more were free on {}", path.display())]
    DiskFull {
        needed: String,
        written: String,
        free: String,
        path: PathBuf,
    },
    #[error("{0}")]
    Failed(String),
}

impl SnapshotError {
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a snapshot was made of, written next to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub vm: String,
    pub created_unix: u64,
    pub vmm: String,
    /// The VMM's `--version` first line: a stream is only loaded by the same build.
    pub vmm_version: String,
    /// The VM's spec (without state, restart and ports) the snapshot was made from.
    pub spec: Value,
    /// The state's size: the stream, or the sum of `files`.
    pub state_bytes: u64,
    /// The sha256 of the state: the stream, or `files` read one after the other in their
    /// order (Firecracker: `cat snapshot.bin mem.bin | sha256sum`).
    pub state_sha256: String,
    /// A state of several files (Firecracker's), each with its size and sha256, so a bad
    /// one is named. Empty for a single stream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSum>,
}

/// One file of a snapshot's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// The file's name in the snapshot directory.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

impl Meta {
    pub fn new(
        vm: &str,
        vmm: &str,
        vmm_version: &str,
        spec: Value,
        bytes: u64,
        sha: String,
    ) -> Meta {
        Meta {
            format: FORMAT,
            vm: vm.to_string(),
            created_unix: now_unix(),
            vmm: vmm.to_string(),
            vmm_version: vmm_version.to_string(),
            spec,
            state_bytes: bytes,
            state_sha256: sha,
            files: Vec::new(),
        }
    }

    /// Why this snapshot cannot be restored into a VM that wants `spec` under `vmm_version`
    /// (`None`: it can). Names the fields that changed.
    pub fn mismatch(&self, spec: &Value, vmm: &str, vmm_version: &str) -> Option<String> {
        if self.format != FORMAT {
            return Some(format!(
                "it is in snapshot format {}, this fort reads {FORMAT}",
                self.format
            ));
        }
        if self.vmm != vmm {
            return Some(format!(
                "it was made by {}, the VM now runs under {vmm}",
                self.vmm
            ));
        }
        if self.vmm_version != vmm_version {
            return Some(format!(
                "it was made by {} and this host has {vmm_version}",
                self.vmm_version
            ));
        }
        if &self.spec != spec {
            let (a, b) = (self.spec.as_object(), spec.as_object());
            let mut fields: Vec<&str> = Vec::new();
            if let (Some(a), Some(b)) = (a, b) {
                for k in a.keys().chain(b.keys()) {
                    if a.get(k) != b.get(k) && !fields.contains(&k.as_str()) {
                        fields.push(k);
                    }
                }
            }
            fields.sort_unstable();
            return Some(format!(
                "the VM's {} changed since it was made",
                fields.join(", ")
            ));
        }
        None
    }

    /// "92MiB, 3m old", for the plan and `fort status`.
    pub fn summary(&self) -> String {
        let age = now_unix().saturating_sub(self.created_unix);
        format!(
            "{}, {} old",
            crate::manifest::units::human_size(self.state_bytes),
            humantime::format_duration(std::time::Duration::from_secs(age))
        )
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `state_dir/snapshots/VM/`.
pub fn vm_dir(state_dir: &Path, vm: &str) -> PathBuf {
    state_dir.join("snapshots").join(vm)
}

/// Where a suspended VM's snapshot lives, and where it is written first.
pub fn suspend_dirs(state_dir: &Path, vm: &str) -> (PathBuf, PathBuf) {
    let d = vm_dir(state_dir, vm);
    (d.join("suspend"), d.join(".suspend.tmp"))
}

/// Read a committed snapshot's description.
pub fn read_meta(dir: &Path) -> Result<Meta, SnapshotError> {
    let p = dir.join(META_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| SnapshotError::io("cannot read", &p, e))?;
    serde_json::from_str(&text).map_err(|e| {
        SnapshotError::Failed(format!(
            "{} is not a snapshot description: {e}",
            p.display()
        ))
    })
}

fn fsync(path: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| SnapshotError::io("cannot fsync", path, e))
}

/// Make `tmp` (holding the state stream) the snapshot at `dest`: its description written,
/// everything fsynced, then one rename — a crash leaves either the old `dest` or the new one,
/// never a partial one.
pub fn commit(tmp: &Path, dest: &Path, meta: &Meta) -> Result<(), SnapshotError> {
    let mp = tmp.join(META_FILE);
    let mut f =
        std::fs::File::create(&mp).map_err(|e| SnapshotError::io("cannot create", &mp, e))?;
    let text = serde_json::to_string_pretty(meta).unwrap_or_default();
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| SnapshotError::io("cannot write", &mp, e))?;
    // The stream and whatever else the snapshot holds (a warm template's root image).
    let entries = std::fs::read_dir(tmp).map_err(|e| SnapshotError::io("cannot read", tmp, e))?;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            fsync(&e.path())?;
        }
    }
    fsync(tmp)?;
    remove(dest)?;
    std::fs::rename(tmp, dest)
        .map_err(|e| SnapshotError::io("cannot rename into place", dest, e))?;
    if let Some(parent) = dest.parent() {
        fsync(parent)?;
    }
    Ok(())
}

/// Hash the state files `names` of the snapshot in `dir`, in that order: each one's size and
/// sha256, and the sha256 of all of them read one after the other.
pub fn hash_files(dir: &Path, names: &[&str]) -> Result<(Vec<FileSum>, String), SnapshotError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut all = Sha256::new();
    let mut sums = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for name in names {
        let p = dir.join(name);
        let mut f = std::fs::File::open(&p).map_err(|e| SnapshotError::io("cannot open", &p, e))?;
        let (mut one, mut bytes) = (Sha256::new(), 0u64);
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| SnapshotError::io("cannot read", &p, e))?;
            if n == 0 {
                break;
            }
            one.update(&buf[..n]);
            all.update(&buf[..n]);
            bytes += n as u64;
        }
        sums.push(FileSum {
            name: (*name).to_string(),
            bytes,
            sha256: hex::encode(one.finalize()),
        });
    }
    Ok((sums, hex::encode(all.finalize())))
}

/// Check the state files of the snapshot in `dir` against what `meta` recorded of them; an
/// error names the file. Sizes are compared first, so a truncated file is found without
/// reading the others.
pub fn verify_files(dir: &Path, meta: &Meta) -> Result<(), SnapshotError> {
    if meta.files.is_empty() {
        return Err(SnapshotError::Failed(format!(
            "{} records no state files",
            dir.join(META_FILE).display()
        )));
    }
    for f in &meta.files {
        let p = dir.join(&f.name);
        let len = std::fs::metadata(&p)
            .map_err(|e| SnapshotError::io("cannot read", &p, e))?
            .len();
        if len != f.bytes {
            let what = if len < f.bytes {
                "is truncated: it has"
            } else {
                "has"
            };
            return Err(SnapshotError::Failed(format!(
                "{} {what} {len} bytes, the snapshot recorded {}",
                p.display(),
                f.bytes
            )));
        }
    }
    let names: Vec<&str> = meta.files.iter().map(|f| f.name.as_str()).collect();
    let (sums, all) = hash_files(dir, &names)?;
    for (got, want) in sums.iter().zip(&meta.files) {
        if got.sha256 != want.sha256 {
            return Err(SnapshotError::Failed(format!(
                "{} is corrupt: its sha256 is {}, the snapshot recorded {}",
                dir.join(&want.name).display(),
                got.sha256,
                want.sha256
            )));
        }
    }
    if all != meta.state_sha256 {
        return Err(SnapshotError::Failed(format!(
            "{} is inconsistent: the sha256 of its state files ({}) is {all}, it recorded {}",
            dir.join(META_FILE).display(),
            names.join(", "),
            meta.state_sha256
        )));
    }
    Ok(())
}

/// Remove a snapshot directory (absent is fine).
pub fn remove(dir: &Path) -> Result<(), SnapshotError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(SnapshotError::io("cannot remove", dir, e))
        }
        _ => Ok(()),
    }
}

/// Free bytes on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    rustix::fs::statvfs(path)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn meta() -> Meta {
        Meta::new(
            "a",
            "qemu",
            "QEMU emulator version 7.2.22",
            json!({"memory": 268435456, "vcpus": 1, "kernel": "k"}),
            96 << 20,
            "ab".into(),
        )
    }

    #[test]
    fn mismatches_name_what_changed() {
        let m = meta();
        let v = "QEMU emulator version 7.2.22";
        assert_eq!(m.mismatch(&m.spec, "qemu", v), None);
        let spec = json!({"memory": 536870912, "vcpus": 2, "kernel": "k"});
        assert_eq!(
            m.mismatch(&spec, "qemu", v).unwrap(),
            "the VM's memory, vcpus changed since it was made"
        );
        assert_eq!(
            m.mismatch(&m.spec, "qemu", "QEMU emulator version 8.2.0").unwrap(),
            "it was made by QEMU emulator version 7.2.22 and this host has QEMU emulator version 8.2.0"
        );
        assert_eq!(
            m.mismatch(&m.spec, "firecracker", v).unwrap(),
            "it was made by qemu, the VM now runs under firecracker"
        );
        let old = Meta {
            format: 0,
            ..m.clone()
        };
        assert_eq!(
            old.mismatch(&m.spec, "qemu", v).unwrap(),
            "it is in snapshot format 0, this fort reads 1"
        );
    }

    #[test]
    fn commit_replaces_the_old_snapshot_whole() {
        let d = tempfile::tempdir().unwrap();
        let (dest, tmp) = suspend_dirs(d.path(), "a");
        for content in ["one", "two"] {
            std::fs::create_dir_all(&tmp).unwrap();
            std::fs::write(tmp.join(STATE_FILE), content).unwrap();
            commit(&tmp, &dest, &meta()).unwrap();
            assert!(!tmp.exists());
            assert_eq!(
                std::fs::read_to_string(dest.join(STATE_FILE)).unwrap(),
                content
            );
            assert_eq!(read_meta(&dest).unwrap(), meta_with_time(&dest));
        }
    }

    #[test]
    fn state_files_are_checked_one_by_one_and_a_bad_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        std::fs::write(dir.join("snapshot.bin"), b"state").unwrap();
        std::fs::write(dir.join("mem.bin"), b"memory!").unwrap();
        let (files, all) = hash_files(dir, &["snapshot.bin", "mem.bin"]).unwrap();
        // The whole state's sha256 is that of the files read in order.
        use sha2::Digest;
        assert_eq!(all, hex::encode(sha2::Sha256::digest(b"statememory!")));
        assert_eq!((files[1].name.as_str(), files[1].bytes), ("mem.bin", 7));
        let mut m = meta();
        m.state_bytes = 12;
        m.state_sha256 = all.clone();
        m.files = files.clone();
        verify_files(dir, &m).unwrap();
        let (mem, sum) = (dir.join("mem.bin"), files[1].sha256.clone());
        let p = mem.display();
        let bad = |bytes: &[u8]| {
            std::fs::write(&mem, bytes).unwrap();
            verify_files(dir, &m).unwrap_err().to_string()
        };
        let flipped = hex::encode(sha2::Sha256::digest(b"memorY!"));
        for (bytes, want) in [
            (
                &b"mem"[..],
                format!("{p} is truncated: it has 3 bytes, the snapshot recorded 7"),
            ),
            (
                &b"memory!!"[..],
                format!("{p} has 8 bytes, the snapshot recorded 7"),
            ),
            (
                &b"memorY!"[..],
                format!("{p} is corrupt: its sha256 is {flipped}, the snapshot recorded {sum}"),
            ),
        ] {
            assert_eq!(bad(bytes), want);
        }
        std::fs::write(&mem, b"memory!").unwrap();
        m.state_sha256 = "ab".into();
        assert_eq!(
            verify_files(dir, &m).unwrap_err().to_string(),
            format!(
                "{} is inconsistent: the sha256 of its state files (snapshot.bin, mem.bin) is {all}, it recorded ab",
                dir.join(META_FILE).display()
            )
        );
        m.files.clear();
        assert_eq!(
            verify_files(dir, &m).unwrap_err().to_string(),
            format!("{} records no state files", dir.join(META_FILE).display())
        );
    }

    fn meta_with_time(dest: &Path) -> Meta {
        let created = read_meta(dest).unwrap().created_unix;
        Meta {
            created_unix: created,
            ..meta()
        }
    }
}

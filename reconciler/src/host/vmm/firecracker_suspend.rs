//! The suspend and resume drivers for a Firecracker VM, on top of `firecracker_snapshot`'s
//! requests and files: a suspend pre-creates the files, links them into the jail when there
//! is one, pauses and creates a full snapshot, records the binary's version and a
//! `snapshot.json` with a sha256 per file, and commits the directory whole; a resume checks
//! the version and every file's size and sha256 **before** it asks Firecracker to load
//! anything, then loads it paused (`resume_vm: false`). Each takes the VM's run dir, so the tests
//! drive them against a stand-in API server.
//!
//! The snapshot's state is two files, hashed in a fixed order — `snapshot.bin`, then
//! `mem.bin` — into `Meta::state_sha256` (`cat snapshot.bin mem.bin | sha256sum`), with each
//! file's own size and sha256 in `Meta::files`, so a bad file is named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::firecracker_snapshot::{self as fc, SnapshotFiles, MEM_FILE, STATE_FILE};
use super::{RunDir, VmmError};
use crate::host::snapshot::{self, Meta, SnapshotError};

/// Pausing, resuming and reading the state answer at once.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Creating writes all of the guest's memory; loading maps it (and reads the state).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The state files in the order they are hashed.
pub const STATE_FILES: [&str; 2] = [STATE_FILE, MEM_FILE];

/// The chroot of the Firecracker serving `run_dir` when it runs under the jailer: a jailed
/// boot leaves `RUN/api.sock` a symlink into it (`jailer::prepare`), a plain one a socket
/// (`RunDir::prepare` removes the previous one first), so the run dir says which it is.
pub fn jail_root(run_dir: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(RunDir(run_dir).api()).ok()?;
    Some(run_dir.join(target).parent()?.to_path_buf())
}

/// Remove the links `fc::link_into_jail` made (absent is fine): the chroot must not keep a
/// snapshot's disk space once fort is done with it.
pub fn unlink_from_jail(jail_root: &Path) -> Result<(), VmmError> {
    for f in STATE_FILES {
        let p = jail_root.join(f);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(VmmError::io("cannot remove", &p, e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// What the snapshot is of, for its `snapshot.json`.
#[derive(Debug, Clone)]
pub struct Describe {
    pub vm: String,
    /// `firecracker --version`'s first line of the binary that runs the VM.
    pub version: String,
    /// The VM's restart-relevant spec (a warm snapshot: what it is made of).
    pub spec: Value,
    /// The state files are to be loaded by other Firecrackers, each as its own uid (warm
    /// clones): before the commit they become fort's (root's, as the jailer needs), mode 0444 — read-only for everyone, as
    /// Firecracker opens them to load (and the memory file must not change under a clone).
    pub shared: bool,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SnapshotError::Failed(format!("a snapshot task failed: {e}")))?
}

/// Suspend the running Firecracker of `run_dir` into `tmp` (an empty directory) and commit it
/// as the snapshot at `dest`: files pre-created (owned by `owner`, the VM's uid and gid),
/// linked into the jail if there is one, `PATCH /vm` Paused, `PUT /snapshot/create` (Full),
/// then version, hashes and `snapshot.json`, fsync and one rename. Returns the committed
/// description; the VM is left paused for the caller to end. On any error the VM is resumed,
/// so it runs on as before, and nothing of the snapshot is left in `tmp` or the jail.
pub async fn suspend(
    run_dir: &Path,
    tmp: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    what: Describe,
) -> Result<Meta, SnapshotError> {
    let api = RunDir(run_dir).api();
    let jail = jail_root(run_dir);
    let made = write(&api, tmp, dest, owner, jail.as_deref(), what).await;
    if let Some(root) = &jail {
        // Firecracker is done with the files either way; their other name is in `dest`.
        let _ = unlink_from_jail(root);
    }
    if made.is_err() {
        let _ = snapshot::remove(tmp);
    }
    made
}

async fn write(
    api: &Path,
    tmp: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    jail: Option<&Path>,
    what: Describe,
) -> Result<Meta, SnapshotError> {
    let files = SnapshotFiles::in_dir(tmp);
    fc::precreate(&files, owner)?;
    let seen = match jail {
        Some(root) => fc::link_into_jail(root, &files)?,
        None => files.clone(),
    };
    // A failed create resumes the VM itself (it has no side effects, snapshot-support.md).
    fc::suspend(api, &seen.state, &seen.mem, SNAPSHOT_TIMEOUT).await?;
    let (t, d) = (tmp.to_path_buf(), dest.to_path_buf());
    let committed = blocking(move || {
        // One line, as `check_version` and `Meta::mismatch` compare it.
        let version = what.version.trim();
        if what.shared {
            let me = rustix::process::geteuid().as_raw();
            let us = rustix::process::getegid().as_raw();
            for f in STATE_FILES {
                crate::host::confine::files::own(&t.join(f), me, us, 0o444)
                    .map_err(|e| SnapshotError::Failed(e.to_string()))?;
            }
        }
        fc::record_version(&t, version)?;
        let (sums, all) = snapshot::hash_files(&t, &STATE_FILES)?;
        let bytes = sums.iter().map(|f| f.bytes).sum();
        let mut meta = Meta::new(&what.vm, "firecracker", version, what.spec, bytes, all);
        meta.files = sums;
        snapshot::commit(&t, &d, &meta)?;
        Ok(meta)
    })
    .await;
    if committed.is_err() {
        // The snapshot is of no use: the paused VM runs on.
        let _ = fc::call(api, &fc::resume(), CALL_TIMEOUT).await;
    }
    committed
}

/// Load the snapshot in `dir` (described by `meta`) into the Firecracker just started for it
/// in `run_dir` (`Vmm::start_vmm_incoming`); the guest stays paused. First, with nothing sent to
/// Firecracker: the recorded version must be `version` and every state file whole (an error
/// names the file). Then the files are linked into the jail when there is one, and
/// `PUT /snapshot/load` sent with `resume_vm: false` and `network_overrides` (pairs of
/// `iface_id` and the TAP it is to use now; empty for a VM's own snapshot): the caller marks the snapshot used
/// before it sends `PATCH /vm Resumed`, as a QEMU restore is marked before `cont` (a fort
/// killed in between loads it again, never twice into a guest that ran). On error the caller
/// ends that Firecracker.
pub async fn restore(
    run_dir: &Path,
    dir: &Path,
    meta: &Meta,
    version: &str,
    network_overrides: &[(String, String)],
) -> Result<(), SnapshotError> {
    fc::check_version(dir, version)?;
    let (d, m) = (dir.to_path_buf(), meta.clone());
    blocking(move || snapshot::verify_files(&d, &m)).await?;
    let files = SnapshotFiles::in_dir(dir);
    let api = RunDir(run_dir).api();
    // Into the chroot `jailer::prepare` made afresh for this start, beside the drives.
    let jail = jail_root(run_dir);
    let seen = match &jail {
        Some(root) => fc::link_into_jail(root, &files)?,
        None => files,
    };
    let loaded = fc::restore(
        &api,
        &seen.state,
        &seen.mem,
        network_overrides,
        false,
        SNAPSHOT_TIMEOUT,
    )
    .await;
    if let Some(root) = &jail {
        // The loaded VM maps mem.bin: the inode lives on as long as it runs.
        let _ = unlink_from_jail(root);
    }
    Ok(loaded?)
}

#[cfg(test)]
#[path = "firecracker_suspend_tests.rs"]
pub(crate) mod tests;

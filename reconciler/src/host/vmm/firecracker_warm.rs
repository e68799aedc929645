//! Warm clones of a jailed Firecracker VM (`[template.T] warm = true`), on top of the suspend
//! and resume drivers of `firecracker_suspend`. The builder's snapshot is that driver's
//! suspend, made shareable: its state files become read-only for everyone, because each
//! clone's Firecracker runs as its own uid and opens them to load. A clone is that driver's
//! checked load, with the clone's TAP in `network_overrides`, then `PATCH /vm Resumed`; the
//! warm snapshot's files stay where they are for the next clone.
//!
//! Both refuse a Firecracker that is not jailed before sending it anything: a Firecracker
//! snapshot records each drive's `path_on_host` and the vsock `uds_path`, and a loaded clone
//! opens exactly those paths (snapshot-support.md, "Loading snapshots": the host resources
//! "need to be accessible at the same relative paths"). Jailed they are chroot-relative
//! (`/root.ext4`, `/vsock.sock`), so each clone's own chroot gives it its own; unjailed they
//! would be the builder's.

use std::path::{Path, PathBuf};

use super::firecracker_snapshot as fc;
use super::firecracker_suspend::{self as fcs, Describe, CALL_TIMEOUT};
use super::RunDir;
use crate::host::snapshot::{Meta, SnapshotError};

/// The guest's only NIC, as `firecracker::config` names it.
pub const IFACE: &str = "eth0";

/// The chroot of the Firecracker of `run_dir`, or why a warm snapshot cannot be made or
/// loaded with it.
fn jail(run_dir: &Path) -> Result<PathBuf, SnapshotError> {
    fcs::jail_root(run_dir).ok_or_else(|| {
        SnapshotError::Failed(format!(
            "the Firecracker of {} does not run under the jailer: a warm snapshot reopens the drive and vsock paths it was made with, which only each VM's own chroot makes the clone's own",
            run_dir.display()
        ))
    })
}

/// Save the booted, jailed builder of `run_dir` into `tmp` (which holds its root image) and
/// commit it as the warm snapshot `dest`: `firecracker_suspend::suspend` with the state files
/// made shareable. The builder is left paused for the caller to end; on error nothing of
/// the snapshot is left.
pub async fn build(
    run_dir: &Path,
    tmp: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    what: Describe,
) -> Result<Meta, SnapshotError> {
    jail(run_dir)?;
    fcs::suspend(
        run_dir,
        tmp,
        dest,
        owner,
        Describe {
            shared: true,
            ..what
        },
    )
    .await
}

/// Load the warm snapshot `dir` (described by `meta`) into the jailed Firecracker just
/// started with nothing configured in `run_dir`, and let it run. Before anything is sent,
/// the recorded build must be `version` and every state file whole; then the files are
/// hard-linked into the chroot, `PUT /snapshot/load` is sent with `resume_vm: false` and,
/// when the clone has a NIC, `network_overrides` pointing `eth0` at its own `tap`
/// (Firecracker v1.12.0 or later); then `PATCH /vm Resumed`. The chroot's links go; `dir`
/// stays whole for the next clone (the loaded guest maps `mem.bin` `MAP_PRIVATE`: its writes
/// are its own, the file is shared). On error the caller ends that Firecracker.
pub async fn clone(
    run_dir: &Path,
    dir: &Path,
    meta: &Meta,
    version: &str,
    tap: Option<&str>,
) -> Result<(), SnapshotError> {
    jail(run_dir)?;
    let overrides: Vec<(String, String)> = tap
        .map(|t| vec![(IFACE.to_string(), t.to_string())])
        .unwrap_or_default();
    fcs::restore(run_dir, dir, meta, version, &overrides).await?;
    fc::call(&RunDir(run_dir).api(), &fc::resume(), CALL_TIMEOUT).await?;
    Ok(())
}

#[cfg(test)]
#[path = "firecracker_warm_tests.rs"]
mod tests;

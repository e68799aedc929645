//! `state = "suspended"` for Firecracker VMs: the resource side of
//! `host::vmm::firecracker_suspend` (which pauses, creates, hashes and commits; and checks
//! and loads), recorded as a QEMU suspend and resume are (`snapshot`).
//!
//! As QEMU's is, the snapshot is loaded with the guest paused (`resume_vm: false`), marked
//! used, and only then resumed (`PATCH /vm Resumed`); its files are removed once it is
//! marked: the restored VM maps `mem.bin` (`MAP_PRIVATE`), and the unlinked file lives on,
//! its disk space held, until that Firecracker exits. Its vsock device was reset when the
//! snapshot was made; the agent's listening socket survived, so fort connects to it at once.

use std::path::Path;
use std::time::Instant;

use super::super::{error_chain, Ctx, ResourceError};
use super::{snapshot, steps, VmOutputs};
use crate::address::Address;
use crate::crash::Point;
use crate::host::snapshot::{self as files, Meta};
use crate::host::vmm::firecracker_suspend::{self as fcs, Describe};
use crate::host::vmm::Started;
use crate::manifest::{Resource, VmSpec};

fn check(what: String, e: &files::SnapshotError) -> ResourceError {
    ResourceError::Check(format!("{what}{}", error_chain(e)))
}

/// Firecracker's half of a suspend: the snapshot of the running VM written into `tmp` and
/// committed to `dest`. On failure the VM was resumed and runs on; `tmp` is gone.
pub(super) async fn write(
    ctx: &Ctx,
    addr: &Address,
    spec: &VmSpec,
    out: &mut VmOutputs,
    tmp: &Path,
    dest: &Path,
) -> Result<Meta, ResourceError> {
    // The binary that runs the VM: the spec it was booted with is the one wanted (a changed
    // `firecracker` asset restarts it before it is suspended).
    let version = match super::backend::of(ctx, spec) {
        Ok(b) => b.version(),
        Err(e) => {
            snapshot::abandon(ctx, addr, out, tmp)?;
            return Err(e);
        }
    };
    let what = Describe {
        vm: addr.name.clone(),
        version,
        spec: out.booted.clone().unwrap_or_default(),
        shared: false,
    };
    // The VM's uid owns the files (and its gid is the same number), so a confined
    // Firecracker can write them — and, when it is not jailed (no links in a chroot), open
    // them by their path: the directories on the way let it through, not list them (0711, as
    // for the drives), while the files stay 0600.
    let owner = out.uid.map(|u| (u, u));
    if owner.is_some() {
        let snaps = files::vm_dir(&ctx.state_dir, &addr.name);
        for d in [snaps.parent().unwrap_or(&snaps), &snaps, tmp] {
            if let Err(e) = crate::host::confine::files::set_mode(d, 0o711) {
                snapshot::abandon(ctx, addr, out, tmp)?;
                return Err(ResourceError::Check(error_chain(&e)));
            }
        }
    }
    match fcs::suspend(&out.run_dir, tmp, dest, owner, what).await {
        Ok(meta) => Ok(meta),
        Err(e) => {
            snapshot::abandon(ctx, addr, out, tmp)?;
            Err(check(String::new(), &e))
        }
    }
}

/// An interrupted suspend of a Firecracker VM (its temporary directory is already gone): the
/// snapshot's links in the chroot go, and a VM left paused by it runs on — or, if it cannot,
/// is stopped, to boot from its drives.
pub(super) async fn recover(
    ctx: &Ctx,
    addr: &Address,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    if let Some(root) = fcs::jail_root(&out.run_dir) {
        fcs::unlink_from_jail(&root).map_err(|e| ResourceError::Check(error_chain(&e)))?;
    }
    if !out.started.is_some_and(|s| s.alive()) || !super::vcpus::stopped(out).await {
        return Ok(());
    }
    if let Err(e) = super::vcpus::resume(out).await {
        tracing::warn!(
            "{addr}: the VM an interrupted suspend left cannot run on ({}): it is restarted",
            error_chain(&e)
        );
        steps::stop(ctx, addr, out).await?;
    }
    Ok(())
}

/// Start the VM from its snapshot in `dir`: a Firecracker with nothing configured (recorded
/// as it runs), the snapshot marked used, its version and files checked, loaded and resumed,
/// its files removed, the agent reached and the guest's clock stepped. Errors leave the
/// caller to stop what runs and boot.
pub(super) async fn resume(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    want: serde_json::Value,
    dir: &Path,
    meta: &Meta,
) -> Result<(), ResourceError> {
    let addr = &desired.address;
    let t0 = Instant::now();
    let (cfg, vmm) = steps::prepare_boot(ctx, desired, spec, out).await?;
    let version = vmm.version();
    let (v, c) = (vmm.clone(), cfg.clone());
    let proc = steps::blocking(move || v.start_vmm_incoming(&c)).await?;
    out.started = Some(Started {
        vmm: proc,
        helper: None,
    });
    out.booted = Some(want);
    out.boot_ms = None;
    ctx.step(addr, Point::VmSpawned, out)?;
    super::write_pid_file(out)?;
    // Loaded paused (`resume_vm: false`): a fort killed here finds the snapshot still
    // recorded and a guest that never ran, and loads it again.
    fcs::restore(&out.run_dir, dir, meta, &version, &[])
        .await
        .map_err(|e| {
            check(
                format!("cannot resume from the snapshot in {}: ", dir.display()),
                &e,
            )
        })?;
    // Marked used before the guest runs: from then on its drives move past the snapshot,
    // which must never be loaded again. The loaded Firecracker maps mem.bin; its name can go.
    out.suspended = None;
    ctx.step(addr, Point::VmSnapshotWritten, out)?;
    let _ = files::remove(dir);
    crate::crash::hit(Point::VmResuming);
    super::vcpus::resume(out).await?;
    // No hello to wait for: the guest's vsock device was reset, not replaced.
    let (mounts, client) = steps::wait_ready_client(spec, out, None).await?;
    out.mounts = mounts;
    out.boot_ms = Some(t0.elapsed().as_millis() as u64);
    super::identity::after_restore(addr, out, Some(client)).await;
    Ok(())
}

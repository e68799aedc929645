//! Warm starts of Firecracker VMs, as Firecracker documents clones (snapshot-support.md,
//! network-for-clones.md, random-for-clones.md): only through the jailer, since a snapshot
//! reopens the drive and vsock paths it was made with and only each VM's own chroot makes
//! those paths (`/root.ext4`, `/vsock.sock`) the clone's own. The builder is the VM's jailed
//! boot; its save is `host::vmm::firecracker_warm::build` (pause, full snapshot, files made
//! readable by every clone's uid, committed). A clone is a jailed Firecracker with nothing
//! configured, the warm snapshot checked, loaded paused with its own TAP in
//! `network_overrides`, and resumed; the warm files stay for the next clone. `warm` does the
//! rest, as for QEMU: the builder's root image under each clone, `fort/identity` after.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use super::super::{error_chain, Ctx, ResourceError};
use super::{steps, VmOutputs};
use crate::crash::Point;
use crate::host::snapshot::Meta;
use crate::host::vmm::firecracker_suspend::Describe;
use crate::host::vmm::{firecracker_warm as fcw, Started};
use crate::manifest::{Resource, VmSpec};

/// Refuse, before anything is built or started, a Firecracker VM that would not run jailed
/// (the manifest refuses an asset without a jailer; this is the host's side: a fort that
/// does not confine VMs does not use the jailer).
pub(super) fn check(ctx: &Ctx, spec: &VmSpec) -> Result<(), ResourceError> {
    if super::backend::jailed(ctx, spec)? {
        return Ok(());
    }
    Err(ResourceError::Check(
        "a Firecracker VM starts warm only through the jailer, and this one would not run jailed (fort confines VMs, and so uses the jailer, only as root and without FORT_CONFINE=0)".into(),
    ))
}

/// Save the jailed builder of `out` (booted, its agent answering) into `tmp` and commit it at
/// `dest`. The builder is left paused for the caller to end.
pub(super) async fn save(
    out: &VmOutputs,
    tmp: &Path,
    dest: &Path,
    inputs: &Value,
    version: &str,
) -> Result<Meta, ResourceError> {
    let what = Describe {
        vm: super::warm::builder_name(inputs),
        version: version.to_string(),
        spec: inputs.clone(),
        shared: true,
    };
    // Created by fort for the builder's uid to write (through the chroot's links).
    let owner = out.uid.map(|u| (u, u));
    fcw::build(&out.run_dir, tmp, dest, owner, what)
        .await
        .map_err(|e| ResourceError::Check(error_chain(&e)))
}

/// Start the fresh VM `desired` from the warm snapshot in `dir`: prepared as a jailed boot
/// (TAP, cgroup, a chroot with the kernel and its root drive, which holds the builder's
/// image), a Firecracker with nothing configured (recorded as it runs), the snapshot checked
/// and loaded with the VM's TAP, and resumed. Returns when the start began, for `boot_ms`.
/// Errors leave the caller to stop what runs and boot.
pub(super) async fn clone(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    want: Value,
    dir: &Path,
    meta: &Meta,
) -> Result<Instant, ResourceError> {
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
    let tap = out.network.as_ref().map(|a| a.tap.clone());
    fcw::clone(&out.run_dir, dir, meta, &version, tap.as_deref())
        .await
        .map_err(|e| {
            ResourceError::Check(format!(
                "cannot resume from the snapshot in {}: {}",
                dir.display(),
                error_chain(&e)
            ))
        })?;
    Ok(t0)
}

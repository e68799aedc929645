//! Step `vm.confined`: the VM's uid (allocated once, in state), its cgroup with the limits of
//! its vCPUs and memory, and the files its uid needs (its run dir and drives its own, the
//! kernel readable, the TAP its to open) — each recorded before it is made, so a crash leaves
//! a row that names it. And the reverse for destroy.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::super::{Ctx, ResourceError};
use super::{CgroupRecord, VmOutputs};
use crate::address::Address;
use crate::crash::Point;
use crate::host::vmm::{Confine, VmConfig};
use crate::host::{cgroup, confine};
use crate::manifest::VmSpec;

fn check(e: impl std::error::Error + 'static) -> ResourceError {
    ResourceError::Check(super::super::error_chain(&e))
}

/// The VM's uid, allocated on first use (the host's users, groups and running processes'
/// ids are skipped).
pub(super) fn uid(ctx: &Ctx, addr: &Address) -> Result<u32, ResourceError> {
    let owner = addr.to_string();
    if let Some(u) = ctx.with_store(|s| s.uid_of(&owner))? {
        return Ok(u);
    }
    let host = confine::host_ids();
    ctx.with_store(|s| s.uid(&owner, ctx.uid_range, &|u| host.contains(&u)))
}

/// Confine the VM `cfg` describes, or `None` when this fort does not confine VMs.
pub(super) fn prepare(
    ctx: &Ctx,
    addr: &Address,
    spec: &VmSpec,
    out: &mut VmOutputs,
    cfg: &VmConfig,
) -> Result<Option<Confine>, ResourceError> {
    if !confine::enabled() {
        return Ok(None);
    }
    let uid = uid(ctx, addr)?;
    let hierarchy = cgroup::detect();
    let want = hierarchy.as_ref().map(|h| {
        let path = cgroup::vm_cgroup(&ctx.state_id(), &addr.name);
        CgroupRecord {
            dirs: h.dirs(&path),
            version: h.version(),
            path,
        }
    });
    if out.uid != Some(uid) || out.cgroup != want {
        // A cgroup recorded elsewhere (fort now runs in another cgroup of a v1 host) goes.
        if let Some(old) = out.cgroup.take().filter(|o| Some(o) != want.as_ref()) {
            cgroup::remove(&old.dirs).map_err(check)?;
        }
        out.uid = Some(uid);
        out.cgroup = want.clone();
        ctx.step(addr, Point::VmIntent, out)?;
    }
    let limits = cgroup::limits(spec.vcpus, spec.memory);
    if let (Some(h), Some(c)) = (&hierarchy, &want) {
        h.create(&c.path, &limits).map_err(check)?;
    }
    give_files(ctx, uid, out, cfg)?;
    if let Some(a) = &out.network {
        if crate::host::net::tap::owner(&a.tap) != (Some(uid), Some(uid)) {
            crate::host::net::tap::set_owner(&a.tap, uid, uid).map_err(check)?;
        }
    }
    ctx.step(addr, Point::VmConfined, out)?;
    let groups = if crate::host::vmm::hardware_kvm() {
        confine::kvm_group().into_iter().collect()
    } else {
        Vec::new()
    };
    Ok(Some(Confine {
        uid,
        gid: uid,
        groups,
        cgroup: want.as_ref().map(|c| c.path.clone()).unwrap_or_default(),
        cgroup_version: want.as_ref().map_or(0, |c| c.version),
        cgroup_dirs: want.map(|c| c.dirs).unwrap_or_default(),
        limits,
    }))
}

/// The run dir and drives the uid's own, the kernel and initrd readable, the rest of the
/// state dir closed.
fn give_files(
    ctx: &Ctx,
    uid: u32,
    out: &mut VmOutputs,
    cfg: &VmConfig,
) -> Result<(), ResourceError> {
    use confine::files;
    files::harden_state_dir(&ctx.state_dir).map_err(check)?;
    std::fs::create_dir_all(&out.run_dir)
        .map_err(|e| ResourceError::io("cannot create", &out.run_dir, e))?;
    files::own(&out.run_dir, uid, uid, 0o700).map_err(check)?;
    for d in std::iter::once(&cfg.root).chain(&cfg.drives) {
        files::own(d, uid, uid, 0o600).map_err(check)?;
        if !out.owned.contains(d) {
            out.owned.push(d.clone());
        }
    }
    for f in std::iter::once(&cfg.kernel).chain(&cfg.initrd) {
        files::readable_under(&ctx.state_dir, f).map_err(check)?;
    }
    Ok(())
}

/// Remove the VM's cgroup (its processes are gone).
pub(super) fn release_cgroup(out: &mut VmOutputs) -> Result<(), ResourceError> {
    if let Some(c) = &out.cgroup {
        cgroup::remove(&c.dirs).map_err(check)?;
    }
    out.cgroup = None;
    Ok(())
}

/// Destroy: the cgroup goes, and the drive files the uid still owns are root's again (a
/// drive outlives its VM, and the uid may go to another VM).
pub(super) fn undo(out: &mut VmOutputs) -> Result<(), ResourceError> {
    release_cgroup(out)?;
    if let Some(uid) = out.uid {
        for d in std::mem::take(&mut out.owned) {
            give_back(&d, uid)?;
        }
    }
    Ok(())
}

fn give_back(path: &Path, uid: u32) -> Result<(), ResourceError> {
    match std::fs::metadata(path) {
        Ok(m) if m.uid() == uid => std::os::unix::fs::chown(path, Some(0), Some(0))
            .map_err(|e| ResourceError::io("cannot chown", path, e)),
        _ => Ok(()),
    }
}

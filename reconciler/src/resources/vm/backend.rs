//! The VMM backend of a VM: QEMU, or Firecracker from its `[firecracker.*]` asset (binary and
//! jailer, as that asset recorded them) or from PATH; and the VMM build a snapshot must have
//! been made by to be loaded into that backend.

use std::path::PathBuf;

use super::super::{Ctx, ResourceError};
use crate::address::{Address, Kind};
use crate::host::vmm::firecracker::Firecracker;
use crate::host::vmm::qemu::Qemu;
use crate::host::vmm::Vmm as Backend;
use crate::manifest::{VmSpec, Vmm};

/// The backend `spec` runs under.
pub(super) fn of(ctx: &Ctx, spec: &VmSpec) -> Result<Box<dyn Backend>, ResourceError> {
    named(ctx, spec.vmm, spec.firecracker.as_deref())
}

/// The backend for `vmm` without its asset's paths: enough to read its logs, not to start it.
pub(super) fn bare(vmm: Vmm) -> Box<dyn Backend> {
    match vmm {
        Vmm::Qemu => Box::new(Qemu),
        Vmm::Firecracker => Box::new(Firecracker {
            binary: None,
            jailer: None,
        }),
    }
}

/// The backend for `vmm`, with the `[firecracker.NAME]` asset `firecracker` (`None`: PATH).
fn named(
    ctx: &Ctx,
    vmm: Vmm,
    firecracker: Option<&str>,
) -> Result<Box<dyn Backend>, ResourceError> {
    Ok(match vmm {
        Vmm::Qemu => bare(vmm),
        Vmm::Firecracker => {
            let (binary, jailer) = match firecracker {
                Some(name) => {
                    let (path, jailer) = asset(ctx, name)?;
                    (Some(path), jailer)
                }
                None => (None, None),
            };
            Box::new(Firecracker { binary, jailer })
        }
    })
}

/// The binary and jailer (if it has one) the `[firecracker.NAME]` asset recorded.
fn asset(ctx: &Ctx, name: &str) -> Result<(PathBuf, Option<PathBuf>), ResourceError> {
    let a = Address::new(Kind::Firecracker, name);
    let rec = ctx.applied(&a)?;
    let path = rec
        .outputs
        .get("path")
        .and_then(|p| p.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| ResourceError::Check(format!("{a} has no recorded path")))?;
    let jailer = rec
        .outputs
        .pointer("/jailer/path")
        .and_then(|p| p.as_str())
        .map(PathBuf::from);
    Ok((path, jailer))
}

/// Whether the Firecracker VM `spec` starts through the jailer: its asset has one and this
/// fort confines VMs (`Firecracker::start` uses the jailer only then).
pub(super) fn jailed(ctx: &Ctx, spec: &VmSpec) -> Result<bool, ResourceError> {
    let Some(name) = spec.firecracker.as_deref() else {
        return Ok(false);
    };
    Ok(asset(ctx, name)?.1.is_some() && crate::host::confine::enabled())
}

/// The VMM (`"qemu"`, `"firecracker"`) and its `--version` line that would load a snapshot
/// into the VM whose restart-relevant spec is `want` (its `vmm` and `firecracker` fields).
pub(super) fn loader(
    ctx: &Ctx,
    want: &serde_json::Value,
) -> Result<(String, String), ResourceError> {
    let vmm = match want.get("vmm").and_then(|v| v.as_str()) {
        Some("qemu") => Vmm::Qemu,
        _ => Vmm::Firecracker,
    };
    let asset = want.get("firecracker").and_then(|v| v.as_str());
    let b = named(ctx, vmm, asset)?;
    Ok((b.name().to_string(), b.version()))
}

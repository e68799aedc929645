//! A VM's paused and suspended states: pausing and continuing its vCPUs (`vcpus`),
//! suspending it to a snapshot under `state_dir/snapshots/NAME/suspend/` and resuming from
//! it — QEMU's stream here, Firecracker's files in `snapshot_fc`. Each act is recorded before
//! and after, so a fort killed mid-way leaves a row the next apply finishes or undoes: an
//! unfinished snapshot is deleted and the VM it was taken of runs on; a snapshot is marked
//! used before the guest resumes from it, so it is never loaded twice (the guest's drives
//! move on once it runs).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::super::blocking;
use super::super::{Ctx, ResourceError};
use super::{snapshot_fc, steps, vcpus, VmOutputs};
use crate::address::Address;
use crate::crash::Point;
use crate::host::snapshot::{self, Meta};
use crate::host::vmm::{qemu_snapshot, RunDir, Started};
use crate::manifest::{Resource, VmSpec, Vmm};

/// A suspended VM's snapshot, as its row records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendRecord {
    pub dir: PathBuf,
    pub bytes: u64,
    pub created_unix: u64,
    pub vmm_version: String,
    /// How long writing it took.
    pub suspend_ms: u64,
}

fn err(e: snapshot::SnapshotError) -> ResourceError {
    ResourceError::Check(super::super::error_chain(&e))
}

/// An interrupted suspend: its unfinished files go, and the VM it was taking runs on (QEMU:
/// vsock device back, vCPUs continued; Firecracker: `snapshot_fc::recover`) — or, if its VMM
/// is gone, it boots as a dead VM does. A snapshot no row names goes too.
pub(super) async fn recover(
    ctx: &Ctx,
    addr: &Address,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    // A snapshot committed but not recorded (killed between the two), or used but not yet
    // removed (a Firecracker resume): no row names it, nothing will load it.
    let (dest, _) = snapshot::suspend_dirs(&ctx.state_dir, &addr.name);
    if out.suspended.is_none() && dest.exists() {
        snapshot::remove(&dest).map_err(err)?;
    }
    let Some(tmp) = out.snapshotting.clone() else {
        return Ok(());
    };
    snapshot::remove(&tmp).map_err(err)?;
    if out.vmm == "firecracker" {
        snapshot_fc::recover(ctx, addr, out).await?;
    } else if out.started.is_some_and(|s| s.alive()) {
        let run = out.run_dir.clone();
        let undone = blocking(move || {
            let mut q = crate::host::vmm::qmp::Qmp::connect(
                &RunDir(&run).qmp(),
                std::time::Duration::from_secs(5),
            )?;
            if !q.has_device(qemu_snapshot::VSOCK_ID)? {
                qemu_snapshot::plug_vsock(&mut q, &run)?;
            }
            q.execute("cont", serde_json::json!({}))?;
            Ok::<_, snapshot::SnapshotError>(())
        })
        .await;
        match undone {
            // Its agent must answer again before the VM is adopted as it is.
            Ok(()) => {
                if let Err(e) = super::checkpoint::agent_back(addr, out).await {
                    tracing::warn!("{e}");
                }
            }
            Err(e) => {
                tracing::warn!(
                    "{addr}: the VM an interrupted suspend left cannot run on ({e}): it is restarted"
                );
                steps::stop(ctx, addr, out).await?;
            }
        }
    }
    out.snapshotting = None;
    out.paused = false;
    ctx.step(addr, Point::VmSnapshotIntent, out)
}

/// Stop the vCPUs of the running VM (memory kept).
pub(super) async fn pause(
    ctx: &Ctx,
    addr: &Address,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    vcpus::pause(out).await?;
    out.paused = true;
    ctx.step(addr, Point::VmPaused, out)
}

/// Let a paused VM's vCPUs run again.
pub(super) async fn unpause(
    ctx: &Ctx,
    addr: &Address,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    vcpus::resume(out).await?;
    out.paused = false;
    ctx.step(addr, Point::VmPaused, out)
}

/// Suspend the running VM: snapshot written (temp dir, fsynced, renamed), recorded, then its
/// processes end. On failure the VM keeps running and nothing of the snapshot is left.
pub(super) async fn suspend(
    ctx: &Ctx,
    addr: &Address,
    spec: &VmSpec,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    let (dest, tmp) = snapshot::suspend_dirs(&ctx.state_dir, &addr.name);
    out.snapshotting = Some(tmp.clone());
    ctx.step(addr, Point::VmSnapshotIntent, out)?;
    snapshot::remove(&tmp).map_err(err)?;
    std::fs::create_dir_all(&tmp).map_err(|e| ResourceError::io("cannot create", &tmp, e))?;
    let t0 = Instant::now();
    let meta = if out.vmm == "firecracker" {
        snapshot_fc::write(ctx, addr, spec, out, &tmp, &dest).await?
    } else {
        write_qemu(ctx, addr, spec, out, &tmp, &dest).await?
    };
    out.snapshotting = None;
    out.suspended = Some(SuspendRecord {
        dir: dest,
        bytes: meta.state_bytes,
        created_unix: meta.created_unix,
        vmm_version: meta.vmm_version.clone(),
        suspend_ms: t0.elapsed().as_millis() as u64,
    });
    out.paused = false;
    ctx.step(addr, Point::VmSnapshotWritten, out)?;
    // The guest is stopped and saved: its processes end without asking it.
    if let Some(s) = out.started {
        let _ =
            tokio::task::spawn_blocking(move || s.kill(std::time::Duration::from_secs(5))).await;
    }
    let _ = std::fs::remove_file(RunDir(&out.run_dir).pid());
    out.started = None;
    out.helper = None;
    ctx.step(addr, Point::VmStopped, out)
}

/// A suspend that failed, its VM running on: its temporary directory goes, and so does the
/// record of it.
pub(super) fn abandon(
    ctx: &Ctx,
    addr: &Address,
    out: &mut VmOutputs,
    tmp: &Path,
) -> Result<(), ResourceError> {
    let _ = snapshot::remove(tmp);
    out.snapshotting = None;
    ctx.step(addr, Point::VmSnapshotIntent, out)
}

/// QEMU's half of a suspend: the stream written into `tmp` (vsock device unplugged first),
/// then committed to `dest`.
async fn write_qemu(
    ctx: &Ctx,
    addr: &Address,
    spec: &VmSpec,
    out: &mut VmOutputs,
    tmp: &Path,
    dest: &Path,
) -> Result<Meta, ResourceError> {
    let (run, t, memory) = (out.run_dir.clone(), tmp.to_path_buf(), spec.memory);
    let written = blocking(move || qemu_snapshot::suspend(&run, &t, memory)).await;
    let stream = match written {
        Ok(s) => s,
        Err(e) => {
            abandon(ctx, addr, out, tmp)?;
            // The VM runs on: its agent must be reachable again, as before the suspend.
            if !out.paused {
                if let Err(back) = super::checkpoint::agent_back(addr, out).await {
                    tracing::warn!("{}", super::super::error_chain(&back));
                }
            }
            return Err(e);
        }
    };
    let meta = stream.meta(&addr.name, out.booted.clone().unwrap_or_default());
    let (t, d, m) = (tmp.to_path_buf(), dest.to_path_buf(), meta.clone());
    blocking(move || snapshot::commit(&t, &d, &m)).await?;
    Ok(meta)
}

/// Why the recorded snapshot cannot be resumed into `want` (`None`: it can): compared with
/// the VMM and build `want` would load it with.
pub(super) fn unusable(ctx: &Ctx, out: &VmOutputs, want: &serde_json::Value) -> Option<String> {
    let s = out.suspended.as_ref()?;
    let meta = match snapshot::read_meta(&s.dir) {
        Ok(m) => m,
        Err(e) => return Some(super::super::error_chain(&e)),
    };
    match super::backend::loader(ctx, want) {
        Ok((vmm, version)) => meta.mismatch(want, &vmm, &version),
        Err(e) => Some(super::super::error_chain(&e)),
    }
}

/// Throw the recorded snapshot away (the VM cold-boots, stops, or was resumed from it).
pub(super) fn discard(ctx: &Ctx, addr: &Address, out: &mut VmOutputs) -> Result<(), ResourceError> {
    let Some(s) = out.suspended.take() else {
        return Ok(());
    };
    snapshot::remove(&s.dir).map_err(err)?;
    ctx.step(addr, Point::VmSnapshotWritten, out)
}

/// Start the VM from its snapshot: helper, QEMU waiting for the stream (each recorded as it
/// runs), the stream loaded and checked, the snapshot marked used, the guest continued, its
/// agent reached and its clock stepped (Firecracker: `snapshot_fc::resume`). Errors leave the
/// caller to stop what runs and boot.
pub(super) async fn resume(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    want: serde_json::Value,
) -> Result<(), ResourceError> {
    let addr = &desired.address;
    let Some(rec) = out.suspended.clone() else {
        return Err(ResourceError::Check(format!("{addr} has no snapshot")));
    };
    let meta = snapshot::read_meta(&rec.dir).map_err(err)?;
    if spec.vmm == Vmm::Firecracker {
        return snapshot_fc::resume(ctx, desired, spec, out, want, &rec.dir, &meta).await;
    }
    let t0 = load(ctx, desired, spec, out, want, &rec.dir, &meta).await?;
    // Marked used before the guest runs: from here its drives move on, and the stream must
    // never be loaded again.
    discard(ctx, addr, out)?;
    crate::crash::hit(Point::VmResuming);
    run_loaded(addr, spec, out, t0).await
}

/// Start a QEMU waiting for a stream (helper and QEMU each recorded as they run) and load the
/// snapshot in `dir` into it, checked against `meta`; the guest has not run yet. Returns
/// when the start began, for `boot_ms`.
pub(super) async fn load(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    want: serde_json::Value,
    dir: &std::path::Path,
    meta: &Meta,
) -> Result<Instant, ResourceError> {
    let addr = &desired.address;
    let t0 = Instant::now();
    let hash = qemu_snapshot::PendingHash::start(dir);
    let (cfg, vmm) = steps::prepare_boot(ctx, desired, spec, out).await?;
    let prepared = t0.elapsed();
    let (v, c) = (vmm.clone(), cfg.clone());
    out.helper = steps::blocking(move || v.start_helper(&c)).await?;
    let helped = t0.elapsed();
    if out.helper.is_some() {
        ctx.step(addr, Point::VmHelper, out)?;
    }
    let (v, c) = (vmm.clone(), cfg.clone());
    let proc = steps::blocking(move || v.start_vmm_incoming(&c)).await?;
    out.started = Some(Started {
        vmm: proc,
        helper: out.helper.take(),
    });
    out.booted = Some(want);
    out.boot_ms = None;
    ctx.step(addr, Point::VmSpawned, out)?;
    super::write_pid_file(out)?;
    let (run, d, m, memory) = (
        out.run_dir.clone(),
        dir.to_path_buf(),
        meta.clone(),
        spec.memory,
    );
    let alive = move || proc.alive();
    let spawned = t0.elapsed();
    let loaded = blocking(move || qemu_snapshot::load(&run, &d, &m, memory, hash, alive)).await;
    tracing::debug!(
        "{addr}: load: prepared {prepared:?}, helper {helped:?}, VMM spawned {spawned:?}, loaded {:?}",
        t0.elapsed()
    );
    if let Err(e) = loaded {
        return Err(ResourceError::Check(format!(
            "cannot resume from the snapshot in {}: {}",
            dir.display(),
            super::super::error_chain(&e)
        )));
    }
    Ok(t0)
}

/// Let a loaded guest run: vCPUs continued, its agent reached, its clock stepped.
pub(super) async fn run_loaded(
    addr: &Address,
    spec: &VmSpec,
    out: &mut VmOutputs,
    t0: Instant,
) -> Result<(), ResourceError> {
    let gate = steps::ready_gate(out, steps::RESTORE_FALLBACK);
    let run = out.run_dir.clone();
    blocking(move || qemu_snapshot::resume(&run)).await?;
    let (mounts, client) = steps::wait_ready_client(spec, out, Some(gate)).await?;
    out.mounts = mounts;
    out.boot_ms = Some(t0.elapsed().as_millis() as u64);
    super::identity::after_restore(addr, out, Some(client)).await;
    Ok(())
}

/// What the plan says about snapshots: the one a VM resumes from (size, age), or why it
/// cold-boots instead, and what suspending will write.
pub(super) fn plan_details(
    spec: &VmSpec,
    recorded: Option<&crate::state::Record>,
    op: crate::plan::Op,
) -> Vec<String> {
    use crate::manifest::VmState;
    use crate::plan::Op;
    let out: Option<VmOutputs> =
        recorded.and_then(|r| serde_json::from_value(r.outputs.clone()).ok());
    let snap = out.as_ref().and_then(|o| o.suspended.as_ref());
    let mut d = Vec::new();
    if let Some(s) = snap {
        let age = snapshot::now_unix().saturating_sub(s.created_unix);
        let what = format!(
            "{}, {} old",
            crate::manifest::units::human_size(s.bytes),
            humantime::format_duration(std::time::Duration::from_secs(age))
        );
        match (op, spec.state) {
            (Op::Restart | Op::Replace, _) => d.push(format!(
                "cold boot: its snapshot ({what}) was made of the VM before this change and is discarded"
            )),
            (_, VmState::Stopped) => d.push(format!("its snapshot ({what}) is discarded")),
            (_, VmState::Running | VmState::Paused) => {
                d.push(format!("resumes from its snapshot ({what})"))
            }
            (_, VmState::Suspended) => d.push(format!("snapshot: {what}")),
        }
    }
    if spec.state == VmState::Suspended
        && (snap.is_none() || matches!(op, Op::Restart | Op::Replace))
    {
        d.push(format!(
            "suspends: writes up to {} (its memory) to snapshots/{}/suspend/",
            crate::manifest::units::human_size(spec.memory),
            recorded.map_or("NAME", |r| r.address.name.as_str())
        ));
    }
    d
}

//! User checkpoints of one QEMU VM (`fort snapshot` / `fort restore`): its memory and device
//! state taken as a suspend takes them, and its drives cloned while the vCPUs are stopped;
//! the VM runs on in the same QEMU. Restoring kills what runs, puts the drive copies back,
//! loads the stream into a new QEMU and continues it. Both record their intent in the VM's
//! row first (`snapshotting`, `restoring`), so a fort killed mid-way leaves a row the next
//! apply cleans up (a checkpoint's temporary directory removed and the VM continued) or
//! finishes (the restore done again from the start: the checkpoint is never consumed).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::super::{blocking, error_chain, Ctx, ResourceError};
use super::{snapshot, spec_of, steps, VmOutputs};
use crate::address::{Address, Kind};
use crate::crash::Point;
use crate::host::checkpoint::{self as files, Checkpoint};
use crate::host::snapshot::SnapshotError;
use crate::host::vmm::{qemu, qemu_snapshot, RunDir};
use crate::manifest::{Resource, VmSpec, VmState, Vmm};
use crate::state::StateStore;

fn check(s: String) -> ResourceError {
    ResourceError::Check(s)
}

fn outputs(ctx: &Ctx, addr: &Address) -> Result<VmOutputs, ResourceError> {
    let rec = ctx.record(addr)?.ok_or_else(|| {
        check(format!(
            "{addr} is not recorded in state: run fort apply first"
        ))
    })?;
    super::super::asset::outputs(addr, &rec.outputs)
}

/// Record the VM's outputs without a crash point (the checkpoint commands' steps are not in
/// the crash matrix; their intent fields make a crash anywhere recoverable).
fn record(ctx: &Ctx, addr: &Address, step: &str, out: &VmOutputs) -> Result<(), ResourceError> {
    let v = serde_json::to_value(out).map_err(|e| check(e.to_string()))?;
    ctx.with_store(|s| s.progress(addr, &v, step))
}

fn note(ctx: &Ctx, addr: &Address, action: &str, detail: &str) -> Result<(), ResourceError> {
    ctx.with_store(|s| s.note(addr, None, action, detail))
}

/// Checkpoints are QEMU's: Firecracker's snapshots are driven for `paused` and `suspended`
/// only (a checkpoint also copies the drives while the vCPUs are stopped, not built for it).
fn require_qemu(addr: &Address, vmm: Vmm) -> Result<(), ResourceError> {
    if vmm != Vmm::Qemu {
        return Err(check(format!(
            "{addr}: checkpoints (fort snapshot, fort restore) need vmm = \"qemu\": with Firecracker, fort drives snapshots only for state = \"paused\" and \"suspended\" (docs/snapshots.md)"
        )));
    }
    Ok(())
}

/// The VM's drives as `(name, file)`: root first, then data drives in manifest order.
fn drive_files(ctx: &Ctx, spec: &VmSpec) -> Result<Vec<(String, PathBuf)>, ResourceError> {
    std::iter::once(&spec.root)
        .chain(spec.drives.iter())
        .map(|d| Ok((d.clone(), steps::drive_path(ctx, d)?)))
        .collect()
}

/// The VM's checkpoints, oldest first.
pub fn list(ctx: &Ctx, addr: &Address) -> Result<Vec<Checkpoint>, ResourceError> {
    files::list(&ctx.state_dir, &addr.name).map_err(|e| check(error_chain(&e)))
}

/// Remove all but the newest `keep`; the labels removed.
pub fn prune(ctx: &Ctx, addr: &Address, keep: usize) -> Result<Vec<String>, ResourceError> {
    let removed =
        files::prune(&ctx.state_dir, &addr.name, keep).map_err(|e| check(error_chain(&e)))?;
    if !removed.is_empty() {
        note(
            ctx,
            addr,
            "prune",
            &format!("checkpoints removed: {}", removed.join(", ")),
        )?;
    }
    Ok(removed)
}

fn find(ctx: &Ctx, addr: &Address, label: &str) -> Result<Checkpoint, ResourceError> {
    let all = list(ctx, addr)?;
    if let Some(c) = all.iter().find(|c| c.label == label) {
        return Ok(c.clone());
    }
    let have: Vec<&str> = all.iter().map(|c| c.label.as_str()).collect();
    Err(check(format!(
        "{addr} has no checkpoint \"{label}\" ({})",
        if have.is_empty() {
            "it has none".to_string()
        } else {
            format!("it has: {}", have.join(", "))
        }
    )))
}

/// Take checkpoint `label` (default: the time) of the running VM; then prune to its `keep`.
/// Returns it and the labels pruned. On error the VM runs on and nothing of it is left.
pub async fn take(
    ctx: &Ctx,
    desired: &Resource,
    label: Option<String>,
) -> Result<(Checkpoint, Vec<String>), ResourceError> {
    let addr = &desired.address;
    let spec = spec_of(desired)?;
    require_qemu(addr, spec.vmm)?;
    let label = label.unwrap_or_else(|| files::default_label(crate::host::snapshot::now_unix()));
    files::validate_label(&label).map_err(|e| check(format!("{addr}: {e}")))?;
    let mut out = outputs(ctx, addr)?;
    if !out.started.is_some_and(|s| s.alive()) || out.vmm != "qemu" {
        return Err(check(format!(
            "{addr} is not running: a checkpoint is taken of a running VM (fort apply starts it)"
        )));
    }
    let (dest, tmp) = files::dirs(&ctx.state_dir, &addr.name, &label);
    if dest.exists() {
        return Err(check(format!(
            "{addr} already has a checkpoint \"{label}\" ({}): choose another --name, or remove the old ones with --prune",
            dest.display()
        )));
    }
    let drives = drive_files(ctx, spec)?;
    out.snapshotting = Some(tmp.clone());
    record(ctx, addr, "vm.checkpoint-intent", &out)?;
    let made = write(&out, spec, &tmp, &dest, drives, &addr.name).await;
    // Whatever happened, the temporary directory is gone and the VM runs.
    let _ = crate::host::snapshot::remove(&tmp);
    out.snapshotting = None;
    record(ctx, addr, "vm.checkpoint-done", &out)?;
    let back = if out.paused {
        Ok(())
    } else {
        agent_back(addr, &out).await
    };
    let cp = made?;
    back?;
    note(
        ctx,
        addr,
        "checkpoint",
        &format!("checkpoint \"{label}\": {}", cp.summary()),
    )?;
    let pruned = match spec.keep {
        Some(k) => prune(ctx, addr, k as usize)?,
        None => Vec::new(),
    };
    Ok((cp, pruned))
}

/// Does the agent answer a ping within `wait`?
async fn answers(out: &VmOutputs, wait: Duration) -> bool {
    use crate::host::agent::{Client, Endpoint};
    let ep = Endpoint::VsockUds(out.vsock_uds.clone());
    let end = Instant::now() + wait;
    while Instant::now() < end {
        let once = async {
            let c = Client::connect(&ep, Duration::from_secs(2)).await.ok()?;
            c.request("ping", serde_json::json!({})).await.ok()
        };
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), once).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// After the vsock device was plugged back into a running guest (a checkpoint, a failed
/// suspend): wait until its agent answers again. A guest that missed the hot-plug (seen once
/// under TCG after a failed suspend: no PCI enumeration, every connection reset) gets the
/// device unplugged and plugged again, once.
pub(super) async fn agent_back(addr: &Address, out: &VmOutputs) -> Result<(), ResourceError> {
    // No connection before the guest's agent says hello from the new device (it does when
    // the device binds; see host::agent_ready): an earlier one can stall vhost-device-vsock.
    let mut gate = super::steps::ready_gate(out, super::steps::RESTORE_FALLBACK);
    while !gate.passed() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(gate);
    if answers(out, Duration::from_secs(10)).await {
        return Ok(());
    }
    tracing::warn!("{addr}: the agent does not answer after the vsock device was plugged back: plugging it again");
    let run = out.run_dir.clone();
    blocking(move || qemu_snapshot::replug_vsock(&run)).await?;
    if answers(out, Duration::from_secs(30)).await {
        return Ok(());
    }
    Err(check(format!(
        "{addr}: the guest agent does not answer since its vsock device was plugged back (the VM runs; console log: {})",
        out.console_log.display()
    )))
}

async fn write(
    out: &VmOutputs,
    spec: &VmSpec,
    tmp: &std::path::Path,
    dest: &std::path::Path,
    drives: Vec<(String, PathBuf)>,
    vm: &str,
) -> Result<Checkpoint, ResourceError> {
    crate::host::snapshot::remove(tmp).map_err(|e| check(error_chain(&e)))?;
    std::fs::create_dir_all(tmp).map_err(|e| ResourceError::io("cannot create", tmp, e))?;
    let (run, t, memory) = (out.run_dir.clone(), tmp.to_path_buf(), spec.memory);
    let stream = blocking(move || {
        let t2 = t.clone();
        qemu_snapshot::checkpoint(&run, &t, memory, move || {
            files::copy_drives(&t2, &drives).map_err(|e| {
                SnapshotError::Failed(format!("cannot copy the drives: {}", error_chain(&e)))
            })
        })
    })
    .await?;
    let meta = stream.meta(vm, out.booted.clone().unwrap_or_default());
    let (t, d) = (tmp.to_path_buf(), dest.to_path_buf());
    blocking(move || crate::host::snapshot::commit(&t, &d, &meta)).await?;
    files::read(dest).map_err(|e| check(error_chain(&e)))
}

/// Put the VM back to checkpoint `label`: refused (nothing touched) if the checkpoint does not
/// match the VM's spec or QEMU, is corrupt, or would overwrite a protected drive without
/// `allow_data_loss`; else the VM's processes are killed, its drives replaced by the
/// checkpoint's, and the checkpoint's memory loaded and continued.
pub async fn restore(
    ctx: &Ctx,
    desired: &Resource,
    label: &str,
    protected: &[String],
    allow_data_loss: bool,
) -> Result<Checkpoint, ResourceError> {
    let addr = &desired.address;
    let spec = spec_of(desired)?;
    require_qemu(addr, spec.vmm)?;
    if spec.state != VmState::Running {
        return Err(check(format!(
            "{addr}: fort restore needs state = \"running\" in the manifest (it is \"{}\")",
            serde_json::to_value(spec.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        )));
    }
    let cp = find(ctx, addr, label)?;
    let want = steps::restart_relevant(&desired.spec_json());
    if let Some(why) = cp.meta.mismatch(&want, "qemu", &qemu::version()) {
        return Err(check(format!(
            "{addr}: checkpoint \"{label}\" cannot be restored: {why}"
        )));
    }
    let age = humantime::format_duration(Duration::from_secs(
        crate::host::snapshot::now_unix().saturating_sub(cp.meta.created_unix),
    ));
    if !allow_data_loss {
        if let Some(d) = drive_names(spec).find(|d| protected.contains(d)) {
            return Err(check(format!(
                "refused: drive.{d} is protected (protect = true) and restoring {addr} to checkpoint \"{label}\" would put back its contents of {age} ago, losing its newer data; re-run with --allow-data-loss if that is what you want"
            )));
        }
    }
    // Checked before anything stops: a corrupt checkpoint leaves the VM as it was.
    let (dir, meta, memory) = (cp.dir.clone(), cp.meta.clone(), spec.memory);
    blocking(move || qemu_snapshot::verify(&dir, &meta, memory))
        .await
        .map_err(|e| {
            check(format!(
                "cannot restore {addr} to checkpoint \"{label}\": {e}; the VM was not touched"
            ))
        })?;
    let mut out = outputs(ctx, addr)?;
    out.restoring = Some(label.to_string());
    record(ctx, addr, "vm.restore-intent", &out)?;
    put_back(ctx, desired, spec, &mut out, &cp, want).await?;
    note(
        ctx,
        addr,
        "restore",
        &format!("restored to checkpoint \"{label}\" ({age} old)"),
    )?;
    Ok(cp)
}

fn drive_names(spec: &VmSpec) -> impl Iterator<Item = &String> {
    std::iter::once(&spec.root).chain(spec.drives.iter())
}

/// Kill, put the drives back, load, continue; `out.restoring` is cleared when the guest runs
/// again (or when the load failed: the VM then boots from the checkpoint's drives).
async fn put_back(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    cp: &Checkpoint,
    want: serde_json::Value,
) -> Result<(), ResourceError> {
    let addr = &desired.address;
    kill(ctx, addr, out).await?;
    let drives = drive_files(ctx, spec)?;
    let c = cp.clone();
    blocking(move || files::put_back(&c, &drives)).await?;
    let loaded = snapshot::load(ctx, desired, spec, out, want, &cp.dir, &cp.meta).await;
    let t0 = match loaded {
        Ok(t) => t,
        Err(e) => {
            kill(ctx, addr, out).await?;
            out.restoring = None;
            record(ctx, addr, "vm.restore-failed", out)?;
            return Err(check(format!(
                "{addr}: {}: its drives are the checkpoint's; fort apply boots it from them",
                error_chain(&e)
            )));
        }
    };
    let t1 = Instant::now();
    snapshot::run_loaded(addr, spec, out, t0).await?;
    tracing::info!(
        "{addr}: restored to checkpoint \"{}\" in {} ms ({} ms after the load)",
        cp.label,
        t0.elapsed().as_millis(),
        t1.elapsed().as_millis()
    );
    out.restoring = None;
    record(ctx, addr, "vm.restored", out)
}

/// End the VM's processes at once (no shutdown: its memory and drives are about to be
/// replaced), recorded.
async fn kill(ctx: &Ctx, addr: &Address, out: &mut VmOutputs) -> Result<(), ResourceError> {
    if let Some(s) = out.started {
        let _ = tokio::task::spawn_blocking(move || s.kill(Duration::from_secs(5))).await;
    }
    if let Some(h) = out.helper {
        let _ = tokio::task::spawn_blocking(move || h.terminate(Duration::from_secs(2))).await;
    }
    let _ = std::fs::remove_file(RunDir(&out.run_dir).pid());
    out.started = None;
    out.helper = None;
    out.booted = None;
    out.paused = false;
    out.mounts.clear();
    ctx.step(addr, Point::VmStopped, out)
}

/// At the start of every apply of the VM: an interrupted restore is done again from the start
/// (if its checkpoint is gone or no longer fits, the VM is left stopped and boots from its
/// drives), and checkpoints beyond `keep` are removed.
pub(super) async fn on_apply(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    let addr = &desired.address;
    if let Some(label) = out.restoring.clone() {
        let want = steps::restart_relevant(&desired.spec_json());
        let again = match find(ctx, addr, &label) {
            Ok(cp) => match cp.meta.mismatch(&want, "qemu", &qemu::version()) {
                None => put_back(ctx, desired, spec, out, &cp, want).await,
                Some(why) => Err(check(format!("it cannot be restored: {why}"))),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = again {
            tracing::warn!(
                "{addr}: the interrupted restore of checkpoint \"{label}\" cannot be finished ({}): it boots from its drives",
                error_chain(&e)
            );
            kill(ctx, addr, out).await?;
            out.restoring = None;
            record(ctx, addr, "vm.restore-failed", out)?;
        }
    }
    if let Some(k) = spec.keep {
        prune(ctx, addr, k as usize)?;
    }
    Ok(())
}

/// The VMs (`vm.NAME`) a manifest's protected drives belong to are refused a restore without
/// `--allow-data-loss`: the names of those drives.
pub fn protected_drives(resources: &std::collections::BTreeMap<Address, Resource>) -> Vec<String> {
    resources
        .values()
        .filter(|r| r.address.kind == Kind::Drive)
        .filter(|r| matches!(&r.spec, crate::manifest::Spec::Drive(d) if d.protect))
        .map(|r| r.address.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checkpoints_are_refused_for_firecracker_in_words() {
        let a = Address::new(Kind::Vm, "a");
        let cases = [
            (Vmm::Qemu, None),
            (
                Vmm::Firecracker,
                Some("vm.a: checkpoints (fort snapshot, fort restore) need vmm = \"qemu\": with Firecracker, fort drives snapshots only for state = \"paused\" and \"suspended\" (docs/snapshots.md)"),
            ),
        ];
        for (vmm, want) in cases {
            let got = require_qemu(&a, vmm).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{vmm:?}");
        }
    }
}

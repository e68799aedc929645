//! Warm start (`[template.T] warm = true`): a new VM of T is restored from a snapshot of one
//! booted VM of T instead of booting, then given its own identity. The snapshot
//! (`host::warm`) is made the first time a VM of that template, shape and VMM build starts:
//! that VM's own processes (its uid, its cgroup; with Firecracker its jail) boot a builder —
//! the template's image cloned into the snapshot's temporary directory, a NIC that reaches
//! nothing, no data drives — wait for its agent, save it, and end. Every VM then gets the
//! builder's root image by reflink over its fresh root drive, its own TAP, vsock device and,
//! through the agent, hostname, MAC and address, machine-id, clock and entropy.
//!
//! This is the VMM-neutral driver, with QEMU's save and load; Firecracker's (jailed only)
//! are in `warm_fc`.
//!
//! Only a VM's first start is warm: after that its root drive holds what it wrote, and it
//! boots from it like any VM.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::super::drive::DriveOutputs;
use super::super::template::TemplateOutputs;
use super::super::{blocking, Ctx, ResourceError};
use super::{confine, steps, warm_fc, VmOutputs};
use crate::address::{Address, Kind};
use crate::crash::Point;
use crate::host::image::clone;
use crate::host::snapshot::{self, Meta};
use crate::host::vmm::{qemu_snapshot, NetConfig, RunDir, Started, Vmm as Backend};
use crate::host::warm;
use crate::manifest::{Resource, VmSpec, Vmm};

/// The builder's MAC: every clone replaces it with its own.
const BUILDER_MAC: &str = "02:fc:ff:ff:ff:01";
const BUILDER_HOSTNAME: &str = "fort-warm";

fn err(e: impl std::error::Error + 'static) -> ResourceError {
    ResourceError::Check(super::super::error_chain(&e))
}

/// What the warm snapshot of `template` for this VM's shape is made of (its key's input):
/// the VMM and its build are in it, so a QEMU and a Firecracker VM of one template never
/// share a snapshot.
fn inputs(
    ctx: &Ctx,
    spec: &VmSpec,
    template: &str,
    vmm: &dyn Backend,
) -> Result<(Value, TemplateOutputs), ResourceError> {
    let t = Address::new(Kind::Template, template);
    let trec = ctx.applied(&t)?;
    let tout: TemplateOutputs = super::super::asset::outputs(&t, &trec.outputs)?;
    let (kernel, cmdline) = steps::kernel(ctx, spec)?;
    let d = Address::new(Kind::Drive, &spec.root);
    let drec = ctx.applied(&d)?;
    let dout: DriveOutputs = super::super::asset::outputs(&d, &drec.outputs)?;
    let v = json!({
        "template": template,
        "template_key": tout.key,
        "image": tout.image,
        "kernel": kernel.kernel.path,
        "initrd": kernel.initrd.as_ref().map(|i| &i.path),
        "cmdline": cmdline,
        "vcpus": spec.vcpus,
        "memory": spec.memory,
        "root_size": dout.size,
        "nic": spec.network.is_some(),
        "vmm": vmm.name(),
        "vmm_version": vmm.version(),
    });
    Ok((v, tout))
}

/// Start the fresh VM `desired` from its template's warm snapshot (made now if there is
/// none). On error the caller stops what runs and boots the VM instead.
pub(super) async fn start(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    want: Value,
    template: &str,
) -> Result<(), ResourceError> {
    let addr = &desired.address;
    if spec.vmm == Vmm::Firecracker {
        warm_fc::check(ctx, spec)?;
    }
    let vmm: Arc<dyn Backend> = super::backend::of(ctx, spec)?.into();
    let version = vmm.version();
    let (inputs, tout) = inputs(ctx, spec, template, vmm.as_ref())?;
    let key = warm::key(&inputs);
    let (dest, _) = warm::dirs(&ctx.state_dir, &key);
    let state = ctx.state_dir.clone();
    let k = key.clone();
    let lock = blocking(move || warm::lock(&state, &k)).await?;
    warm::collect_garbage(&ctx.state_dir, template, &tout.key);
    let meta = match warm::usable(&dest, &inputs, vmm.name(), &version) {
        Some(m) => m,
        None => {
            tracing::info!("{addr}: making template.{template}'s warm snapshot (one boot)");
            build(ctx, desired, spec, out, &inputs, &key, &tout, vmm).await?
        }
    };
    // The root image is cloned while the lock keeps the snapshot from being replaced.
    let root = steps::drive_path(ctx, &spec.root)?;
    let src = dest.join(warm::ROOT_FILE);
    blocking(move || install_root(&src, &root)).await?;
    drop(lock);

    let loaded = match spec.vmm {
        Vmm::Qemu => super::snapshot::load(ctx, desired, spec, out, want, &dest, &meta).await,
        // Loaded and resumed: nothing is marked between, a warm snapshot serves every clone.
        Vmm::Firecracker => warm_fc::clone(ctx, desired, spec, out, want, &dest, &meta).await,
    };
    let t0 = match loaded {
        Ok(t0) => t0,
        Err(e) => {
            // A snapshot that does not load is of no use to the next VM either.
            let state = ctx.state_dir.clone();
            let _ = blocking(move || {
                let _l = warm::lock(&state, &key)?;
                snapshot::remove(&dest)
            })
            .await;
            return Err(ResourceError::Check(format!(
                "cannot start from template.{template}'s warm snapshot: {}",
                super::super::error_chain(&e)
            )));
        }
    };
    let loaded = t0.elapsed();
    let gate = if spec.vmm == Vmm::Qemu {
        let gate = steps::ready_gate(out, steps::RESTORE_FALLBACK);
        let run = out.run_dir.clone();
        blocking(move || qemu_snapshot::resume(&run)).await?;
        Some(gate)
    } else {
        // No hello to wait for: Firecracker resets the guest's vsock device on load, the
        // agent's listening socket survives it.
        None
    };
    let (mounts, client) = steps::wait_ready_client(spec, out, gate).await?;
    out.mounts = mounts;
    let ready = t0.elapsed();
    let me = identity(desired, spec, out);
    super::identity::identify(addr, out, me, Some(client)).await;
    // Ready once it is itself: its address, hostname and entropy are the builder's before.
    out.boot_ms = Some(t0.elapsed().as_millis() as u64);
    // Where the time goes (docs/benchmarks.md).
    tracing::info!(
        "{addr}: started warm from template.{template} in {} ms: attached, VMM started and state loaded {} ms, agent answered {} ms, identity {} ms",
        t0.elapsed().as_millis(),
        loaded.as_millis(),
        (ready - loaded).as_millis(),
        (t0.elapsed() - ready).as_millis()
    );
    Ok(())
}

/// The clone's own identity, for `fort/identity`.
fn identity(desired: &Resource, spec: &VmSpec, out: &VmOutputs) -> Value {
    let mut id = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut id);
    }
    let mut v = json!({
        "hostname": desired.address.name,
        "machine_id": hex::encode(id),
    });
    if let Some(a) = &out.network {
        v["network"] = json!({
            "mac": spec.mac.clone().unwrap_or_else(|| a.mac.clone()),
            "ip": format!("{}/{}", a.ip, a.prefix),
            "gateway": a.gateway.to_string(),
            "dns": a.dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
    }
    v
}

/// Put a clone of the builder's root image in place of the VM's fresh root drive.
fn install_root(src: &Path, drive: &Path) -> Result<(), clone::CloneError> {
    let tmp = drive.with_extension("ext4.warm");
    let _ = std::fs::remove_file(&tmp);
    let done = clone::clone_file(src, &tmp).and_then(|_| {
        std::fs::rename(&tmp, drive).map_err(|source| clone::CloneError::Io {
            what: "cannot install",
            path: drive.to_path_buf(),
            source,
        })
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// What a builder's save left: QEMU's stream, still to be committed; Firecracker's snapshot,
/// committed by its driver (`warm_fc::save`).
enum Saved {
    Stream(qemu_snapshot::Stream),
    Committed(Meta),
}

/// Boot the builder with this VM's processes (recorded in its row as they start, so a
/// killed fort leaves them to the next apply, which stops them: they run no spec), save it
/// into `KEY.tmp/` and commit. The caller holds the key's lock.
#[allow(clippy::too_many_arguments)]
async fn build(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    inputs: &Value,
    key: &str,
    tout: &TemplateOutputs,
    vmm: Arc<dyn Backend>,
) -> Result<Meta, ResourceError> {
    let addr = &desired.address;
    let (dest, tmp) = warm::dirs(&ctx.state_dir, key);
    snapshot::remove(&tmp).map_err(err)?;
    std::fs::create_dir_all(&tmp).map_err(|e| ResourceError::io("cannot create", &tmp, e))?;
    let root = tmp.join(warm::ROOT_FILE);
    let size = inputs["root_size"].as_u64().unwrap_or(0);
    let (img, r) = (tout.image.clone(), root.clone());
    blocking(move || {
        clone::clone_file(&img, &r)?;
        let len = std::fs::metadata(&r).map(|m| m.len()).unwrap_or(0);
        clone::grow(&r, size, len, || {})?;
        Ok::<_, clone::CloneError>(())
    })
    .await?;

    // The VM's attachment is its clone's; the builder's NIC is on no network.
    steps::attach(ctx, desired, spec, out).await?;
    let mut cfg = steps::config(ctx, desired, spec, out)?;
    let (_, base) = steps::kernel(ctx, spec)?;
    cfg.cmdline = format!("{base} fort.hostname={BUILDER_HOSTNAME}");
    cfg.root = root.clone();
    cfg.drives.clear();
    cfg.serials.clear();
    // QEMU: `-netdev hubport` on a hub of its own. Firecracker opens the `host_dev_name` it
    // is given as it configures the NIC (a confined one cannot create a TAP), so it gets the
    // VM's own, attached anyway: the builder has no address and the agent brings eth0 up only
    // with one (`fort.ip`), so nothing leaves it; each clone's load names its own TAP.
    cfg.net = cfg.net.map(|n| NetConfig {
        tap: match spec.vmm {
            Vmm::Qemu => String::new(),
            Vmm::Firecracker => n.tap,
        },
        mac: BUILDER_MAC.to_string(),
    });
    cfg.confine = confine::prepare(ctx, addr, spec, out, &cfg)?;
    // The image leaves with the snapshot: it is not one of the VM's drives.
    out.owned.retain(|p| p != &root);
    vmm.check(&cfg).map_err(err)?;
    RunDir(&cfg.run_dir).prepare().map_err(err)?;

    let built = async {
        let (v, c) = (vmm.clone(), cfg.clone());
        out.helper = steps::blocking(move || v.start_helper(&c)).await?;
        if out.helper.is_some() {
            ctx.step(addr, Point::VmHelper, out)?;
        }
        let (v, c) = (vmm.clone(), cfg.clone());
        let proc = steps::blocking(move || v.start_vmm(&c)).await?;
        out.started = Some(Started {
            vmm: proc,
            helper: out.helper.take(),
        });
        // Runs no spec of the VM's: an apply that finds it (fort was killed) stops it.
        out.booted = Some(json!({ "warm_builder": key }));
        ctx.step(addr, Point::VmSpawned, out)?;
        steps::wait_ready(spec, out).await?;
        match spec.vmm {
            Vmm::Qemu => {
                let (run, t, memory) = (out.run_dir.clone(), tmp.clone(), spec.memory);
                blocking(move || qemu_snapshot::suspend(&run, &t, memory))
                    .await
                    .map(Saved::Stream)
            }
            Vmm::Firecracker => {
                // The image is fort's again before the snapshot is committed with it (the
                // builder's open file is unaffected).
                crate::host::confine::files::own(&root, 0, 0, 0o600).map_err(err)?;
                let version = vmm.version();
                warm_fc::save(out, &tmp, &dest, inputs, &version)
                    .await
                    .map(Saved::Committed)
            }
        }
    }
    .await;
    let saved = match built {
        Ok(s) => {
            // Saved: the builder's processes end without asking its guest.
            if let Some(p) = out.started.take() {
                let _ =
                    tokio::task::spawn_blocking(move || p.kill(std::time::Duration::from_secs(5)))
                        .await;
            }
            out.helper = None;
            out.booted = None;
            ctx.step(addr, Point::VmStopped, out)?;
            s
        }
        Err(e) => {
            steps::stop(ctx, addr, out).await?;
            let _ = snapshot::remove(&tmp);
            return Err(ResourceError::Check(format!(
                "cannot make the warm snapshot of template.{}: {}",
                inputs["template"].as_str().unwrap_or("?"),
                super::super::error_chain(&e)
            )));
        }
    };
    let stream = match saved {
        Saved::Committed(meta) => return Ok(meta),
        Saved::Stream(s) => s,
    };
    crate::host::confine::files::own(&root, 0, 0, 0o600).map_err(err)?;
    let meta = stream.meta(&builder_name(inputs), inputs.clone());
    let (t, d, m) = (tmp.clone(), dest.clone(), meta.clone());
    blocking(move || snapshot::commit(&t, &d, &m)).await?;
    Ok(meta)
}

/// What a warm snapshot's `snapshot.json` says it is of: `template.T`.
pub(super) fn builder_name(inputs: &Value) -> String {
    format!("template.{}", inputs["template"].as_str().unwrap_or("?"))
}

/// What the plan says of a VM that starts warm, or of one of a warm template that boots and
/// why (only a first start is warm, so only a create says either).
pub(super) fn plan_details(spec: &VmSpec, op: crate::plan::Op) -> Vec<String> {
    match (&spec.warm, &spec.not_warm, op) {
        (Some(t), _, crate::plan::Op::Create) => vec![format!(
            "starts warm: restored from template.{t}'s snapshot (made by booting one VM of it, if there is none for this shape), then given its own identity"
        )],
        (None, Some(why), crate::plan::Op::Create) => vec![why.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[path = "warm_tests.rs"]
mod tests;

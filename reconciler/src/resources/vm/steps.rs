//! The steps of a VM's apply, each small and recorded as it completes: intent → stop what ran
//! before → attach to the network → confine (uid, cgroup, file owners) → prepare the run dir (rotating the last boot's logs) →
//! spawn the helper → spawn the VMM → wait for the guest agent. The crash points of
//! `crate::crash` sit between each act and its record.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::super::drive::DriveOutputs;
use super::super::kernel::KernelOutputs;
use super::super::network::{attach as net_attach, detach as net_detach, AttachRequest};
use super::super::{Ctx, ResourceError};
use super::{stop as stopping, write_pid_file, TapIntent, VmOutputs};
use crate::address::{Address, Kind};
use crate::crash::Point;
use crate::host::agent::{Client, Endpoint, MountStatus, AGENT_PORT};
use crate::host::agent_ready::ReadyGate;
use crate::host::net::link::Netlink;
use crate::host::vmm::{NetConfig, RunDir, Started, VmConfig};
use crate::manifest::{data_drive_device, drive_serial, Resource, VmSpec, Vmm};
use crate::state::leases::PoolSlot;
use crate::state::StateStore;

/// The spec without the fields that never need a restart (`ports` are host rules, `keep`
/// counts checkpoints).
pub fn restart_relevant(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("state");
        o.remove("restart");
        o.remove("ports");
        // Only how a VM first starts.
        o.remove("warm");
        o.remove("keep");
    }
    v
}

/// Step `vm.intent`: choose the run dir, the CID and the TAP and record them before anything
/// exists.
pub(super) fn intent(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
) -> Result<VmOutputs, ResourceError> {
    let run_dir = ctx.state_dir.join("run").join(&desired.address.name);
    let run = RunDir(&run_dir);
    // The uid is chosen (and held in state) before anything exists, so every later record
    // of the VM names it.
    let uid = if crate::host::confine::enabled() {
        Some(super::confine::uid(ctx, &desired.address)?)
    } else {
        None
    };
    let out = VmOutputs {
        vmm: vmm_name(spec).to_string(),
        vsock_uds: run.vsock(),
        console_log: run.console(),
        cid: allocate_cid(ctx, &desired.address)?,
        tap: tap_intent(spec),
        started: None,
        helper: None,
        network: None,
        boot_ms: None,
        booted: None,
        ports_table: None,
        published: Vec::new(),
        uid,
        cgroup: None,
        owned: Vec::new(),
        mounts: Vec::new(),
        paused: false,
        suspended: None,
        snapshotting: None,
        restoring: None,
        run_dir,
    };
    ctx.step(&desired.address, Point::VmIntent, &out)?;
    Ok(out)
}

fn vmm_name(spec: &VmSpec) -> &'static str {
    match spec.vmm {
        Vmm::Qemu => "qemu",
        Vmm::Firecracker => "firecracker",
    }
}

fn tap_intent(spec: &VmSpec) -> Option<TapIntent> {
    match (&spec.network, &spec.tap) {
        (Some(network), Some(tap)) => Some(TapIntent {
            network: network.clone(),
            tap: tap.clone(),
        }),
        _ => None,
    }
}

/// A CID ≥ 3 derived from the VM's address (stable), moved on past CIDs other VMs hold.
fn allocate_cid(ctx: &Ctx, addr: &Address) -> Result<u32, ResourceError> {
    let mut h: u32 = 0x811c_9dc5;
    for b in addr.to_string().bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let used: Vec<u32> = ctx
        .with_store(|s| s.resources())?
        .values()
        .filter(|r| r.kind == Kind::Vm && &r.address != addr)
        .filter_map(|r| r.outputs.get("cid").and_then(|c| c.as_u64()))
        .map(|c| c as u32)
        .collect();
    let mut cid = 3 + h % 0x3fff_0000;
    while used.contains(&cid) {
        cid += 1;
    }
    Ok(cid)
}

/// Step `vm.stopped`: whatever of the VM runs is stopped (agent, power button, signals).
pub(super) async fn stop(
    ctx: &Ctx,
    addr: &Address,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    if out.started.is_none() && out.helper.is_none() {
        return Ok(());
    }
    if out.paused || super::vcpus::stopped(out).await {
        // A paused guest cannot shut itself down.
        let _ = super::vcpus::resume(out).await;
        out.paused = false;
    }
    stopping::stop(out).await;
    out.started = None;
    out.helper = None;
    out.booted = None;
    // What a stopped VM mounted is history; the next boot reports again.
    out.mounts.clear();
    ctx.step(addr, Point::VmStopped, out)
}

/// Step `vm.attached`: leave a network the VM no longer uses, then lease an address and put
/// the TAP on the bridge (idempotent: an intact attachment is only checked). The TAP's name
/// is recorded before it is created.
pub(super) async fn attach(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    let addr = &desired.address;
    let want = tap_intent(spec);
    if out.tap.is_some() && out.tap != want {
        detach(ctx, addr, out).await?;
    }
    let Some(intent) = want else {
        return Ok(());
    };
    if out.tap.as_ref() != Some(&intent) {
        out.tap = Some(intent.clone());
        ctx.step(addr, Point::VmIntent, out)?;
    }
    let nl = Netlink::connect()?;
    let pool = spec.pool.as_ref().map(|p| PoolSlot {
        pool: &p.pool,
        index: p.index,
        count: 0,
    });
    let a = net_attach(
        ctx,
        &nl,
        &AttachRequest {
            network: &intent.network,
            owner: addr,
            tap: &intent.tap,
            fixed_ip: spec.ip,
            pool,
        },
    )
    .await?;
    if out.network.as_ref() != Some(&a) {
        out.network = Some(a);
        ctx.step(addr, Point::VmAttached, out)?;
    }
    Ok(())
}

/// The reverse of [`attach`], recorded: the TAP is deleted and the lease released.
pub(super) async fn detach(
    ctx: &Ctx,
    addr: &Address,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    if out.tap.is_none() && out.network.is_none() && out.ports_table.is_none() {
        return Ok(());
    }
    detach_quietly(ctx, addr, out).await?;
    ctx.step(addr, Point::VmDetached, out)
}

/// Delete the TAP (if fort made it) and release the lease, from the attachment or, when the
/// crash came before it was recorded, from the intent.
pub(super) async fn detach_quietly(
    ctx: &Ctx,
    addr: &Address,
    out: &mut VmOutputs,
) -> Result<(), ResourceError> {
    // The ports point at the lease: they go first.
    super::ports::unpublish_quietly(out).await?;
    let target = match (&out.network, &out.tap) {
        (Some(a), _) => Some((a.network.clone(), a.tap.clone())),
        (None, Some(t)) => Some((t.network.clone(), t.tap.clone())),
        (None, None) => None,
    };
    if let Some((network, tap)) = target {
        let nl = Netlink::connect()?;
        net_detach(ctx, &nl, &network, addr, &tap).await?;
    }
    out.network = None;
    out.tap = None;
    Ok(())
}

pub(super) fn drive_path(ctx: &Ctx, name: &str) -> Result<PathBuf, ResourceError> {
    let a = Address::new(Kind::Drive, name);
    let rec = ctx.applied(&a)?;
    let out: DriveOutputs = super::super::asset::outputs(&a, &rec.outputs)?;
    Ok(out.path)
}

/// The VM's kernel (and initrd) and the command line its kernel resource gives it.
pub(super) fn kernel(ctx: &Ctx, spec: &VmSpec) -> Result<(KernelOutputs, String), ResourceError> {
    let k = Address::new(Kind::Kernel, &spec.kernel);
    let krec = ctx.applied(&k)?;
    let kernel: KernelOutputs = super::super::asset::outputs(&k, &krec.outputs)?;
    let base = krec
        .spec
        .get("cmdline")
        .and_then(|c| c.as_str())
        .unwrap_or(crate::manifest::DEFAULT_CMDLINE)
        .to_string();
    Ok((kernel, base))
}

/// Everything the VMM needs, from the records of the VM's dependencies and its attachment.
pub(super) fn config(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &VmOutputs,
) -> Result<VmConfig, ResourceError> {
    let (kernel, base_cmdline) = kernel(ctx, spec)?;
    let mut cmdline = format!("{base_cmdline} fort.hostname={}", desired.address.name);
    if let Some(a) = &out.network {
        cmdline.push_str(&format!(
            " fort.ip={}/{} fort.gw={}",
            a.ip, a.prefix, a.gateway
        ));
        if !a.dns.is_empty() {
            let dns: Vec<String> = a.dns.iter().map(ToString::to_string).collect();
            cmdline.push_str(&format!(" fort.dns={}", dns.join(",")));
        }
    }
    cmdline.push_str(&mount_params(spec));
    Ok(VmConfig {
        name: desired.address.name.clone(),
        run_dir: out.run_dir.clone(),
        kernel: kernel.kernel.path.clone(),
        initrd: kernel.initrd.as_ref().map(|i| i.path.clone()),
        cmdline,
        root: drive_path(ctx, &spec.root)?,
        drives: spec
            .drives
            .iter()
            .map(|d| drive_path(ctx, d))
            .collect::<Result<_, _>>()?,
        serials: spec.drives.iter().map(|d| drive_serial(d)).collect(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory / (1 << 20),
        net: out.network.as_ref().map(|a| NetConfig {
            tap: a.tap.clone(),
            mac: spec.mac.clone().unwrap_or_else(|| a.mac.clone()),
        }),
        cid: out.cid,
        confine: None,
    })
}

/// ` fort.mount=DRIVE:SERIAL:DEVICE:PATH[:OPTIONS]` per mounted drive (docs/guest-agent.md):
/// the agent finds the disk by SERIAL, else (Firecracker gives none) by DEVICE, the name its
/// place in `drives` gives it. Validation keeps `:` and spaces out of every part.
pub(super) fn mount_params(spec: &VmSpec) -> String {
    let mut out = String::new();
    for m in &spec.mounts {
        let Some(i) = spec.drives.iter().position(|d| *d == m.drive) else {
            continue;
        };
        out.push_str(&format!(
            " fort.mount={}:{}:{}:{}",
            m.drive,
            drive_serial(&m.drive),
            data_drive_device(i),
            m.path
        ));
        if let Some(o) = &m.options {
            out.push(':');
            out.push_str(o);
        }
    }
    out
}

pub(super) use super::super::blocking;

/// Everything before a VMM starts: attached, ports published, confined, run dir prepared;
/// the VMM's config and backend.
pub(super) async fn prepare_boot(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
) -> Result<(VmConfig, std::sync::Arc<dyn crate::host::vmm::Vmm>), ResourceError> {
    let addr = &desired.address;
    attach(ctx, desired, spec, out).await?;
    super::ports::publish(ctx, addr, spec, out).await?;
    let mut cfg = config(ctx, desired, spec, out)?;
    cfg.confine = super::confine::prepare(ctx, addr, spec, out, &cfg)?;
    let vmm: std::sync::Arc<dyn crate::host::vmm::Vmm> = super::backend::of(ctx, spec)?.into();
    // The VMM that runs the VM from now on (the manifest may have changed it).
    out.vmm = vmm.name().to_string();
    vmm.check(&cfg)
        .map_err(|e| ResourceError::Check(super::super::error_chain(&e)))?;
    RunDir(&cfg.run_dir)
        .prepare()
        .map_err(|e| ResourceError::Check(super::super::error_chain(&e)))?;
    Ok((cfg, vmm))
}

/// Attach, prepare the run dir, spawn the helper and the VMM (each recorded the moment it
/// runs), and wait until the agent answers. `out` is left describing what runs.
pub(super) async fn boot(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    out: &mut VmOutputs,
    booted: serde_json::Value,
) -> Result<(), ResourceError> {
    let addr = &desired.address;
    let (cfg, vmm) = prepare_boot(ctx, desired, spec, out).await?;
    let t0 = Instant::now();

    let (v, c) = (vmm.clone(), cfg.clone());
    out.helper = blocking(move || v.start_helper(&c)).await?;
    if out.helper.is_some() {
        ctx.step(addr, Point::VmHelper, out)?;
    }
    let (v, c) = (vmm.clone(), cfg.clone());
    let proc = blocking(move || v.start_vmm(&c)).await?;
    out.started = Some(Started {
        vmm: proc,
        helper: out.helper.take(),
    });
    out.booted = Some(booted);
    out.boot_ms = None;
    ctx.step(addr, Point::VmSpawned, out)?;
    write_pid_file(out)?;

    out.mounts = wait_ready(spec, out).await?;
    warn_unmounted(addr, &out.mounts);
    out.boot_ms = Some(t0.elapsed().as_millis() as u64);
    Ok(())
}

fn boot_timeout(slow: bool) -> Duration {
    std::env::var("FORT_BOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(if slow { 180 } else { 60 }))
}

/// Wait until the guest agent answers a `ping`, failing early when the VMM died or reported
/// a fatal problem in this boot's log. Does not stop anything: the caller does.
/// Say which drives the agent could not mount (they are recorded too, for `fort status`).
pub(super) fn warn_unmounted(addr: &Address, mounts: &[MountStatus]) {
    for m in mounts {
        if let Some(e) = &m.error {
            tracing::warn!(
                "{addr}: drive.{} is not mounted at {}: {e}",
                m.drive,
                m.path
            );
        }
    }
}

/// The agent's mount reports come with its answer. A booting guest is connected to once
/// its vsock device is surely up (see `host::agent_ready`).
pub(super) async fn wait_ready(
    spec: &VmSpec,
    out: &VmOutputs,
) -> Result<Vec<MountStatus>, ResourceError> {
    let slow = out.vmm == "qemu" && !crate::host::vmm::hardware_kvm();
    let gate = ready_gate(out, boot_timeout(slow) / 3);
    wait_ready_with(spec, out, Some(gate)).await
}

/// How long a restored guest's gate waits for its hello before connecting anyway (an agent
/// too old to say hello again after a restore): its vsock device is long up by then.
pub(super) const RESTORE_FALLBACK: Duration = Duration::from_secs(10);

/// The gate a boot waits behind (see `host::agent_ready`), open for `fallback` at most. A
/// restored guest says hello again when its fresh vsock device is bound, so a restore opens
/// it before the guest continues.
pub(super) fn ready_gate(out: &VmOutputs, fallback: Duration) -> ReadyGate {
    let run = RunDir(&out.run_dir);
    ReadyGate::open(&out.vsock_uds, AGENT_PORT, &run.console(), fallback)
}

/// Wait behind `gate` (`None`: connect at once) until the agent answers.
pub(super) async fn wait_ready_with(
    spec: &VmSpec,
    out: &VmOutputs,
    gate: Option<ReadyGate>,
) -> Result<Vec<MountStatus>, ResourceError> {
    wait_ready_client(spec, out, gate).await.map(|(m, _)| m)
}

/// [`wait_ready_with`], keeping the connection that answered (a restore's next request
/// goes on it: a new connection costs a vsock handshake and an `initialize` under TCG).
pub(super) async fn wait_ready_client(
    spec: &VmSpec,
    out: &VmOutputs,
    gate: Option<ReadyGate>,
) -> Result<(Vec<MountStatus>, Client), ResourceError> {
    let Some(started) = out.started else {
        return Err(ResourceError::Check("the VM is not running".into()));
    };
    // Only the backend's log reading is needed here, so no asset lookups.
    let vmm = super::backend::bare(spec.vmm);
    let run = RunDir(&out.run_dir);
    let timeout = boot_timeout(vmm.slow());
    let deadline = Instant::now() + timeout;
    let ep = Endpoint::VsockUds(out.vsock_uds.clone());
    let mut gate = gate.unwrap_or_else(|| ready_gate(out, Duration::ZERO));
    let mut attempt = 0u64;
    loop {
        if let Some(fatal) = vmm.fatal_log(&out.run_dir) {
            return Err(ResourceError::Check(format!(
                "{fatal} (console log: {})",
                run.console().display()
            )));
        }
        if !started.alive() {
            let log = std::fs::read_to_string(run.vmm_log()).unwrap_or_default();
            let last = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(ResourceError::Check(format!(
                "the {} process exited while booting{} (console log: {})",
                vmm.name(),
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {}", last.trim())
                },
                run.console().display()
            )));
        }
        // No connection before the guest's vsock device is surely up (see host::agent_ready).
        if !gate.passed() {
            if Instant::now() > deadline {
                return Err(not_answered(timeout, &run));
            }
            // The checks are cheap (a non-blocking accept, the console's new bytes); a long
            // nap here would be most of a restore's wait for its agent.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        attempt += 1;
        // Each attempt is bounded: a connection the guest accepted but never answers (it was
        // still starting up) must not hold the readiness wait forever. The bound grows (2 s,
        // 4 s, … 16 s): a guest slowed down by a loaded host (TCG) may need longer than the
        // first attempts allow for the vsock handshake, and must not fail every one of them.
        let connect = Duration::from_secs((2 * attempt).min(16));
        let once = async {
            let c = Client::connect(&ep, connect).await.ok()?;
            c.request("ping", serde_json::json!({})).await.ok()?;
            Some((c.mounts(), c))
        };
        if let Ok(Some(ready)) = tokio::time::timeout(connect + Duration::from_secs(3), once).await
        {
            return Ok(ready);
        }
        if Instant::now() > deadline {
            return Err(not_answered(timeout, &run));
        }
    }
}

fn not_answered(timeout: Duration, run: &RunDir) -> ResourceError {
    ResourceError::Check(format!(
        "the guest agent did not answer within {}s (the VM was stopped; console log: {})",
        timeout.as_secs(),
        run.console().display()
    ))
}

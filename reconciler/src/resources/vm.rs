//! `vm.*`: a microVM run by its VMM (Firecracker or QEMU) from its kernel, root and data
//! drives, attached to its network, ready when the guest agent answers. Running VMs are
//! adopted across fort runs (PID + start time); a dead one is drift that apply restarts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::drive::DriveOutputs;
use super::kernel::KernelOutputs;
use super::network::{attach, detach, observe_attachment, AttachRequest, Attachment};
use super::{Ctx, ResourceError, ResourceKind};
use crate::address::{Address, Kind};
use crate::host::agent::{Client, Endpoint};
use crate::host::net::link::Netlink;
use crate::host::vmm::firecracker::Firecracker;
use crate::host::vmm::qemu::Qemu;
use crate::host::vmm::{NetConfig, RunDir, Started, VmConfig};
use crate::manifest::{Resource, Spec, VmSpec, VmState, Vmm};
use crate::plan::{Effect, Observation};
use crate::state::leases::PoolSlot;
use crate::state::{Record, StateStore};

pub struct Vm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmOutputs {
    pub vmm: String,
    pub run_dir: PathBuf,
    /// The hybrid-vsock socket the guest agent is reached through (`fort exec` reads it).
    pub vsock_uds: PathBuf,
    pub console_log: PathBuf,
    pub cid: u32,
    /// The running processes; `None` while stopped.
    pub started: Option<Started>,
    pub network: Option<Attachment>,
    /// Milliseconds from starting the VMM to the agent's first answer.
    pub boot_ms: Option<u64>,
}

fn spec_of(r: &Resource) -> Result<&VmSpec, ResourceError> {
    match &r.spec {
        Spec::Vm(v) => Ok(v),
        _ => Err(ResourceError::Check(format!(
            "{} has no vm spec",
            r.address
        ))),
    }
}

fn backend(ctx: &Ctx, spec: &VmSpec) -> Result<Box<dyn crate::host::vmm::Vmm>, ResourceError> {
    Ok(match spec.vmm {
        Vmm::Qemu => Box::new(Qemu),
        Vmm::Firecracker => {
            let binary = match &spec.firecracker {
                Some(name) => {
                    let a = Address::new(Kind::Firecracker, name);
                    let rec = ctx.applied(&a)?;
                    let path = rec
                        .outputs
                        .get("path")
                        .and_then(|p| p.as_str())
                        .map(PathBuf::from)
                        .ok_or_else(|| ResourceError::Check(format!("{a} has no recorded path")))?;
                    Some(path)
                }
                None => None,
            };
            Box::new(Firecracker { binary })
        }
    })
}

/// The spec without the fields that never need a restart.
fn restart_relevant(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("state");
        o.remove("restart");
    }
    v
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

fn boot_timeout(slow: bool) -> Duration {
    std::env::var("FORT_BOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(if slow { 180 } else { 60 }))
}

/// Ask the agent to power the guest off, then escalate to signals; always leaves the
/// processes gone.
async fn stop(out: &VmOutputs) {
    let Some(started) = out.started else {
        return;
    };
    if started.alive() {
        let ep = Endpoint::VsockUds(out.vsock_uds.clone());
        let asked = async {
            let mut c = Client::connect(&ep, Duration::from_secs(2)).await.ok()?;
            c.call("shutdown", serde_json::json!({})).await.ok()
        };
        let vmm = started.vmm;
        let wait =
            |secs| tokio::task::spawn_blocking(move || vmm.wait_gone(Duration::from_secs(secs)));
        let mut gone = false;
        if tokio::time::timeout(Duration::from_secs(5), asked)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            gone = wait(20).await.unwrap_or(false);
        }
        // No agent (or it did not finish): Ctrl-Alt-Del / the ACPI power button, then signals.
        let poweroff = crate::host::vmm::request_poweroff(&out.run_dir);
        if !gone
            && tokio::time::timeout(Duration::from_secs(3), poweroff)
                .await
                .unwrap_or(false)
        {
            let _ = wait(10).await;
        }
    }
    stop_started(started).await;
    let _ = std::fs::remove_file(RunDir(&out.run_dir).pid());
}

async fn stop_started(started: Started) {
    let _ = tokio::task::spawn_blocking(move || started.kill(Duration::from_secs(5))).await;
}

#[async_trait]
impl ResourceKind for Vm {
    fn kind(&self) -> Kind {
        Kind::Vm
    }

    fn field_effect(&self, field: &str) -> Effect {
        match field {
            "state" | "restart" => Effect::Update,
            _ => Effect::Restart,
        }
    }

    async fn preflight(
        &self,
        _ctx: &Ctx,
        desired: &Resource,
    ) -> Result<Option<String>, ResourceError> {
        let spec = spec_of(desired)?;
        let total = host_memory();
        Ok(total.filter(|t| spec.memory > *t).map(|t| {
            format!(
                "memory {} is more than this host has ({}MiB in total)",
                crate::manifest::units::format_size(spec.memory),
                t >> 20
            )
        }))
    }

    async fn observe(&self, ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError> {
        let out: VmOutputs = super::asset::outputs(&record.address, &record.outputs)?;
        let stopped = record.spec.get("state").and_then(|s| s.as_str()) == Some("stopped");
        let alive = out.started.is_some_and(|s| s.alive());
        if stopped {
            return Ok(if alive {
                Observation::Drifted {
                    what: "it is running but should be stopped".into(),
                }
            } else {
                Observation::Ok
            });
        }
        match out.started {
            None => {
                return Ok(Observation::Missing {
                    what: "it is not running".into(),
                })
            }
            Some(s) if !s.alive() => {
                return Ok(Observation::Missing {
                    what: format!(
                        "its VMM process {} is gone (console log: {})",
                        s.vmm.pid,
                        out.console_log.display()
                    ),
                })
            }
            _ => {}
        }
        if let Some(a) = &out.network {
            let net = Address::new(Kind::Network, &a.network);
            let bridge = format!("fort-{}", a.network);
            let isolated = ctx
                .record(&net)?
                .and_then(|r| r.outputs.get("isolated").and_then(|v| v.as_bool()))
                .unwrap_or(false);
            let nl = Netlink::connect()?;
            if let Some(what) = observe_attachment(&nl, a, &bridge, isolated).await? {
                return Ok(Observation::Drifted { what });
            }
        }
        Ok(Observation::Ok)
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        desired: &Resource,
        recorded: Option<&Record>,
    ) -> Result<serde_json::Value, ResourceError> {
        let spec = spec_of(desired)?;
        let prev: Option<VmOutputs> =
            recorded.and_then(|r| super::asset::outputs(&r.address, &r.outputs).ok());
        let to_json = |o: &VmOutputs| {
            serde_json::to_value(o).map_err(|e| ResourceError::Check(e.to_string()))
        };
        if let (Some(p), Some(r)) = (&prev, recorded) {
            let running = p.started.is_some_and(|s| s.alive());
            if spec.state == VmState::Stopped {
                stop(p).await;
                return to_json(&VmOutputs {
                    started: None,
                    ..p.clone()
                });
            }
            let unchanged = restart_relevant(&r.spec) == restart_relevant(&desired.spec_json());
            if running && unchanged {
                // Adopted as it is: nothing about it needs a restart.
                return to_json(p);
            }
            // Restarting, or starting after a crash: whatever is left of the previous run
            // (e.g. the vsock helper of a VMM that was killed) goes first.
            stop(p).await;
        }
        let run_dir = ctx.state_dir.join("run").join(&desired.address.name);
        let cid = match &prev {
            Some(p) => p.cid,
            None => allocate_cid(ctx, &desired.address)?,
        };
        if spec.state == VmState::Stopped {
            return to_json(&VmOutputs {
                vmm: format!("{:?}", spec.vmm).to_lowercase(),
                vsock_uds: RunDir(&run_dir).vsock(),
                console_log: RunDir(&run_dir).console(),
                run_dir,
                cid,
                started: None,
                network: prev.and_then(|p| p.network),
                boot_ms: None,
            });
        }
        let fresh = prev.is_none();
        let result = boot(ctx, desired, spec, run_dir.clone(), cid).await;
        if result.is_err() && fresh {
            // A VM that never came up leaves nothing behind but its logs.
            if let (Some(net), Some(tap)) = (&spec.network, &spec.tap) {
                if let Ok(nl) = Netlink::connect() {
                    let _ = detach(ctx, &nl, net, &desired.address, tap).await;
                }
            }
        }
        to_json(&result?)
    }

    async fn destroy(&self, ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError> {
        let out: VmOutputs = super::asset::outputs(&recorded.address, &recorded.outputs)?;
        stop(&out).await;
        if let Some(a) = &out.network {
            let nl = Netlink::connect()?;
            detach(ctx, &nl, &a.network, &recorded.address, &a.tap).await?;
        }
        match std::fs::remove_dir_all(&out.run_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ResourceError::io("cannot remove", &out.run_dir, e))
            }
            _ => Ok(()),
        }
    }
}

fn drive_path(ctx: &Ctx, name: &str) -> Result<PathBuf, ResourceError> {
    let a = Address::new(Kind::Drive, name);
    let rec = ctx.applied(&a)?;
    let out: DriveOutputs = super::asset::outputs(&a, &rec.outputs)?;
    Ok(out.path)
}

/// Attach, configure, start and wait until the agent answers.
async fn boot(
    ctx: &Ctx,
    desired: &Resource,
    spec: &VmSpec,
    run_dir: PathBuf,
    cid: u32,
) -> Result<VmOutputs, ResourceError> {
    let k = Address::new(Kind::Kernel, &spec.kernel);
    let krec = ctx.applied(&k)?;
    let kernel: KernelOutputs = super::asset::outputs(&k, &krec.outputs)?;
    let base_cmdline = krec
        .spec
        .get("cmdline")
        .and_then(|c| c.as_str())
        .unwrap_or(crate::manifest::DEFAULT_CMDLINE)
        .to_string();
    let network = match (&spec.network, &spec.tap) {
        (Some(net), Some(tap)) => {
            let nl = Netlink::connect()?;
            let pool = spec.pool.as_ref().map(|p| PoolSlot {
                pool: &p.pool,
                index: p.index,
                count: 0,
            });
            Some(
                attach(
                    ctx,
                    &nl,
                    &AttachRequest {
                        network: net,
                        owner: &desired.address,
                        tap,
                        fixed_ip: spec.ip,
                        pool,
                    },
                )
                .await?,
            )
        }
        _ => None,
    };
    let mut cmdline = format!("{base_cmdline} fort.hostname={}", desired.address.name);
    if let Some(a) = &network {
        cmdline.push_str(&format!(
            " fort.ip={}/{} fort.gw={}",
            a.ip, a.prefix, a.gateway
        ));
        if !a.dns.is_empty() {
            let dns: Vec<String> = a.dns.iter().map(ToString::to_string).collect();
            cmdline.push_str(&format!(" fort.dns={}", dns.join(",")));
        }
    }
    let cfg = VmConfig {
        name: desired.address.name.clone(),
        run_dir: run_dir.clone(),
        kernel: kernel.kernel.path.clone(),
        initrd: kernel.initrd.as_ref().map(|i| i.path.clone()),
        cmdline,
        root: drive_path(ctx, &spec.root)?,
        drives: spec
            .drives
            .iter()
            .map(|d| drive_path(ctx, d))
            .collect::<Result<_, _>>()?,
        vcpus: spec.vcpus,
        memory_mib: spec.memory / (1 << 20),
        net: network.as_ref().map(|a| NetConfig {
            tap: a.tap.clone(),
            mac: spec.mac.clone().unwrap_or_else(|| a.mac.clone()),
        }),
        cid,
    };
    let vmm = backend(ctx, spec)?;
    let slow = vmm.slow();
    let t0 = Instant::now();
    let cfg2 = cfg.clone();
    let (vmm, started) = tokio::task::spawn_blocking(move || {
        let started = vmm.start(&cfg2);
        (vmm, started)
    })
    .await
    .map_err(|e| ResourceError::Check(format!("VMM start task failed: {e}")))?;
    let started = started.map_err(|e| ResourceError::Check(super::error_chain(&e)))?;
    let run = RunDir(&run_dir);
    if let Err(e) = std::fs::write(run.pid(), format!("{}\n", started.vmm.pid)) {
        stop_started(started).await;
        return Err(ResourceError::io("cannot write", &run.pid(), e));
    }
    let out = VmOutputs {
        vmm: vmm.name().to_string(),
        run_dir: run_dir.clone(),
        vsock_uds: run.vsock(),
        console_log: run.console(),
        cid,
        started: Some(started),
        network,
        boot_ms: None,
    };
    let deadline = t0 + boot_timeout(slow);
    let ep = Endpoint::VsockUds(run.vsock());
    loop {
        if let Some(fatal) = vmm.fatal_log(&run_dir) {
            stop(&out).await;
            return Err(ResourceError::Check(format!(
                "{fatal} (console log: {})",
                run.console().display()
            )));
        }
        if !started.alive() {
            stop(&out).await;
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
        // Each attempt is bounded: a connection the guest accepted but never answers (it was
        // still starting up) must not hold the readiness wait forever.
        let attempt = async {
            let mut c = Client::connect(&ep, Duration::from_secs(2)).await.ok()?;
            c.request("ping", serde_json::json!({})).await.ok()
        };
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            break;
        }
        if Instant::now() > deadline {
            stop(&out).await;
            return Err(ResourceError::Check(format!(
                "the guest agent did not answer within {}s (the VM was stopped; console log: {})",
                boot_timeout(slow).as_secs(),
                run.console().display()
            )));
        }
    }
    Ok(VmOutputs {
        boot_ms: Some(t0.elapsed().as_millis() as u64),
        ..out
    })
}

/// MemTotal from /proc/meminfo, in bytes.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

//! `vm.*`: a microVM run by its VMM (Firecracker or QEMU) from its kernel, root and data
//! drives, attached to its network, ready when the guest agent answers. Running VMs are
//! adopted across fort runs (PID + start time); a dead one is drift that apply restarts.
//!
//! Applying is a sequence of named steps (`steps.rs`), each recorded in the VM's row the
//! moment it completes — the intent (run dir, CID, TAP name) before anything exists, every
//! process the moment it is spawned — so a fort killed at any instant leaves a row that says
//! what runs, and the next apply adopts it (its agent answers) or stops it.

mod backend;
pub mod checkpoint;
mod confine;
mod identity;
mod ports;
mod snapshot;
mod snapshot_fc;
mod steps;
mod stop;
mod vcpus;
mod warm;
mod warm_fc;

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::network::{observe_attachment, Attachment};
use super::{Ctx, ResourceError, ResourceKind};
use crate::address::{Address, Kind};
use crate::crash::Point;
use crate::host::net::link::Netlink;
use crate::host::vmm::process::Proc;
use crate::host::vmm::{RunDir, Started};
use crate::manifest::{Resource, Spec, VmSpec, VmState};
use crate::plan::{Change, Effect, Observation, PlanError, PlanOptions};
use crate::state::{Record, Status};

pub use steps::restart_relevant;

pub struct Vm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmOutputs {
    pub vmm: String,
    pub run_dir: PathBuf,
    /// The hybrid-vsock socket the guest agent is reached through (`fort exec` reads it).
    pub vsock_uds: PathBuf,
    pub console_log: PathBuf,
    pub cid: u32,
    /// The TAP this VM makes on its network: recorded before the TAP exists, so a crash
    /// between creating it and recording the attachment still says whose it is.
    #[serde(default)]
    pub tap: Option<TapIntent>,
    /// The running processes; `None` while stopped.
    pub started: Option<Started>,
    /// A helper (vhost-device-vsock) started for a boot whose VMM is not running yet.
    #[serde(default)]
    pub helper: Option<Proc>,
    pub network: Option<Attachment>,
    /// Milliseconds from starting the VMM to the agent's first answer.
    pub boot_ms: Option<u64>,
    /// The spec (without `state` and `restart`) the running processes were started with:
    /// what an adopted VM is compared with.
    #[serde(default)]
    pub booted: Option<serde_json::Value>,
    /// The VM's published-ports table: named before it is created, `None` when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_table: Option<String>,
    /// The ports the table publishes (normal form), once it does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<String>,
    /// The uid (and gid, the same number) the VM's processes run as; `None`: unconfined (fort
    /// is not root, `FORT_CONFINE=0`, or a record from before confinement).
    #[serde(default)]
    pub uid: Option<u32>,
    /// The VM's cgroup, recorded before it is made.
    #[serde(default)]
    pub cgroup: Option<CgroupRecord>,
    /// Drive files given to the VM's uid (root's again when the VM is destroyed).
    #[serde(default)]
    pub owned: Vec<PathBuf>,
    /// fort stopped the VM's vCPUs (`state = "paused"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// The snapshot a suspended VM resumes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<snapshot::SuspendRecord>,
    /// A suspend or a checkpoint in progress: its temporary directory, named before it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshotting: Option<PathBuf>,
    /// A `fort restore` in progress: the checkpoint's label, recorded before anything is
    /// stopped, so an interrupted restore is finished by the next apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restoring: Option<String>,
    /// What the agent reported of its data-drive mounts when this boot became ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::host::agent::MountStatus>,
}

/// A VM's cgroup: its path under each hierarchy's base and its directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRecord {
    pub path: String,
    pub version: u8,
    pub dirs: Vec<PathBuf>,
}

/// A TAP a VM makes (or made) on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapIntent {
    pub network: String,
    pub tap: String,
}

impl VmOutputs {
    /// Is anything of this VM running (the VMM, or a helper started for it)?
    fn has_processes(&self) -> bool {
        self.started
            .is_some_and(|s| s.vmm.alive() || s.helper.is_some_and(|h| h.alive()))
            || self.helper.is_some_and(|h| h.alive())
    }
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

fn to_json(o: &VmOutputs) -> Result<serde_json::Value, ResourceError> {
    serde_json::to_value(o).map_err(|e| ResourceError::Check(e.to_string()))
}

#[async_trait]
impl ResourceKind for Vm {
    fn kind(&self) -> Kind {
        Kind::Vm
    }

    fn plan(
        &self,
        desired: Option<&Resource>,
        recorded: Option<&Record>,
        observed: Option<&Observation>,
        opts: &PlanOptions,
        _notes: &mut Vec<String>,
    ) -> Result<Option<Change>, PlanError> {
        let mut change = crate::plan::standard(self, desired, recorded, observed, opts)?;
        if let (Some(c), Some(Spec::Vm(v))) = (change.as_mut(), desired.map(|d| &d.spec)) {
            if c.op != crate::plan::Op::Destroy {
                c.details = ports::details(v);
                c.details.extend(v.mounts.iter().map(|m| {
                    let opts = m.options.as_deref().unwrap_or("rw");
                    format!("mounts drive.{} at {} ({opts})", m.drive, m.path)
                }));
                c.details.extend(snapshot::plan_details(v, recorded, c.op));
                c.details.extend(warm::plan_details(v, c.op));
            }
        }
        Ok(change)
    }

    async fn preflight(
        &self,
        ctx: &Ctx,
        desired: &Resource,
    ) -> Result<Option<String>, ResourceError> {
        let spec = spec_of(desired)?;
        if spec.ports.is_empty() {
            return Ok(None);
        }
        let recorded = ctx.record(&desired.address)?;
        Ok(ports::bound(spec, recorded.as_ref()))
    }

    fn field_effect(&self, field: &str) -> Effect {
        match field {
            // Ports are DNAT rules on the host: the running VM is not touched.
            // `keep` only prunes checkpoints; `warm` is how a VM first starts.
            "state" | "restart" | "ports" | "keep" | "warm" => Effect::Update,
            _ => Effect::Restart,
        }
    }

    async fn observe(&self, ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError> {
        let out: VmOutputs = super::asset::outputs(&record.address, &record.outputs)?;
        if record.status == Status::Pending {
            // An interrupted apply: say what it left, the plan already redoes the VM.
            return Ok(Observation::Drifted {
                what: left_behind(&out),
            });
        }
        let state = record.spec.get("state").and_then(|s| s.as_str());
        let stopped = state == Some("stopped");
        let alive = out.started.is_some_and(|s| s.alive());
        if out.snapshotting.is_some() {
            return Ok(Observation::Drifted {
                what: "a suspend or checkpoint was interrupted: its unfinished snapshot is removed"
                    .into(),
            });
        }
        if let Some(label) = &out.restoring {
            return Ok(Observation::Drifted {
                what: format!(
                    "a restore of checkpoint \"{label}\" was interrupted: it is done again"
                ),
            });
        }
        if state == Some("suspended") {
            return Ok(if alive {
                Observation::Drifted {
                    what: "it is running but should be suspended".into(),
                }
            } else if out.suspended.is_none() {
                Observation::Drifted {
                    what: "it has no snapshot: it boots and is suspended".into(),
                }
            } else if let Some(why) = snapshot::unusable(ctx, &out, &restart_relevant(&record.spec))
            {
                Observation::Drifted {
                    what: format!("its snapshot cannot be resumed ({why}): it will boot from its drives and be suspended again"),
                }
            } else {
                Observation::Ok
            });
        }
        if let Some(why) = out
            .suspended
            .as_ref()
            .filter(|_| !alive)
            .and_then(|_| snapshot::unusable(ctx, &out, &restart_relevant(&record.spec)))
        {
            return Ok(Observation::Missing {
                what: format!(
                    "its snapshot cannot be resumed ({why}): it will boot from its drives"
                ),
            });
        }
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
        if let Some(what) = ports::observe(&out).await? {
            return Ok(Observation::Drifted { what });
        }
        let vcpus_stopped = vcpus::stopped(&out).await;
        if state == Some("paused") && !vcpus_stopped {
            return Ok(Observation::Drifted {
                what: "its vCPUs run but it should be paused".into(),
            });
        }
        if state != Some("paused") && vcpus_stopped {
            return Ok(Observation::Drifted {
                what: "its vCPUs are stopped".into(),
            });
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
        let addr = &desired.address;
        let fresh = !recorded.is_some_and(Record::applied_once);
        let mut out = match recorded.and_then(|r| super::asset::outputs(addr, &r.outputs).ok()) {
            Some(o) => o,
            None => steps::intent(ctx, desired, spec)?,
        };
        snapshot::recover(ctx, addr, &mut out).await?;
        checkpoint::on_apply(ctx, desired, spec, &mut out).await?;
        if spec.state == VmState::Stopped {
            steps::stop(ctx, addr, &mut out).await?;
            // Its memory is gone with it: a snapshot would resume a guest its drives moved past.
            snapshot::discard(ctx, addr, &mut out)?;
            // Ports follow the address lease, which a stopped VM keeps.
            ports::publish(ctx, addr, spec, &mut out).await?;
            confine::release_cgroup(&mut out)?;
            return to_json(&out);
        }
        let want = restart_relevant(&desired.spec_json());
        if spec.state == VmState::Suspended && out.suspended.is_some() && !out.has_processes() {
            match snapshot::unusable(ctx, &out, &want) {
                None => {
                    ports::publish(ctx, addr, spec, &mut out).await?;
                    confine::release_cgroup(&mut out)?;
                    return to_json(&out);
                }
                Some(why) => {
                    tracing::warn!("{addr}: its snapshot is not resumed ({why}): it boots and is suspended again");
                    snapshot::discard(ctx, addr, &mut out)?;
                }
            }
        }
        run(ctx, desired, recorded, spec, &mut out, want, fresh).await?;
        match spec.state {
            VmState::Paused if !out.paused => snapshot::pause(ctx, addr, &mut out).await?,
            VmState::Running if out.paused => snapshot::unpause(ctx, addr, &mut out).await?,
            VmState::Suspended => {
                snapshot::suspend(ctx, addr, spec, &mut out).await?;
                confine::release_cgroup(&mut out)?;
            }
            _ => {}
        }
        to_json(&out)
    }

    async fn destroy(&self, ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError> {
        let mut out: VmOutputs = super::asset::outputs(&recorded.address, &recorded.outputs)?;
        stop::stop(&out).await;
        crate::crash::hit(Point::VmDestroyStopped);
        steps::detach_quietly(ctx, &recorded.address, &mut out).await?;
        crate::crash::hit(Point::VmDetached);
        confine::undo(&mut out)?;
        crate::crash::hit(Point::VmUnconfined);
        // Its snapshots describe a VM that is gone.
        let snaps = crate::host::snapshot::vm_dir(&ctx.state_dir, &recorded.address.name);
        match std::fs::remove_dir_all(&snaps) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ResourceError::io("cannot remove", &snaps, e))
            }
            _ => {}
        }
        match std::fs::remove_dir_all(&out.run_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ResourceError::io("cannot remove", &out.run_dir, e))
            }
            _ => {}
        }
        // Last: until here the uid's files and cgroup existed, and the row kept it.
        ctx.with_store(|s| s.release_uid(&recorded.address.to_string()))
    }
}

/// Leave the VM running what `want` says: adopted when it already does, else resumed from
/// its snapshot when it has a usable one, else booted.
async fn run(
    ctx: &Ctx,
    desired: &Resource,
    recorded: Option<&Record>,
    spec: &VmSpec,
    out: &mut VmOutputs,
    want: serde_json::Value,
    fresh: bool,
) -> Result<(), ResourceError> {
    let addr = &desired.address;
    // What runs was started with an older fort that did not record `booted`: its row's
    // spec is what it runs.
    let booted = out.booted.clone().or_else(|| {
        recorded
            .filter(|r| r.applied_once())
            .map(|r| restart_relevant(&r.spec))
    });
    let alive = out.started.is_some_and(|s| s.alive());
    // A resume interrupted before its stream was loaded: that QEMU is of no use.
    let half_loaded = alive && out.suspended.is_some();
    if alive && !half_loaded && booted.as_ref() == Some(&want) {
        // Adopt what runs: keep its attachment intact, and unless its last apply finished,
        // wait for its agent as a boot would.
        steps::attach(ctx, desired, spec, out).await?;
        ports::publish(ctx, addr, spec, out).await?;
        let finished = recorded.is_some_and(|r| r.status == Status::Ready);
        // Stopped vCPUs — paused by fort, or a resume killed after its load — run again,
        // unless the VM stays paused.
        if (!finished || spec.state != VmState::Paused) && vcpus::stopped(out).await {
            snapshot::unpause(ctx, addr, out).await?;
        }
        let ready = if finished {
            true
        } else if let Ok(m) = steps::wait_ready(spec, out).await {
            steps::warn_unmounted(addr, &m);
            out.mounts = m;
            true
        } else {
            false
        };
        if ready {
            out.booted = Some(want);
            return Ok(());
        }
        tracing::warn!(
            "{addr}: the VM an interrupted apply started does not answer: restarting it"
        );
    }
    // Restarting, or starting after a crash: whatever is left of the previous run (e.g.
    // the vsock helper of a VMM that was killed) goes first.
    steps::stop(ctx, addr, out).await?;
    if out.suspended.is_some() {
        match snapshot::unusable(ctx, out, &want) {
            None => match snapshot::resume(ctx, desired, spec, out, want.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(
                        "{addr}: {}: it boots from its drives instead",
                        super::error_chain(&e)
                    );
                    steps::stop(ctx, addr, out).await?;
                }
            },
            Some(why) => {
                tracing::warn!(
                    "{addr}: its snapshot is not resumed ({why}): it boots from its drives"
                )
            }
        }
        snapshot::discard(ctx, addr, out)?;
    }
    if let (true, Some(t)) = (fresh, spec.warm.as_deref()) {
        match warm::start(ctx, desired, spec, out, want.clone(), t).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!("{addr}: {}: it boots instead", super::error_chain(&e));
                steps::stop(ctx, addr, out).await?;
            }
        }
    }
    match steps::boot(ctx, desired, spec, out, want).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // A VM that never came up leaves nothing behind but its logs; a restarted one
            // keeps its TAP and lease for the next try.
            steps::stop(ctx, addr, out).await?;
            confine::release_cgroup(out)?;
            if fresh {
                steps::detach(ctx, addr, out).await?;
            }
            Err(e)
        }
    }
}

/// What an interrupted apply left of a VM, in words, for the plan.
fn left_behind(out: &VmOutputs) -> String {
    let proc = |what: &str, p: &Proc| {
        if p.alive() {
            format!("{what} (PID {}) is running", p.pid)
        } else {
            format!("{what} (PID {}) is gone", p.pid)
        }
    };
    let mut parts = Vec::new();
    if let Some(s) = &out.started {
        parts.push(proc(&out.vmm, &s.vmm));
        if let Some(h) = &s.helper {
            parts.push(proc("its vsock helper", h));
        }
    }
    if let Some(h) = &out.helper {
        parts.push(proc("its vsock helper", h));
    }
    if let Some(a) = &out.network {
        parts.push(format!("TAP {} holds {}", a.tap, a.ip));
    }
    let what = if parts.is_empty() {
        "nothing of it runs".to_string()
    } else {
        parts.join(", ")
    };
    let next = if out.has_processes() {
        "adopted if its agent answers, else stopped and booted again"
    } else {
        "booted again"
    };
    format!("{what}: it will be {next}")
}

/// The recorded VMs whose VMM runs now, with its resident memory (for capacity checks).
pub fn running_memory(
    recorded: &std::collections::BTreeMap<Address, Record>,
) -> std::collections::BTreeMap<Address, u64> {
    recorded
        .values()
        .filter(|r| r.kind == Kind::Vm)
        .filter_map(|r| {
            let o: VmOutputs = serde_json::from_value(r.outputs.clone()).ok()?;
            let s = o.started.filter(|s| s.vmm.alive())?;
            Some((
                r.address.clone(),
                crate::host::procs::rss(s.vmm.pid).unwrap_or(0),
            ))
        })
        .collect()
}

/// The PID file people and scripts read (`kill $(cat …/pid)`).
fn write_pid_file(out: &VmOutputs) -> Result<(), ResourceError> {
    let Some(s) = &out.started else {
        return Ok(());
    };
    let run = RunDir(&out.run_dir);
    std::fs::write(run.pid(), format!("{}\n", s.vmm.pid))
        .map_err(|e| ResourceError::io("cannot write", &run.pid(), e))
}

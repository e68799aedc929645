//! Leftovers of interrupted runs (and of older forts, which recorded less): what exists on the
//! host under this state dir's name that no record owns. Found once per plan — one pass over
//! `/proc`, one link dump, a few directory listings — shown in the plan, and removed by apply
//! before any action. Never anything fort did not make: a process must be a VMM binary whose
//! command line names this state dir's `run/`, an interface must carry this state dir's mark,
//! a file must sit in one of fort's temp places. Drive files nobody records are data: they are
//! reported and kept (declaring the drive again adopts the file).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::address::{Address, Kind};
use crate::host::net::link::Netlink;
use crate::host::net::{nft, ports};
use crate::host::procs::{self, ProcInfo};
use crate::host::vmm::process::Proc;
use crate::resources::{error_chain, Ctx, ResourceError};
use crate::state::leases::Lease;
use crate::state::Record;

/// The programs fort starts detached for VMs: only these are ever stopped as leftovers.
const VMM_PROGRAMS: &[&str] = &[
    "qemu-system-x86_64",
    "vhost-device-vsock",
    "firecracker",
    "jailer",
];

/// One leftover and why it is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    #[serde(flatten)]
    pub leftover: Leftover,
    /// Why it is a leftover, in words.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "leftover", rename_all = "snake_case")]
pub enum Leftover {
    /// A VMM or vsock helper running from `run/VM/` that no record owns.
    Process {
        pid: u32,
        start_time: u64,
        program: String,
        vm: Option<String>,
    },
    /// A bridge or TAP with this state dir's mark that no record owns.
    Interface {
        name: String,
        kind: Option<String>,
        /// The address its mark names (`vm.a`).
        owner: Option<String>,
    },
    /// fort's nftables table of a leftover bridge, or a VM's published-ports table that no
    /// record names.
    NftTable { name: String },
    /// An address leased to a resource nobody records.
    Lease {
        network: String,
        owner: String,
        ip: String,
    },
    /// A VM run dir (logs, sockets) of a VM nobody records.
    RunDir { path: PathBuf },
    /// A temp file or directory of an interrupted download, image build or drive creation.
    TempFile { path: PathBuf },
    /// A drive file nobody records: kept (it may hold data).
    DriveFile { path: PathBuf },
    /// A uid held in state for a VM nobody records.
    Uid { owner: String, uid: u32 },
    /// A VM cgroup of this state dir that no record names.
    Cgroup { path: PathBuf },
}

impl Orphan {
    /// Whether apply removes it (drive files are only reported).
    pub fn removed(&self) -> bool {
        !matches!(self.leftover, Leftover::DriveFile { .. })
    }

    /// What it is, in a few words (`qemu-system-x86_64 (PID 24782) of vm.pool-2`).
    pub fn describe(&self) -> String {
        match &self.leftover {
            Leftover::Process {
                pid, program, vm, ..
            } => match vm {
                Some(vm) => format!("{program} (PID {pid}) of vm.{vm}"),
                None => format!("{program} (PID {pid})"),
            },
            Leftover::Interface { name, kind, .. } => {
                format!("{} {name}", kind.as_deref().unwrap_or("interface"))
            }
            Leftover::NftTable { name } => format!("nftables table ip {name}"),
            Leftover::Lease { network, owner, ip } => {
                format!("lease {ip} of network.{network} held for {owner}")
            }
            Leftover::RunDir { path } => format!("run dir {}", path.display()),
            Leftover::TempFile { path } => format!("temp file {}", path.display()),
            Leftover::DriveFile { path } => format!("drive file {}", path.display()),
            Leftover::Uid { owner, uid } => format!("uid {uid} held for {owner}"),
            Leftover::Cgroup { path } => format!("cgroup {}", path.display()),
        }
    }

    /// The resource it was made for, where that is known (a targeted plan keeps only the
    /// leftovers of the resources it selects).
    pub fn owner(&self) -> Option<Address> {
        match &self.leftover {
            Leftover::Process { vm, .. } => vm.as_ref().map(|v| Address::new(Kind::Vm, v)),
            Leftover::Interface { owner, .. } => owner.as_ref().and_then(|o| o.parse().ok()),
            Leftover::NftTable { name } => match name.strip_prefix(ports::TABLE_PREFIX) {
                // fort-ports-VM-STATEID
                Some(rest) => rest
                    .rsplit_once('-')
                    .map(|(vm, _)| Address::new(Kind::Vm, vm)),
                None => name
                    .strip_prefix("fort-")
                    .map(|n| Address::new(Kind::Network, n)),
            },
            Leftover::Lease { owner, .. } => owner.parse().ok(),
            Leftover::RunDir { path } => path
                .file_name()
                .map(|n| Address::new(Kind::Vm, n.to_string_lossy().as_ref())),
            Leftover::Uid { owner, .. } => owner.parse().ok(),
            Leftover::Cgroup { path } => confine::vm_of_cgroup(path),
            Leftover::TempFile { .. } | Leftover::DriveFile { .. } => None,
        }
    }

    /// What apply does with it, as the plan says it.
    pub fn action(&self) -> &'static str {
        match self.leftover {
            Leftover::Process { .. } => "stopped",
            Leftover::Interface { .. } | Leftover::NftTable { .. } => "deleted",
            Leftover::Lease { .. } | Leftover::Uid { .. } => "released",
            Leftover::RunDir { .. } | Leftover::TempFile { .. } | Leftover::Cgroup { .. } => {
                "removed"
            }
            Leftover::DriveFile { .. } => "kept",
        }
    }
}

/// An interface as the scan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenLink {
    pub name: String,
    pub kind: Option<String>,
    pub alias: Option<String>,
}

/// What the host shows, gathered by [`scan`] and judged by the pure [`classify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Processes whose command line names `state_dir/run/`.
    pub processes: Vec<ProcInfo>,
    pub links: Vec<SeenLink>,
    /// fort tables that exist among the names of leftover bridges.
    pub tables: Vec<String>,
    /// Published-ports tables named with this state dir's id.
    pub port_tables: Vec<String>,
    pub leases: Vec<Lease>,
    /// Entries of `state_dir/run/`.
    pub run_dirs: Vec<PathBuf>,
    /// Entries of `cache/tmp/`, `images/tmp/`, and `drives/`.
    pub files: Vec<PathBuf>,
    /// Uids whose owner has no record.
    pub uids: Vec<crate::state::uids::UidLease>,
    /// `vm-*` cgroup directories of this state dir.
    pub cgroups: Vec<PathBuf>,
}

/// Lookups into the records, one per thing seen: the scan costs what it sees (a handful of
/// processes and interfaces, one entry per VM in `run/`), not a pass over every record.
struct Records<'a>(&'a BTreeMap<Address, Record>);

impl Records<'_> {
    fn get(&self, kind: Kind, name: &str) -> Option<&Record> {
        self.0.get(&Address::new(kind, name))
    }

    fn has(&self, address: &str) -> bool {
        address
            .parse::<Address>()
            .is_ok_and(|a| self.0.contains_key(&a))
    }

    /// Does `vm.NAME`'s record hold this process (as its VMM, its helper, or a helper started
    /// for a boot whose VMM is not recorded)?
    fn owns_process(&self, vm: &str, p: &Proc) -> bool {
        self.get(Kind::Vm, vm).is_some_and(|r| {
            ["/started/vmm", "/started/helper", "/helper"]
                .iter()
                .any(|at| r.outputs.pointer(at).and_then(proc_of).as_ref() == Some(p))
        })
    }

    /// Does the resource an interface's mark names record that interface?
    fn owns_interface(&self, owner: &str, name: &str) -> bool {
        let Ok(a) = owner.parse::<Address>() else {
            return false;
        };
        let Some(r) = self.0.get(&a) else {
            return false;
        };
        let at: &[&str] = match a.kind {
            Kind::Vm => &["/network/tap", "/tap/tap"],
            Kind::Network => &["/bridge"],
            _ => &[],
        };
        at.iter()
            .any(|p| r.outputs.pointer(p).and_then(|v| v.as_str()) == Some(name))
    }

    /// Does vm.NAME's record name this published-ports table?
    fn owns_port_table(&self, vm: &str, table: &str) -> bool {
        self.get(Kind::Vm, vm)
            .is_some_and(|r| r.outputs.get("ports_table").and_then(|t| t.as_str()) == Some(table))
    }

    /// Is `path` (drives/NAME.ext4) the recorded file of drive.NAME?
    fn owns_drive_file(&self, path: &Path) -> bool {
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
            return false;
        };
        self.get(Kind::Drive, name)
            .is_some_and(|r| r.outputs.get("path").and_then(|p| p.as_str()) == path.to_str())
    }
}

fn proc_of(v: &serde_json::Value) -> Option<Proc> {
    Some(Proc {
        pid: u32::try_from(v.get("pid")?.as_u64()?).ok()?,
        start_time: v.get("start_time")?.as_u64()?,
    })
}

/// The VM a path under `run/` belongs to: the component after `run_prefix`.
fn vm_of(cmdline: &str, run_prefix: &str) -> Option<String> {
    let at = cmdline.find(run_prefix)? + run_prefix.len();
    let name: String = cmdline[at..]
        .chars()
        .take_while(|c| *c != '/' && !c.is_whitespace() && *c != ',')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Pure: the leftovers among what was seen, given the records.
pub fn classify(
    state_dir: &Path,
    state_id: &str,
    seen: &Seen,
    recorded: &BTreeMap<Address, Record>,
) -> Vec<Orphan> {
    let own = Records(recorded);
    let run_prefix = procs::dir_needle(&state_dir.join("run"));
    let mark = format!("@{state_id}");
    let mut out = Vec::new();
    for p in &seen.processes {
        if !VMM_PROGRAMS.contains(&p.name.as_str()) {
            continue;
        }
        let vm = vm_of(&p.cmdline, &run_prefix);
        if vm.as_deref().is_some_and(|v| own.owns_process(v, &p.proc)) {
            continue;
        }
        let why = match &vm {
            Some(v) if own.get(Kind::Vm, v).is_some() => format!(
                "it runs from run/{v}/ but vm.{v}'s record does not own it (started by an interrupted apply)"
            ),
            Some(v) => format!("it runs from run/{v}/ but vm.{v} is not recorded"),
            None => "it runs from this state dir's run/ but no record owns it".to_string(),
        };
        out.push(Orphan {
            leftover: Leftover::Process {
                pid: p.proc.pid,
                start_time: p.proc.start_time,
                program: p.name.clone(),
                vm,
            },
            reason: why,
        });
    }
    let mut orphan_bridges = BTreeSet::new();
    for l in &seen.links {
        let Some(alias) = l.alias.as_deref() else {
            continue;
        };
        if !alias.starts_with("fort:") || !alias.ends_with(&mark) {
            continue;
        }
        let owner = alias
            .trim_start_matches("fort:")
            .trim_end_matches(&mark)
            .to_string();
        if own.owns_interface(&owner, &l.name) {
            continue;
        }
        if l.kind.as_deref() == Some("bridge") {
            orphan_bridges.insert(l.name.clone());
        }
        out.push(Orphan {
            leftover: Leftover::Interface {
                name: l.name.clone(),
                kind: l.kind.clone(),
                owner: Some(owner.clone()),
            },
            reason: format!("it carries this state dir's mark for {owner}, which no record owns"),
        });
    }
    for t in &seen.tables {
        if orphan_bridges.contains(t) {
            out.push(Orphan {
                leftover: Leftover::NftTable { name: t.clone() },
                reason: format!("it belongs to the leftover bridge {t}"),
            });
        }
    }
    for t in &seen.port_tables {
        let Some(vm) = ports::table_owner(t, state_id) else {
            continue;
        };
        if own.owns_port_table(vm, t) {
            continue;
        }
        out.push(Orphan {
            leftover: Leftover::NftTable { name: t.clone() },
            reason: format!("it publishes ports of vm.{vm}, whose record does not name it"),
        });
    }
    for l in &seen.leases {
        if !own.has(&l.owner) {
            out.push(Orphan {
                leftover: Leftover::Lease {
                    network: l.network.clone(),
                    owner: l.owner.clone(),
                    ip: l.ip.to_string(),
                },
                reason: format!("{} is not recorded", l.owner),
            });
        }
    }
    for d in &seen.run_dirs {
        let name = d.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| own.get(Kind::Vm, &n).is_none()) {
            out.push(Orphan {
                leftover: Leftover::RunDir { path: d.clone() },
                reason: "no VM of that name is recorded".to_string(),
            });
        }
    }
    confine::classify(seen, recorded, &mut out);
    let drives = state_dir.join("drives");
    for f in &seen.files {
        let in_drives = f.parent() == Some(drives.as_path());
        let ext = f.extension().and_then(|e| e.to_str());
        if in_drives && ext == Some("ext4") {
            if !own.owns_drive_file(f) {
                out.push(Orphan {
                    leftover: Leftover::DriveFile { path: f.clone() },
                    reason: "no drive is recorded with it; it may hold data, so fort keeps it (declare the drive again to adopt it, or delete the file)".to_string(),
                });
            }
        } else if !in_drives || ext == Some("part") {
            out.push(Orphan {
                leftover: Leftover::TempFile { path: f.clone() },
                reason: "an interrupted download, image build or drive creation left it"
                    .to_string(),
            });
        }
    }
    out
}

/// Entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    v.sort();
    v
}

/// Look at the host once and return the leftovers. While another fort holds the state dir's
/// lock (an apply is running), its work in progress would look like leftovers: nothing is
/// reported then.
pub async fn scan(
    ctx: &Ctx,
    recorded: &BTreeMap<Address, Record>,
) -> Result<Vec<Orphan>, ResourceError> {
    let dir = &ctx.state_dir;
    if let Some((pid, _)) = crate::state::StateLock::holder(dir) {
        if pid != std::process::id() && crate::host::vmm::process::start_time(pid).is_some() {
            return Ok(Vec::new());
        }
    }
    let run = dir.join("run");
    let mut seen = Seen {
        processes: procs::mentioning(&procs::dir_needle(&run)),
        run_dirs: entries(&run),
        leases: ctx.with_store(|s| s.unowned_leases())?,
        uids: ctx.with_store(|s| s.unowned_uids())?,
        cgroups: confine::cgroups(&ctx.state_id()),
        ..Seen::default()
    };
    for d in ["cache/tmp", "images/tmp", "drives"] {
        seen.files.extend(entries(&dir.join(d)));
    }
    let mark = format!("@{}", ctx.state_id());
    if let Ok(nl) = Netlink::connect() {
        seen.links = nl
            .links()
            .await?
            .into_iter()
            .filter(|l| l.alias.as_deref().is_some_and(|a| a.ends_with(&mark)))
            .map(|l| SeenLink {
                name: l.name,
                kind: l.kind,
                alias: l.alias,
            })
            .collect();
    }
    let bridges: Vec<String> = seen
        .links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|l| l.name.clone())
        .collect();
    for b in bridges {
        let name = b.clone();
        let exists = tokio::task::spawn_blocking(move || nft::table_exists(&name))
            .await
            .map_err(|e| ResourceError::Check(format!("netfilter task failed: {e}")))??;
        if exists {
            seen.tables.push(b);
        }
    }
    // Listing tables needs CAP_NET_ADMIN: without it there are none of fort's to find.
    let tables = tokio::task::spawn_blocking(ports::ipv4_tables)
        .await
        .map_err(|e| ResourceError::Check(format!("netfilter task failed: {e}")))?
        .unwrap_or_default();
    let id = ctx.state_id();
    seen.port_tables = tables
        .into_iter()
        .filter(|t| ports::table_owner(t, &id).is_some())
        .collect();
    Ok(classify(dir, &ctx.state_id(), &seen, recorded))
}

/// Stop or remove each leftover (checked again first: a process must still be the same, an
/// interface must still carry the mark). Processes go first: they hold TAPs and files.
pub async fn clean(ctx: &Ctx, orphans: &[Orphan]) -> Vec<(Orphan, Result<(), String>)> {
    let mut order: Vec<&Orphan> = orphans.iter().filter(|o| o.removed()).collect();
    order.sort_by_key(|o| !matches!(o.leftover, Leftover::Process { .. }));
    let mut out = Vec::new();
    for (i, o) in order.into_iter().enumerate() {
        let r = clean_one(ctx, o).await.map_err(|e| error_chain(&e));
        if i == 0 {
            crate::crash::hit(crate::crash::Point::OrphansRemoved);
        }
        out.push((o.clone(), r));
    }
    out
}

async fn clean_one(ctx: &Ctx, o: &Orphan) -> Result<(), ResourceError> {
    match &o.leftover {
        Leftover::Process {
            pid, start_time, ..
        } => {
            let p = Proc {
                pid: *pid,
                start_time: *start_time,
            };
            tokio::task::spawn_blocking(move || p.terminate(Duration::from_secs(5)))
                .await
                .map_err(|e| ResourceError::Check(format!("stop task failed: {e}")))?;
            if p.alive() {
                return Err(ResourceError::Check(format!(
                    "PID {pid} did not stop on SIGKILL"
                )));
            }
            Ok(())
        }
        Leftover::Interface { name, .. } => {
            let nl = Netlink::connect()?;
            let mark = format!("@{}", ctx.state_id());
            if let Some(l) = nl.link(name).await? {
                if l.alias.as_deref().is_some_and(|a| a.ends_with(&mark)) {
                    nl.delete(l.index).await?;
                }
            }
            Ok(())
        }
        Leftover::NftTable { name } => {
            let name = name.clone();
            tokio::task::spawn_blocking(move || nft::delete(&name))
                .await
                .map_err(|e| ResourceError::Check(format!("netfilter task failed: {e}")))??;
            Ok(())
        }
        Leftover::Lease { network, owner, .. } => {
            ctx.with_store(|s| s.release_lease(network, owner))
        }
        Leftover::RunDir { path } | Leftover::TempFile { path } => {
            let r = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            match r {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ResourceError::io("cannot remove", path, e))
                }
                _ => Ok(()),
            }
        }
        Leftover::Uid { owner, .. } => ctx.with_store(|s| s.release_uid(owner)),
        Leftover::Cgroup { path } => crate::host::cgroup::remove(std::slice::from_ref(path))
            .map_err(|e| ResourceError::Check(error_chain(&e))),
        Leftover::DriveFile { .. } => Ok(()),
    }
}

#[path = "orphans_confine.rs"]
mod confine;

#[cfg(test)]
#[path = "orphans_tests.rs"]
mod tests;

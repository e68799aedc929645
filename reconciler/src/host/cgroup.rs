//! cgroups for VMs: which hierarchy the host gives (cgroup v2 with cpu, memory and pids, else
//! the v1 per-controller mounts), and each VM's cgroup `fort/<state id>/vm-NAME` in it with a
//! CPU quota, a memory limit and a pids limit.
//!
//! Where the VM cgroups sit: under the v2 root (v2's "no internal processes" rule forbids
//! nesting them under fort's own cgroup, which holds fort); under fort's own cgroup of each v1
//! controller, so VMs never escape limits the host put on fort itself (a container, a
//! systemd slice's `MemoryLimit`).

use std::path::{Path, PathBuf};

use crate::host::vmm::Limits;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The controllers fort limits VMs with.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The scheduler period fort uses; a VM gets `vcpus` periods of CPU time per period.
pub const CPU_PERIOD_US: u64 = 100_000;

/// What the VMM itself needs beyond the guest's memory (QEMU's code and heap, its TCG
/// translation cache, which fort caps at 64 MiB, I/O buffers, vhost-device-vsock): about
/// 130 MiB under TCG on the development machines (docs/vms.md), doubled because the kernel
/// kills the VM when it is crossed.
pub const VMM_OVERHEAD_BYTES: u64 = 256 << 20;

/// Threads and processes of one VM: QEMU runs a thread per vCPU, an I/O thread pool of up to
/// 64 workers and a few more; vhost-device-vsock a handful. A fork bomb in a compromised VMM
/// stops here.
pub const PIDS_MAX: u64 = 512;

/// The limits of a VM with `vcpus` vCPUs and `memory` bytes of guest memory.
pub fn limits(vcpus: u32, memory: u64) -> Limits {
    Limits {
        cpu_quota_us: u64::from(vcpus.max(1)) * CPU_PERIOD_US,
        cpu_period_us: CPU_PERIOD_US,
        memory_bytes: memory + VMM_OVERHEAD_BYTES,
        pids: PIDS_MAX,
    }
}

/// The cgroup hierarchy VMs are put in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Unified: one directory per cgroup, the base being the cgroup2 mount's root.
    V2 { base: PathBuf },
    /// Per-controller mounts; `bases` are the directories VM cgroups go under, one per
    /// distinct mount (cpu and cpuacct may share one), with what each mount controls.
    V1 { bases: Vec<(PathBuf, Vec<String>)> },
}

/// One line of /proc/self/mountinfo, the fields detection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
    pub options: Vec<String>,
}

/// Pure: the cgroup mounts of a mountinfo text (`… MOUNTPOINT … - FSTYPE SOURCE SUPEROPTS`).
pub fn cgroup_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let options = post.nth(1).unwrap_or("");
            matches!(fstype, "cgroup" | "cgroup2").then(|| Mount {
                // mountinfo escapes spaces and the like as octal (`\040`).
                point: PathBuf::from(point.replace("\\040", " ")),
                fstype: fstype.to_string(),
                options: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Pure: choose the hierarchy. `controllers` reads a cgroup2 root's `cgroup.controllers`;
/// `own` maps a v1 controller to fort's own cgroup in it (from /proc/self/cgroup).
pub fn choose(
    mounts: &[Mount],
    controllers: impl Fn(&Path) -> Option<String>,
    own: impl Fn(&str) -> Option<String>,
) -> Option<Hierarchy> {
    for m in mounts.iter().filter(|m| m.fstype == "cgroup2") {
        let have = controllers(&m.point).unwrap_or_default();
        let have: Vec<&str> = have.split_whitespace().collect();
        if CONTROLLERS.iter().all(|c| have.contains(c)) {
            return Some(Hierarchy::V2 {
                base: m.point.clone(),
            });
        }
    }
    let mut bases: Vec<(PathBuf, Vec<String>)> = Vec::new();
    // cpuacct is the CPU time accounting that `fort doctor` and the tests read.
    for c in CONTROLLERS.iter().chain(&["cpuacct"]) {
        let m = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == c))?;
        let rel = own(c).unwrap_or_default();
        let rel = rel.trim_matches('/');
        let base = if rel.is_empty() {
            m.point.clone()
        } else {
            m.point.join(rel)
        };
        match bases.iter_mut().find(|(b, _)| *b == base) {
            Some((_, cs)) => cs.push(c.to_string()),
            None => bases.push((base, vec![c.to_string()])),
        }
    }
    Some(Hierarchy::V1 { bases })
}

/// Pure: fort's own cgroup per v1 controller, from /proc/self/cgroup (`4:memory:/a/b`).
pub fn own_cgroup(proc_self_cgroup: &str, controller: &str) -> Option<String> {
    proc_self_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, list, path) = (f.next()?, f.next()?, f.next()?);
        list.split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

/// The host's hierarchy, or `None` when cpu, memory or pids cannot be had.
pub fn detect() -> Option<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    choose(
        &cgroup_mounts(&mountinfo),
        |p| std::fs::read_to_string(p.join("cgroup.controllers")).ok(),
        |c| own_cgroup(&own, c),
    )
}

/// `fort/<state id>/vm-NAME`: a VM's cgroup relative to the hierarchy's base.
pub fn vm_cgroup(state_id: &str, vm: &str) -> String {
    format!("fort/{state_id}/vm-{vm}")
}

impl Hierarchy {
    pub fn version(&self) -> u8 {
        match self {
            Hierarchy::V2 { .. } => 2,
            Hierarchy::V1 { .. } => 1,
        }
    }

    /// The directories fort's cgroups of this state dir sit in (`…/fort/<state id>`).
    pub fn state_dirs(&self, state_id: &str) -> Vec<PathBuf> {
        self.bases()
            .into_iter()
            .map(|b| b.join("fort").join(state_id))
            .collect()
    }

    fn bases(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::V2 { base } => vec![base.clone()],
            Hierarchy::V1 { bases } => bases.iter().map(|(b, _)| b.clone()).collect(),
        }
    }

    /// The directories of cgroup `rel`, one per hierarchy mount.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        self.bases().into_iter().map(|b| b.join(rel)).collect()
    }

    /// What the host gives, in words (`fort doctor`).
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { base } => {
                format!("cgroup v2 at {} (cpu, memory, pids)", base.display())
            }
            Hierarchy::V1 { bases } => {
                let parts: Vec<String> = bases
                    .iter()
                    .map(|(b, cs)| format!("{} at {}", cs.join(","), b.display()))
                    .collect();
                format!("cgroup v1: {}", parts.join("; "))
            }
        }
    }

    /// Create cgroup `rel` (and its parents) and set `limits`. Idempotent: an existing
    /// cgroup gets the limits written again (a changed VM's new ones).
    pub fn create(&self, rel: &str, limits: &Limits) -> Result<Vec<PathBuf>, CgroupError> {
        match self {
            Hierarchy::V2 { base } => {
                // Each level from the base down to the VM's parent must hand the controllers
                // to its children.
                let mut dir = base.clone();
                let parts: Vec<&str> = rel.split('/').collect();
                for part in &parts {
                    let ctl = dir.join("cgroup.subtree_control");
                    let on = std::fs::read_to_string(&ctl).map_err(io("read", &ctl))?;
                    let missing: Vec<String> = CONTROLLERS
                        .iter()
                        .filter(|c| !on.split_whitespace().any(|o| o == **c))
                        .map(|c| format!("+{c}"))
                        .collect();
                    if !missing.is_empty() {
                        std::fs::write(&ctl, missing.join(" ")).map_err(io("write", &ctl))?;
                    }
                    dir = dir.join(part);
                    mkdir(&dir)?;
                }
                let quota = format!("{} {}", limits.cpu_quota_us, limits.cpu_period_us);
                write(&dir, "cpu.max", &quota)?;
                write(&dir, "memory.max", &limits.memory_bytes.to_string())?;
                write(&dir, "pids.max", &limits.pids.to_string())?;
                Ok(vec![dir])
            }
            Hierarchy::V1 { bases } => {
                let mut out = Vec::new();
                for (base, cs) in bases {
                    let dir = base.join(rel);
                    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                    for c in cs {
                        match c.as_str() {
                            "cpu" => {
                                let p = limits.cpu_period_us.to_string();
                                write(&dir, "cpu.cfs_period_us", &p)?;
                                let q = limits.cpu_quota_us.to_string();
                                write(&dir, "cpu.cfs_quota_us", &q)?;
                            }
                            "memory" => {
                                let m = limits.memory_bytes.to_string();
                                write(&dir, "memory.limit_in_bytes", &m)?;
                            }
                            "pids" => write(&dir, "pids.max", &limits.pids.to_string())?,
                            _ => {}
                        }
                    }
                    out.push(dir);
                }
                Ok(out)
            }
        }
    }
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io("create", dir)(e)),
        _ => Ok(()),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(io("write", &p))
}

/// Remove the cgroup directories `dirs` (once their processes are gone: a process that has
/// just been killed may hold its cgroup for a moment, so `EBUSY` is retried for a few
/// seconds), then their parents `fort/<state id>` and `fort` where empty. Gone already is
/// success.
pub fn remove(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    for d in dirs {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < end =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(io("remove", d)(e)),
            }
        }
        // Parents only while empty; another VM's cgroup keeps them.
        for up in d.ancestors().skip(1).take(2) {
            if std::fs::remove_dir(up).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// Does the cgroup directory hold processes?
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
}

/// CPU time used by the processes of the cgroup `dirs`, in nanoseconds: v1 `cpuacct.usage`,
/// v2 `cpu.stat` `usage_usec`.
pub fn cpu_usage_ns(dirs: &[PathBuf]) -> Option<u64> {
    for d in dirs {
        if let Ok(s) = std::fs::read_to_string(d.join("cpuacct.usage")) {
            return s.trim().parse().ok();
        }
        if let Ok(s) = std::fs::read_to_string(d.join("cpu.stat")) {
            let us = s.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
            return us.trim().parse::<u64>().ok().map(|u| u * 1000);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// This development machine: cpu, cpuacct, memory and pids on v1, a cgroup2 without them.
    const V1_HOST: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    /// A systemd host with the unified hierarchy.
    const V2_HOST: &str = "\
25 21 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    /// An older systemd host: cpu and cpuacct co-mounted.
    const V1_COMOUNTED: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn detects_v1_here_with_fort_s_own_cgroups_as_bases() {
        let own = "4:memory:/process_api/26f0\n1:cpu:/\n2:cpuacct:/\n8:pids:/\n0::/\n";
        let m = cgroup_mounts(V1_HOST);
        assert_eq!(m.len(), 6);
        let h = choose(&m, |_| Some("hugetlb\n".into()), |c| own_cgroup(own, c)).unwrap();
        assert_eq!(h.version(), 1);
        assert_eq!(
            h.dirs("fort/ab/vm-a"),
            [
                "/sys/fs/cgroup/cpu/fort/ab/vm-a",
                "/sys/fs/cgroup/memory/process_api/26f0/fort/ab/vm-a",
                "/sys/fs/cgroup/pids/fort/ab/vm-a",
                "/sys/fs/cgroup/cpuacct/fort/ab/vm-a",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn detects_v2_when_it_has_the_controllers() {
        let m = cgroup_mounts(V2_HOST);
        let h = choose(
            &m,
            |_| Some("cpuset cpu io memory hugetlb pids rdma misc\n".into()),
            |_| None,
        );
        assert_eq!(
            h,
            Some(Hierarchy::V2 {
                base: "/sys/fs/cgroup".into()
            })
        );
        assert_eq!(
            h.unwrap().describe(),
            "cgroup v2 at /sys/fs/cgroup (cpu, memory, pids)"
        );
        // Without pids, and no v1 mounts: nothing to confine with.
        assert_eq!(choose(&m, |_| Some("cpu memory".into()), |_| None), None);
    }

    #[test]
    fn comounted_controllers_share_a_directory() {
        let h = choose(&cgroup_mounts(V1_COMOUNTED), |_| None, |_| None).unwrap();
        assert_eq!(
            h.describe(),
            "cgroup v1: cpu,cpuacct at /sys/fs/cgroup/cpu,cpuacct; memory at /sys/fs/cgroup/memory; pids at /sys/fs/cgroup/pids"
        );
        assert_eq!(h.dirs("x").len(), 3);
    }

    #[test]
    fn limits_follow_vcpus_and_memory() {
        let l = limits(2, 256 << 20);
        assert_eq!(
            (l.cpu_quota_us, l.cpu_period_us, l.memory_bytes, l.pids),
            (200_000, 100_000, 512 << 20, 512)
        );
        assert_eq!(vm_cgroup("1a2b3c4d", "a"), "fort/1a2b3c4d/vm-a");
    }
}

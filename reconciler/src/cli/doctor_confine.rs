//! `fort doctor`'s confinement checks: whether VMs will run confined, with which cgroup
//! hierarchy and controllers, whether seccomp filters work, and how much of the uid range is
//! free.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::doctor::{check, Check, Level};
use crate::host::{cgroup, confine};

pub fn checks(manifest: Option<&crate::manifest::Manifest>, state_dir: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let root = rustix::process::geteuid().is_root();
    out.push(if confine::enabled() {
        check("confinement", Level::Ok, "VMs run confined: QEMU, vhost-device-vsock and Firecracker as the VM's own uid, in its cgroup, under seccomp", None)
    } else if !root {
        check("confinement", Level::Warn, "fort is not root: VMs run as fort's own user, without their own uid or cgroup", Some("run fort as root".into()))
    } else {
        check("confinement", Level::Warn, "FORT_CONFINE=0: VMs run as root, unconfined (for benchmarks and debugging only)", Some("unset FORT_CONFINE".into()))
    });
    out.push(match cgroup::detect() {
        Some(h) => check(
            "cgroups",
            Level::Ok,
            format!(
                "{}: each VM gets a CPU quota of its vCPUs, its memory + {} MiB, {} tasks",
                h.describe(),
                cgroup::VMM_OVERHEAD_BYTES >> 20,
                cgroup::PIDS_MAX
            ),
            None,
        ),
        None => check(
            "cgroups",
            Level::Warn,
            "no cgroup hierarchy with the cpu, memory and pids controllers: VMs run without CPU, memory or pids limits",
            Some("mount cgroup2 with them enabled (systemd.unified_cgroup_hierarchy=1), or the v1 cpu, cpuacct, memory and pids controllers".into()),
        ),
    });
    out.push(match confine::seccomp::available() {
        Some(a) if a.split_whitespace().any(|x| x == "errno") => check(
            "seccomp",
            Level::Ok,
            format!(
                "seccomp filters work (actions: {a}); {} syscalls are denied to VMMs",
                confine::seccomp::DENIED.len()
            ),
            None,
        ),
        Some(a) => check(
            "seccomp",
            Level::Fail,
            format!("seccomp lacks the errno action (actions: {a})"),
            None,
        ),
        None => check(
            "seccomp",
            Level::Fail,
            "/proc/sys/kernel/seccomp/actions_avail is missing: the kernel has no seccomp filters",
            Some("use a kernel built with CONFIG_SECCOMP_FILTER".into()),
        ),
    });
    let (first, last) = manifest
        .and_then(|m| m.uid_range)
        .unwrap_or(confine::DEFAULT_UID_RANGE);
    let total = u64::from(last - first) + 1;
    let held = crate::state::SqliteStore::open_readonly(state_dir)
        .and_then(|s| s.uids())
        .map(|u| u.iter().filter(|u| (first..=last).contains(&u.uid)).count())
        .unwrap_or(0) as u64;
    let host = confine::host_ids().range(first..=last).count() as u64;
    out.push(check(
        "uid range",
        if total > held + host { Level::Ok } else { Level::Fail },
        format!(
            "{first}-{last}: {total} uids, {held} held by this state dir's VMs, {host} in use on this host (users, groups, processes), {} free",
            total.saturating_sub(held + host)
        ),
        (total <= held + host).then(|| "set a larger `[fort] uid_range`".to_string()),
    ));
    if let Some(up) = state_dir
        .ancestors()
        .skip(1)
        .find(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 == 0))
    {
        out.push(check(
            "state dir reach",
            Level::Fail,
            format!(
                "{} is mode {:04o}: VMs' uids cannot reach the state dir {}",
                up.display(),
                std::fs::metadata(up)
                    .map(|m| m.mode() & 0o7777)
                    .unwrap_or(0),
                state_dir.display()
            ),
            Some(format!(
                "chmod o+x {} (or move the state dir)",
                up.display()
            )),
        ));
    }
    out
}

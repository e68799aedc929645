//! Capacity checks (pure): does the host hold what the plan starts and grows? They run for
//! every change alike — creates, replaces, restarts, a stopped VM started again — and against
//! the whole manifest: the memory of every VM it wants running must fit in the host, what this
//! plan starts must fit in what is available (plus what the VMs it stops give back), and what
//! it writes (images, drive copies) must fit on the state dir's filesystem.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Change, Op, PlanError};
use crate::address::{Address, Kind};
use crate::manifest::units::human_size as format_size;
use crate::manifest::{Resource, Spec, VmState};

/// What the host has, measured by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// `MemTotal`, bytes.
    pub memory_total: Option<u64>,
    /// `MemAvailable`, bytes.
    pub memory_available: Option<u64>,
    /// Free bytes on the state dir's filesystem (for unprivileged users), and where.
    pub disk_free: Option<(PathBuf, u64)>,
    /// Drives are cloned there by reflink (they share the image's blocks).
    pub reflink: bool,
    /// What an image of each template takes on disk: its recorded image's allocated bytes,
    /// else its rootfs's unpacked size (the recorded cache entry), by template name.
    pub image_bytes: BTreeMap<String, u64>,
    /// VMs whose VMM runs now, with its resident memory in bytes.
    pub running: BTreeMap<Address, u64>,
}

fn vm_memory(r: &Resource) -> Option<(u64, bool)> {
    match &r.spec {
        Spec::Vm(v) => Some((
            v.memory,
            matches!(v.state, VmState::Running | VmState::Paused),
        )),
        _ => None,
    }
}

/// `vm.a 99GiB, vm.b 256MiB` (the five largest, then how many more).
fn list(items: &[(&Address, u64)]) -> String {
    let mut v = items.to_vec();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = v
        .iter()
        .take(5)
        .map(|(a, n)| format!("{a} {}", format_size(*n)))
        .collect();
    if v.len() > 5 {
        parts.push(format!("and {} more", v.len() - 5));
    }
    parts.join(", ")
}

/// Refuse the plan when the host cannot hold it; the message has the numbers.
pub fn check(
    changes: &[Change],
    desired: &BTreeMap<Address, Resource>,
    host: &Host,
) -> Result<(), PlanError> {
    memory(changes, desired, host)?;
    disk(changes, desired, host)
}

fn memory(
    changes: &[Change],
    desired: &BTreeMap<Address, Resource>,
    host: &Host,
) -> Result<(), PlanError> {
    let mut starting: Vec<(&Address, u64)> = Vec::new();
    let mut freed = 0u64;
    for c in changes.iter().filter(|c| c.address.kind == Kind::Vm) {
        let running_now = host.running.get(&c.address).copied();
        let wanted = desired.get(&c.address).and_then(vm_memory);
        let starts = match (c.op, wanted) {
            (Op::Create | Op::Replace | Op::Restart, Some((_, true))) => true,
            // An update starts a VM that does not run (a stopped one switched on, a crash).
            (Op::Update, Some((_, true))) => running_now.is_none(),
            _ => false,
        };
        let stops = running_now.is_some()
            && (starts || c.op == Op::Destroy || matches!(wanted, Some((_, false))));
        if starts {
            starting.push((&c.address, wanted.map_or(0, |w| w.0)));
        }
        if stops {
            freed += running_now.unwrap_or(0);
        }
    }
    if starting.is_empty() {
        return Ok(());
    }
    let first = starting[0].0.clone();
    if let Some(total) = host.memory_total {
        let all: Vec<(&Address, u64)> = desired
            .iter()
            .filter_map(|(a, r)| vm_memory(r).filter(|m| m.1).map(|m| (a, m.0)))
            .collect();
        let wanted: u64 = all.iter().map(|x| x.1).sum();
        if wanted > total {
            return Err(PlanError::Refused {
                address: first,
                why: format!(
                    "the manifest wants {} of VM memory running on this host ({}), more than the {} it has in total",
                    format_size(wanted),
                    list(&all),
                    format_size(total)
                ),
            });
        }
    }
    if let Some(avail) = host.memory_available {
        let need: u64 = starting.iter().map(|x| x.1).sum();
        let have = avail.saturating_add(freed);
        if need > have {
            let freed_text = if freed > 0 {
                format!(
                    ", counting the {} the VMs it stops use now",
                    format_size(freed)
                )
            } else {
                String::new()
            };
            return Err(PlanError::Refused {
                address: first,
                why: format!(
                    "this plan starts VMs with {} of memory ({}), more than the {} this host has available{freed_text}",
                    format_size(need),
                    list(&starting),
                    format_size(have)
                ),
            });
        }
    }
    Ok(())
}

/// What the apply writes to the state dir's filesystem (not what the drives could grow to:
/// drives are sparse, and reflink clones share their image's blocks): a new template image
/// takes about what its rootfs holds; a drive cloned by copy, what its image takes; a drive
/// cloned by reflink, an empty drive, or a grown one, next to nothing.
fn disk(
    changes: &[Change],
    desired: &BTreeMap<Address, Resource>,
    host: &Host,
) -> Result<(), PlanError> {
    let Some((dir, free)) = &host.disk_free else {
        return Ok(());
    };
    let mut adds: Vec<(&Address, u64)> = Vec::new();
    for c in changes.iter().filter(|c| c.op != Op::Destroy) {
        let Some(d) = desired.get(&c.address) else {
            continue;
        };
        let bytes = match &d.spec {
            Spec::Template(_) if c.op != Op::Update || !c.fields.is_empty() => {
                host.image_bytes.get(&c.address.name).copied()
            }
            Spec::Drive(dr) if matches!(c.op, Op::Create | Op::Replace) && !host.reflink => dr
                .template
                .as_ref()
                .and_then(|t| host.image_bytes.get(t).copied()),
            _ => None,
        };
        if let Some(b) = bytes.filter(|b| *b > 0) {
            adds.push((&c.address, b));
        }
    }
    let need: u64 = adds.iter().map(|x| x.1).sum();
    if need > *free {
        return Err(PlanError::Refused {
            address: adds[0].0.clone(),
            why: format!(
                "this plan writes about {} of images and drive copies ({}), more than the {} free on {}",
                format_size(need),
                list(&adds),
                format_size(*free),
                dir.display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "capacity_tests.rs"]
mod tests;

//! Leftovers of confinement: uids held in state for VMs nobody records, and VM cgroups of
//! this state dir (`fort/<state id>/vm-NAME`) that no record names — made by an apply killed
//! between making them and recording the VM, or left by a destroy killed half-way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Leftover, Orphan, Seen};
use crate::address::{Address, Kind};
use crate::state::Record;

/// The `vm-*` cgroup directories of this state dir, in every hierarchy.
pub(super) fn cgroups(state_id: &str) -> Vec<PathBuf> {
    let Some(h) = crate::host::cgroup::detect() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in h.state_dirs(state_id) {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        out.extend(
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && vm_of_cgroup(p).is_some()),
        );
    }
    out.sort();
    out
}

/// `vm.NAME` of a cgroup directory `…/vm-NAME`.
pub(super) fn vm_of_cgroup(path: &Path) -> Option<Address> {
    let name = path.file_name()?.to_str()?.strip_prefix("vm-")?;
    Some(Address::new(Kind::Vm, name))
}

/// Pure: the uids and cgroups among what was seen that no record owns.
pub(super) fn classify(seen: &Seen, recorded: &BTreeMap<Address, Record>, out: &mut Vec<Orphan>) {
    for u in &seen.uids {
        out.push(Orphan {
            leftover: Leftover::Uid {
                owner: u.owner.clone(),
                uid: u.uid,
            },
            reason: format!("{} is not recorded", u.owner),
        });
    }
    for c in &seen.cgroups {
        let Some(vm) = vm_of_cgroup(c) else { continue };
        let owned = recorded.get(&vm).is_some_and(|r| {
            r.outputs
                .pointer("/cgroup/dirs")
                .and_then(|d| d.as_array())
                .is_some_and(|d| d.iter().any(|p| p.as_str() == c.to_str()))
        });
        if !owned {
            out.push(Orphan {
                leftover: Leftover::Cgroup { path: c.clone() },
                reason: if recorded.contains_key(&vm) {
                    format!("{vm}'s record does not name it")
                } else {
                    format!("{vm} is not recorded")
                },
            });
        }
    }
}

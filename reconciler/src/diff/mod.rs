//! `fort diff` (pure): what would change between two desired states — two revisions of a
//! manifest, per host — with the planner's rules and symbols, and no state or host at all.
//!
//! The earlier side stands in for the state: each of its resources is taken as applied exactly
//! as declared, and the planner diffs the later side against that, as `fort plan` would on a
//! host that had converged to the earlier revision and saw nothing drift.

pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::address::Address;
use crate::manifest::{HostSelection, Manifest};
use crate::plan::{self, Change, PlanError, PlanInput, PlanOptions, Summary};
use crate::state::Record;

/// The version of the `fort diff --json` object; bumped on incompatible changes only.
pub const FORMAT_VERSION: u32 = 1;

/// One side of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct End {
    /// As given (`main`, `HEAD~2`), or `working tree`.
    pub rev: String,
    /// The commit it resolved to (full hex id); `null` for the working tree.
    pub commit: Option<String>,
}

impl End {
    /// `main (1a2b3c4)`, or `working tree`.
    pub fn describe(&self) -> String {
        match &self.commit {
            Some(c) => format!("{} ({})", self.rev, &c[..c.len().min(7)]),
            None => self.rev.clone(),
        }
    }
}

/// What changes for one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostDiff {
    /// `null` when the manifest selects no hosts (every host sees the same).
    pub host: Option<String>,
    /// Sorted by address, as in plans.
    pub changes: Vec<Change>,
    pub notes: Vec<String>,
    pub summary: Summary,
}

impl HostDiff {
    pub fn data_loss(&self) -> usize {
        self.changes.iter().filter(|c| c.data_loss).count()
    }
}

/// A whole `fort diff`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diff {
    pub format_version: u32,
    pub fort_version: String,
    pub from: End,
    pub to: End,
    /// The manifest path inside the repository.
    pub path: PathBuf,
    /// One per host compared, by name.
    pub hosts: Vec<HostDiff>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.hosts.iter().all(|h| h.changes.is_empty())
    }
}

/// One side of a range as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    Rev(String),
    /// The manifest files on disk.
    WorkTree,
}

/// What `fort diff RANGE` compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub from: Side,
    pub to: Side,
    /// `A...B`: from the merge base of A and B (what a pull request of B into A changes).
    pub merge_base: bool,
}

/// `A..B`, `A..` (to HEAD), `..B` (from HEAD), `A...B` (from their merge base), or `REV`
/// (REV to the work tree, as `git diff REV`).
pub fn parse_range(s: &str) -> Result<Range, String> {
    let rev = |x: &str| Side::Rev(if x.is_empty() { "HEAD" } else { x }.to_string());
    let (sep, merge_base) = if s.contains("...") {
        ("...", true)
    } else {
        ("..", false)
    };
    let Some((a, b)) = s.split_once(sep) else {
        if s.is_empty() {
            return Err("an empty revision range: expected REV_A..REV_B or REV".into());
        }
        return Ok(Range {
            from: rev(s),
            to: Side::WorkTree,
            merge_base: false,
        });
    };
    if (a.is_empty() && b.is_empty()) || b.contains("..") {
        return Err(format!(
            "`{s}` is not a revision range: expected REV_A..REV_B (or REV_A...REV_B, REV_A.., ..REV_B, REV)"
        ));
    }
    Ok(Range {
        from: rev(a),
        to: rev(b),
        merge_base,
    })
}

/// The host views to compare: `--host`'s, else every host either side's `hosts` lists name,
/// else one view of everything.
pub fn selections(host: Option<&str>, names: &[&BTreeSet<String>]) -> Vec<HostSelection> {
    if let Some(h) = host {
        return vec![HostSelection::Host(h.to_string())];
    }
    let all: BTreeSet<&String> = names.iter().flat_map(|n| n.iter()).collect();
    if all.is_empty() {
        return vec![HostSelection::Every];
    }
    all.into_iter()
        .map(|h| HostSelection::Host(h.clone()))
        .collect()
}

/// The changes that take a host from `before` to `after` (one host's views of two revisions).
pub fn host_diff(
    host: Option<String>,
    before: &Manifest,
    after: &Manifest,
) -> Result<HostDiff, PlanError> {
    let recorded: BTreeMap<Address, Record> = before
        .resources
        .iter()
        .map(|(a, r)| (a.clone(), Record::applied(r, serde_json::json!({}), 0, 0)))
        .collect();
    let options = PlanOptions::default();
    let input = PlanInput {
        desired: &after.resources,
        recorded: &recorded,
        observed: &BTreeMap::new(),
        options: &options,
    };
    let (mut changes, notes) = plan::diff(&input, &crate::resources::kind)?;
    // The planner speaks of a host's state; here the earlier side is a revision.
    for c in &mut changes {
        for r in &mut c.reasons {
            match r.as_str() {
                "not yet created" => *r = "added".to_string(),
                "no longer in the manifest" => *r = "removed".to_string(),
                _ => {}
            }
        }
    }
    Ok(HostDiff {
        host,
        summary: plan::summarize(&changes, &[]),
        changes,
        notes,
    })
}

#[cfg(test)]
mod tests;

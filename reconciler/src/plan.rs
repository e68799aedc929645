//! The planner (pure): desired × recorded × observed → one action per resource, with reasons.
//!
//! Nothing here touches the host. Observations are gathered by `resources::observe_all` and
//! handed in; the per-kind rules (which field change needs a restart or a replacement, which
//! kinds hold data) come from each kind's [`ResourceKind`] implementation.

pub mod capacity;
pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::address::{Address, Kind};
use crate::graph::{Graph, GraphError};
use crate::manifest::Resource;
use crate::resources::ResourceKind;
use crate::state::{Record, Status};

/// The version of the plan JSON format (`fort plan --json`, saved plans). Bumped on any
/// incompatible change; additions of fields do not bump it.
pub const FORMAT_VERSION: u32 = 1;

/// What apply will do to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
    Restart,
    Replace,
    Destroy,
}

impl Op {
    /// The symbol printed in front of the address.
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Create => "+",
            Op::Update => "~",
            Op::Restart => "~restart",
            Op::Replace => "-/+",
            Op::Destroy => "-",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Restart => "restart",
            Op::Replace => "replace",
            Op::Destroy => "destroy",
        }
    }
}

/// How a change of one spec field can be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// In place, without interrupting anything.
    Update,
    /// In place, but a running VM must restart to take it.
    Restart,
    /// Only by destroying and creating the resource again.
    Replace,
}

impl Effect {
    fn op(self) -> Op {
        match self {
            Effect::Update => Op::Update,
            Effect::Restart => Op::Restart,
            Effect::Replace => Op::Replace,
        }
    }
}

/// What observing a recorded resource on the host found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Observation {
    /// The host matches the record.
    Ok,
    /// Something the resource made is gone (`what` says which).
    Missing { what: String },
    /// Something the resource made is there but differs from the record.
    Drifted { what: String },
}

/// One field of the spec that differs between the record and the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDiff {
    pub field: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub effect: Effect,
}

/// One planned action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub address: Address,
    pub op: Op,
    /// Why, in words: the fields that changed, or what drifted.
    pub reasons: Vec<String>,
    /// Destroys or replaces data a user may care about (marked `!`).
    pub data_loss: bool,
    /// Loses the data of a drive with `protect = true`: `fort apply` refuses the plan unless
    /// it was made with (or apply is given) `--allow-data-loss`. Absent in plans of older
    /// forts, which refused such plans outright, hence the default.
    #[serde(default)]
    pub protected: bool,
    pub fields: Vec<FieldDiff>,
    /// What the resource will be, where the kind says more than its fields (a network's
    /// fence: what its guests may reach).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl Change {
    /// The action in words, for the refusal (`destroy`, `replace`).
    fn verb(&self) -> &'static str {
        if self.op == Op::Destroy {
            "destroy"
        } else {
            "replace"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// `--target`: limit the plan to these resources and what they need (for destroy: and what
    /// needs them).
    pub targets: Vec<Address>,
    /// `--replace`: destroy and create these even if unchanged.
    pub replace: Vec<Address>,
    /// `--allow-data-loss`: permit destroying or replacing protected drives.
    pub allow_data_loss: bool,
    /// A destroy plan: every selected recorded resource goes.
    pub destroy: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub restart: usize,
    pub replace: usize,
    pub destroy: usize,
    /// Leftovers of interrupted runs that apply stops or removes.
    #[serde(default)]
    pub leftovers: usize,
}

impl Summary {
    pub fn total(&self) -> usize {
        self.create + self.update + self.restart + self.replace + self.destroy + self.leftovers
    }
}

/// A whole plan, as printed by `fort plan --json` and saved by `fort plan -out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub fort_version: String,
    /// The manifest path given to `fort plan` (file or directory), absolute.
    pub manifest: Option<PathBuf>,
    pub manifest_digest: String,
    pub state_dir: PathBuf,
    pub state_digest: String,
    pub options: PlanOptions,
    /// Sorted by address.
    pub changes: Vec<Change>,
    /// Remarks that are not actions (e.g. data kept on purpose).
    pub notes: Vec<String>,
    /// Leftovers of interrupted runs no record owns (apply removes those it can).
    #[serde(default)]
    pub orphans: Vec<crate::orphans::Orphan>,
    /// The image tags resolved to digests for this plan: applying it saved is refused when one
    /// has moved since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ResolvedImage>,
    pub summary: Summary,
}

/// An image rootfs whose tag was resolved when the plan was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// `rootfs.NAME`.
    pub address: Address,
    /// `registry/repository:tag` (or `oci-layout:PATH:tag`).
    pub image: String,
    pub digest: String,
}

impl Plan {
    /// Nothing to do: no changes and no leftover to remove.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.orphans.iter().any(crate::orphans::Orphan::removed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{address} is protected (protect = true) and this plan would {action} it, losing its data; re-run with --allow-data-loss if that is what you want")]
    Protected {
        address: Address,
        action: &'static str,
    },
    #[error("--replace {0}: not in the manifest")]
    ReplaceUnknown(Address),
    #[error("{address}: {why}")]
    Refused { address: Address, why: String },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Everything the planner looks at.
pub struct PlanInput<'a> {
    pub desired: &'a BTreeMap<Address, Resource>,
    pub recorded: &'a BTreeMap<Address, Record>,
    /// Observations of recorded resources; a missing entry means "not observed" (treated as Ok).
    pub observed: &'a BTreeMap<Address, Observation>,
    pub options: &'a PlanOptions,
}

/// The graph over everything desired and everything recorded: desired resources use the
/// manifest's references, recorded-only ones the references recorded when they were applied.
pub fn graph_of(
    desired: &BTreeMap<Address, Resource>,
    recorded: &BTreeMap<Address, Record>,
) -> Result<Graph, GraphError> {
    let nodes = desired.iter().map(|(a, r)| (a, r.deps.as_slice())).chain(
        recorded
            .iter()
            .filter(|(a, _)| !desired.contains_key(*a))
            .map(|(a, r)| (a, r.deps.as_slice())),
    );
    Graph::new(nodes)
}

/// Compute the changes. `kinds` gives each kind's rules.
pub fn diff(
    input: &PlanInput<'_>,
    kinds: &dyn Fn(Kind) -> &'static dyn ResourceKind,
) -> Result<(Vec<Change>, Vec<String>), PlanError> {
    let opts = input.options;
    for r in &opts.replace {
        if !input.desired.contains_key(r) {
            return Err(PlanError::ReplaceUnknown(r.clone()));
        }
    }
    let empty = BTreeMap::new();
    let desired = if opts.destroy { &empty } else { input.desired };
    let selected: Option<BTreeSet<Address>> = if opts.targets.is_empty() {
        None
    } else {
        let g = graph_of(input.desired, input.recorded)?;
        Some(if opts.destroy {
            g.with_dependents(&opts.targets)?
        } else {
            g.with_dependencies(&opts.targets)?
        })
    };

    let mut changes = Vec::new();
    let mut notes = Vec::new();
    for (addr, d, r) in merge_by_address(desired, input.recorded) {
        if selected.as_ref().is_some_and(|s| !s.contains(addr)) {
            continue;
        }
        let kind = kinds(addr.kind);
        let o = input.observed.get(addr);
        if let Some(change) = kind.plan(d, r, o, opts, &mut notes)? {
            changes.push(change);
        }
    }
    notes.extend(older_image_notes(input, &changes));
    Ok((changes, notes))
}

/// Desired and recorded resources side by side, in address order. Both maps are sorted, so
/// one merging pass replaces a tree lookup per resource (which dominates at 10k resources).
fn merge_by_address<'a>(
    desired: &'a BTreeMap<Address, Resource>,
    recorded: &'a BTreeMap<Address, Record>,
) -> impl Iterator<Item = (&'a Address, Option<&'a Resource>, Option<&'a Record>)> {
    let mut d = desired.iter().peekable();
    let mut r = recorded.iter().peekable();
    std::iter::from_fn(move || match (d.peek(), r.peek()) {
        (None, None) => None,
        (Some(_), None) => d.next().map(|(a, x)| (a, Some(x), None)),
        (None, Some(_)) => r.next().map(|(a, y)| (a, None, Some(y))),
        (Some((da, _)), Some((ra, _))) => match da.cmp(ra) {
            std::cmp::Ordering::Less => d.next().map(|(a, x)| (a, Some(x), None)),
            std::cmp::Ordering::Greater => r.next().map(|(a, y)| (a, None, Some(y))),
            std::cmp::Ordering::Equal => {
                let (a, x) = d.next()?;
                let (_, y) = r.next()?;
                Some((a, Some(x), Some(y)))
            }
        },
    })
}

/// Drives are never rebuilt from a changed template: say which ones are (or will be, after
/// this plan) based on an older image than their template's.
fn older_image_notes(input: &PlanInput<'_>, changes: &[Change]) -> Vec<String> {
    fn image(r: &Record) -> Option<&str> {
        r.outputs.get("image").and_then(Value::as_str)
    }
    // Per template: whether this plan changes it, and its recorded image. Computed once, so
    // the pass stays linear however many drives and changes there are.
    let changing: BTreeSet<&str> = changes
        .iter()
        .filter(|c| c.address.kind == Kind::Template && c.op != Op::Destroy)
        .map(|c| c.address.name.as_str())
        .collect();
    let template_images: BTreeMap<&str, &str> = input
        .recorded
        .iter()
        .filter(|(a, _)| a.kind == Kind::Template)
        .filter_map(|(a, r)| Some((a.name.as_str(), image(r)?)))
        .collect();
    let mut notes = Vec::new();
    for (addr, d, r) in merge_by_address(input.desired, input.recorded) {
        let (
            Some(Resource {
                spec:
                    crate::manifest::Spec::Drive(crate::manifest::DriveSpec {
                        template: Some(template),
                        ..
                    }),
                ..
            }),
            Some(r),
        ) = (d, r)
        else {
            continue;
        };
        let Some(drive_image) = image(r) else {
            continue;
        };
        let older = template_images
            .get(template.as_str())
            .is_some_and(|t| *t != drive_image);
        if changing.contains(template.as_str()) || older {
            notes.push(format!(
                "{addr} is based on an older image of template.{template} and keeps it (drives are never rebuilt from a changed template; `--replace {addr}` rebuilds it, losing its data)"
            ));
        }
    }
    notes
}

/// The rules every kind starts from (a kind may wrap or replace them):
/// not recorded → create; not desired → destroy; `--replace` → replace; changed fields → the
/// strongest effect among them; otherwise drift → create (missing) or update (drifted).
/// Losing a protected drive's data is planned like any change, marked `protected`: refusing
/// it is up to whoever executes the plan ([`refuse_protected`]), so `fort plan` can show it.
pub fn standard<K: ResourceKind + ?Sized>(
    kind: &K,
    desired: Option<&Resource>,
    recorded: Option<&Record>,
    observed: Option<&Observation>,
    opts: &PlanOptions,
) -> Result<Option<Change>, PlanError> {
    let (addr, op, reasons, fields) = match (desired, recorded) {
        (None, None) => return Ok(None),
        (Some(d), None) => (
            &d.address,
            Op::Create,
            vec!["not yet created".to_string()],
            vec![],
        ),
        (None, Some(r)) => {
            let mut reasons = vec![if opts.destroy {
                "destroy requested".to_string()
            } else {
                "no longer in the manifest".to_string()
            }];
            reasons.extend(unfinished(r));
            (&r.address, Op::Destroy, reasons, vec![])
        }
        (Some(d), Some(r)) if !r.applied_once() => {
            // Its first action never finished: whatever it left is in the row's outputs, and
            // observing says what became of it.
            let mut reasons = vec!["not yet created".to_string()];
            reasons.extend(unfinished(r));
            if let Some(Observation::Missing { what } | Observation::Drifted { what }) = observed {
                reasons.push(what.clone());
            }
            (&d.address, Op::Create, reasons, vec![])
        }
        (Some(d), Some(r)) => {
            // Equal hashes mean equal specs; only a differing (or older-format) hash pays for
            // building and walking the JSON trees.
            let fields = if r.spec_hash == d.spec_hash() {
                Vec::new()
            } else {
                field_diffs(kind, &r.spec, &d.spec_json())
            };
            let mut reasons: Vec<String> = unfinished(r).into_iter().collect();
            let drift = match observed {
                None | Some(Observation::Ok) => None,
                Some(Observation::Missing { what }) => Some((Op::Create, what)),
                Some(Observation::Drifted { what }) => Some((Op::Update, what)),
            };
            if opts.replace.contains(&d.address) {
                reasons.insert(0, "replacement requested (--replace)".to_string());
                (&d.address, Op::Replace, reasons, fields)
            } else if let Some(max) = fields.iter().map(|f| f.effect).max() {
                reasons.extend(fields.iter().map(|f| format!("{} changed", f.field)));
                (&d.address, max.op(), reasons, fields)
            } else if let Some((op, what)) = drift {
                reasons.push(format!("drift: {what}"));
                (&d.address, op, reasons, fields)
            } else if r.unfinished() {
                (&d.address, Op::Update, reasons, fields)
            } else {
                return Ok(None);
            }
        }
    };
    // A resource that was never applied holds nothing yet.
    let data_loss = kind.holds_data()
        && matches!(op, Op::Destroy | Op::Replace)
        && recorded.is_some_and(Record::applied_once);
    Ok(Some(Change {
        details: Vec::new(),
        address: addr.clone(),
        op,
        reasons,
        data_loss,
        protected: data_loss && is_protected(desired, recorded),
        fields,
    }))
}

/// Why a recorded row needs its action redone: the last one was interrupted or failed.
pub fn unfinished(r: &Record) -> Option<String> {
    match r.status {
        Status::Ready => None,
        Status::Failed => Some(format!(
            "the last apply failed: {}",
            r.error.as_deref().unwrap_or("unknown error")
        )),
        Status::Pending => Some(match &r.step {
            Some(step) => format!("an interrupted apply left it unfinished (after step {step})"),
            None => "an interrupted apply left it unfinished (before its first step)".to_string(),
        }),
    }
}

/// What apply, destroy and watch check before executing a plan: without `--allow-data-loss`,
/// a change losing a protected drive's data refuses the whole plan (the first such change,
/// in address order, is named).
pub fn refuse_protected(changes: &[Change], allow_data_loss: bool) -> Result<(), PlanError> {
    if allow_data_loss {
        return Ok(());
    }
    match changes.iter().find(|c| c.protected) {
        Some(c) => Err(PlanError::Protected {
            address: c.address.clone(),
            action: c.verb(),
        }),
        None => Ok(()),
    }
}

fn is_protected(desired: Option<&Resource>, recorded: Option<&Record>) -> bool {
    let flag = |v: &Value| v.get("protect").and_then(Value::as_bool).unwrap_or(false);
    desired.is_some_and(|d| flag(&d.spec_json())) || recorded.is_some_and(|r| flag(&r.spec))
}

/// The fields of two spec objects that differ, as dotted paths (`source.sha256`), recursing
/// into nested objects. The effect of a change is decided by its top-level field.
pub fn field_diffs<K: ResourceKind + ?Sized>(
    kind: &K,
    before: &Value,
    after: &Value,
) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    diff_values(kind, "", before, after, &mut out);
    out
}

fn diff_values<K: ResourceKind + ?Sized>(
    kind: &K,
    path: &str,
    before: &Value,
    after: &Value,
    out: &mut Vec<FieldDiff>,
) {
    // Most specs are unchanged: one comparison, no path strings.
    if before == after {
        return;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut keys: Vec<&String> = a.keys().collect();
            keys.extend(b.keys().filter(|k| !a.contains_key(*k)));
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (b.get(k), a.get(k)) {
                    (Some(bv), Some(av)) => diff_values(kind, &sub, bv, av, out),
                    (bv, av) => out.push(field_diff(kind, sub, bv.cloned(), av.cloned())),
                }
            }
        }
        (b, a) if b != a => out.push(field_diff(
            kind,
            path.to_string(),
            Some(b.clone()),
            Some(a.clone()),
        )),
        _ => {}
    }
}

fn field_diff<K: ResourceKind + ?Sized>(
    kind: &K,
    field: String,
    before: Option<Value>,
    after: Option<Value>,
) -> FieldDiff {
    let top = field.split('.').next().unwrap_or(&field);
    FieldDiff {
        effect: kind.field_effect(top),
        field,
        before,
        after,
    }
}

/// Count the changes by op, and the leftovers apply removes.
pub fn summarize(changes: &[Change], orphans: &[crate::orphans::Orphan]) -> Summary {
    let mut s = Summary {
        leftovers: orphans.iter().filter(|o| o.removed()).count(),
        ..Summary::default()
    };
    for c in changes {
        match c.op {
            Op::Create => s.create += 1,
            Op::Update => s.update += 1,
            Op::Restart => s.restart += 1,
            Op::Replace => s.replace += 1,
            Op::Destroy => s.destroy += 1,
        }
    }
    s
}

#[cfg(test)]
mod tests;

//! The executor: runs a plan's changes along the graph, independent branches concurrently,
//! retrying transient errors, skipping the dependents of failures, and recording every result
//! in state the moment it is known.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::address::Address;
use crate::crash;
use crate::manifest::Resource;
use crate::plan::{Change, Op, Plan};
use crate::resources::{self, error_chain, Ctx, ResourceError};
use crate::state::{now_ms, Record, RunId, StateStore, Status};

#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// At most this many actions at once.
    pub parallelism: usize,
    /// Tries per action for transient errors (1 = no retry).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Set (e.g. by Ctrl-C) to start no further actions; running ones finish and are recorded.
    pub cancel: Arc<AtomicBool>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            attempts: 4,
            backoff: Duration::from_millis(250),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// How one action ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Done {
        seconds: f64,
        attempts: u32,
    },
    Failed {
        error: String,
        attempts: u32,
    },
    /// Not attempted because something it needs failed or was skipped.
    Skipped {
        because: Address,
    },
    /// Not started because the apply was interrupted.
    NotStarted,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    pub address: Address,
    pub op: Op,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// How removing one leftover ended.
#[derive(Debug, Clone, Serialize)]
pub struct LeftoverReport {
    #[serde(flatten)]
    pub orphan: crate::orphans::Orphan,
    /// `None` when it is gone.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Leftovers of interrupted runs, removed before the actions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<LeftoverReport>,
    pub actions: Vec<ActionReport>,
    pub interrupted: bool,
}

impl Report {
    pub fn succeeded(&self) -> bool {
        !self.interrupted
            && self.leftovers.iter().all(|l| l.error.is_none())
            && self
                .actions
                .iter()
                .all(|a| matches!(a.outcome, Outcome::Done { .. }))
    }

    pub fn count(&self, pred: impl Fn(&ActionReport) -> bool) -> usize {
        self.actions.iter().filter(|a| pred(a)).count()
    }
}

/// Told about progress (the CLI prints it; watch logs it).
pub trait Progress: Send + Sync {
    fn started(&self, change: &Change);
    fn retrying(&self, change: &Change, attempt: u32, error: &str, delay: Duration);
    fn finished(&self, change: &Change, outcome: &Outcome);
    /// A leftover of an interrupted run was removed (`error` is `None`) or could not be.
    fn leftover(&self, _orphan: &crate::orphans::Orphan, _error: Option<&str>) {}
}

/// A `Progress` that says nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn started(&self, _: &Change) {}
    fn retrying(&self, _: &Change, _: u32, _: &str, _: Duration) {}
    fn finished(&self, _: &Change, _: &Outcome) {}
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Waiting,
    Running,
    Ok,
    Bad,
}

struct Node {
    change: Change,
    /// Must finish first (in any way).
    after: Vec<usize>,
    /// Must have succeeded, else this is skipped.
    needs: Vec<usize>,
}

/// Execute `plan`. `desired` is the manifest's resources (empty for destroy plans); `recorded`
/// the state as it was when the plan was made.
pub async fn execute(
    plan: &Plan,
    desired: &BTreeMap<Address, Resource>,
    recorded: &BTreeMap<Address, Record>,
    ctx: Arc<Ctx>,
    run: RunId,
    opts: &ExecOptions,
    progress: Arc<dyn Progress>,
) -> Result<Report, ResourceError> {
    // Leftovers first: a stray VMM holds the TAP and the drives the actions need.
    let mut leftovers = Vec::new();
    for (orphan, r) in crate::orphans::clean(&ctx, &plan.orphans).await {
        let error = r.err();
        progress.leftover(&orphan, error.as_deref());
        leftovers.push(LeftoverReport { orphan, error });
    }
    let nodes = schedule(plan, desired, recorded);
    let mut slots = vec![Slot::Waiting; nodes.len()];
    let mut outcomes: Vec<Option<Outcome>> = vec![None; nodes.len()];
    let mut running: JoinSet<Finished> = JoinSet::new();
    let parallelism = opts.parallelism.max(1);
    let mut interrupted = false;

    loop {
        // Settle everything that can be decided without running: skips and interruptions.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..nodes.len() {
                if slots[i] != Slot::Waiting || !nodes[i].after.iter().all(|&j| done(slots[j])) {
                    continue;
                }
                let failed_need = nodes[i].needs.iter().find(|&&j| slots[j] == Slot::Bad);
                let outcome = if let Some(&j) = failed_need {
                    Outcome::Skipped {
                        because: nodes[j].change.address.clone(),
                    }
                } else if opts.cancel.load(Ordering::SeqCst) {
                    interrupted = true;
                    Outcome::NotStarted
                } else if running.len() < parallelism {
                    slots[i] = Slot::Running;
                    progress.started(&nodes[i].change);
                    let job = Job {
                        change: nodes[i].change.clone(),
                        desired: desired.get(&nodes[i].change.address).cloned(),
                        recorded: recorded.get(&nodes[i].change.address).cloned(),
                        ctx: ctx.clone(),
                        opts: opts.clone(),
                        progress: progress.clone(),
                    };
                    running.spawn(async move {
                        let t = Instant::now();
                        let r = job.run().await;
                        (i, r, t.elapsed().as_secs_f64())
                    });
                    continue;
                } else {
                    continue;
                };
                slots[i] = Slot::Bad;
                progress.finished(&nodes[i].change, &outcome);
                outcomes[i] = Some(outcome);
                progressed = true;
            }
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (i, result, seconds) = match joined {
            Ok(v) => v,
            Err(e) => {
                // A panicking action must not take the whole apply down; find no index, so
                // treat it as fatal for bookkeeping only after the others finish.
                tracing::error!("an action task panicked: {e}");
                continue;
            }
        };
        let node = &nodes[i];
        let outcome = match result {
            Ok((outputs, attempts)) => {
                crash::hit(crash::Point::ActionDone);
                record_success(&ctx, run, &node.change, desired, recorded, outputs)?;
                slots[i] = Slot::Ok;
                Outcome::Done { seconds, attempts }
            }
            Err(f) => {
                let error = error_chain(&f.error);
                record_failure(&ctx, run, &node.change, &error)?;
                slots[i] = Slot::Bad;
                Outcome::Failed {
                    error,
                    attempts: f.attempts,
                }
            }
        };
        progress.finished(&node.change, &outcome);
        outcomes[i] = Some(outcome);
    }

    let actions = nodes
        .into_iter()
        .zip(outcomes)
        .map(|(n, o)| ActionReport {
            address: n.change.address,
            op: n.change.op,
            outcome: o.unwrap_or(Outcome::Failed {
                error: "the action's task panicked".to_string(),
                attempts: 1,
            }),
        })
        .collect();
    Ok(Report {
        leftovers,
        actions,
        interrupted,
    })
}

fn done(s: Slot) -> bool {
    matches!(s, Slot::Ok | Slot::Bad)
}

/// Order the plan's changes: destroys first, dependents before what they reference; then
/// creations and updates, references before what references them.
fn schedule(
    plan: &Plan,
    desired: &BTreeMap<Address, Resource>,
    recorded: &BTreeMap<Address, Record>,
) -> Vec<Node> {
    let index: HashMap<&Address, usize> = plan
        .changes
        .iter()
        .enumerate()
        .map(|(i, c)| (&c.address, i))
        .collect();
    let destroys: Vec<usize> = plan
        .changes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.op == Op::Destroy)
        .map(|(i, _)| i)
        .collect();
    plan.changes
        .iter()
        .map(|c| {
            let (after, needs) = if c.op == Op::Destroy {
                // Whatever recorded resource references this one goes first.
                let needs: Vec<usize> = recorded
                    .values()
                    .filter(|r| r.deps.contains(&c.address))
                    .filter_map(|r| index.get(&r.address).copied())
                    .filter(|&j| plan.changes[j].op == Op::Destroy)
                    .collect();
                (needs.clone(), needs)
            } else {
                let deps = desired
                    .get(&c.address)
                    .map(|r| r.deps.as_slice())
                    .unwrap_or(&[]);
                let needs: Vec<usize> = deps
                    .iter()
                    .filter_map(|d| index.get(d).copied())
                    .filter(|&j| plan.changes[j].op != Op::Destroy)
                    .collect();
                let mut after = needs.clone();
                after.extend(destroys.iter().copied());
                (after, needs)
            };
            Node {
                change: c.clone(),
                after,
                needs,
            }
        })
        .collect()
}

/// What a finished job reports: its node, its outputs and attempts or why it failed, seconds.
type Finished = (
    usize,
    Result<(Option<serde_json::Value>, u32), Failure>,
    f64,
);

/// Why an action did not succeed.
struct Failure {
    error: ResourceError,
    attempts: u32,
}

struct Job {
    change: Change,
    desired: Option<Resource>,
    recorded: Option<Record>,
    ctx: Arc<Ctx>,
    opts: ExecOptions,
    progress: Arc<dyn Progress>,
}

impl Job {
    /// Record the intent, then run with retries; returns the outputs (None for a destroy) and
    /// the number of attempts.
    async fn run(&self) -> Result<(Option<serde_json::Value>, u32), Failure> {
        let fail = |error, attempts| Failure { error, attempts };
        self.intend().map_err(|e| fail(e, 1))?;
        crash::hit(crash::Point::ActionIntent);
        let mut attempt = 1;
        loop {
            match self.once().await {
                Ok(v) => return Ok((v, attempt)),
                Err(e)
                    if e.is_transient()
                        && attempt < self.opts.attempts
                        && !self.opts.cancel.load(Ordering::SeqCst) =>
                {
                    let delay = self.opts.backoff * 2u32.saturating_pow(attempt - 1);
                    self.progress
                        .retrying(&self.change, attempt, &error_chain(&e), delay);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => return Err(fail(error, attempt)),
            }
        }
    }

    /// Before anything touches the host: the row says an action is under way (a new resource
    /// gets a row without a spec), so a crash from here on leaves a record to act on.
    fn intend(&self) -> Result<(), ResourceError> {
        let intent = match (&self.recorded, &self.desired) {
            (Some(r), _) => r.clone(),
            (None, Some(d)) => Record::intent(d, now_ms()),
            (None, None) => return Ok(()),
        };
        self.ctx.with_store(|s| s.intend(&intent))
    }

    /// One attempt. Kinds see the row as it is now (an earlier attempt, or an interrupted
    /// run, may have recorded steps), not as it was when the plan was made.
    async fn once(&self) -> Result<Option<serde_json::Value>, ResourceError> {
        let addr = &self.change.address;
        let kind = resources::kind(addr.kind);
        let missing = || ResourceError::Check(format!("{addr} is not in the manifest"));
        let current = self.ctx.record(addr)?;
        match self.change.op {
            Op::Destroy => {
                if let Some(r) = current.as_ref().filter(|r| r.made_anything()) {
                    kind.destroy(&self.ctx, r).await?;
                }
                Ok(None)
            }
            Op::Replace => {
                let d = self.desired.as_ref().ok_or_else(missing)?;
                let current = match current {
                    Some(r) if r.applied_once() => {
                        kind.destroy(&self.ctx, &r).await?;
                        crash::hit(crash::Point::ReplaceDestroyed);
                        // Gone from the host: from here on it is a create.
                        let intent = Record::intent(d, now_ms());
                        self.ctx.with_store(|s| {
                            s.put(&intent, None, "replace", "destroyed, creating again")
                        })?;
                        Some(intent)
                    }
                    other => other,
                };
                Ok(Some(kind.apply(&self.ctx, d, current.as_ref()).await?))
            }
            Op::Create | Op::Update | Op::Restart => {
                let d = self.desired.as_ref().ok_or_else(missing)?;
                Ok(Some(kind.apply(&self.ctx, d, current.as_ref()).await?))
            }
        }
    }
}

fn reasons(change: &Change) -> String {
    change.reasons.join("; ")
}

fn record_success(
    ctx: &Ctx,
    run: RunId,
    change: &Change,
    desired: &BTreeMap<Address, Resource>,
    recorded: &BTreeMap<Address, Record>,
    outputs: Option<serde_json::Value>,
) -> Result<(), ResourceError> {
    let addr = &change.address;
    ctx.with_store(|s| match (outputs, desired.get(addr)) {
        (Some(outputs), Some(d)) => {
            let now = now_ms();
            let created = recorded.get(addr).map_or(now, |r| r.created_at);
            let rec = Record::applied(d, outputs, created, now);
            s.put(&rec, Some(run), change.op.as_str(), &reasons(change))
        }
        _ => s.remove(addr, Some(run), "destroy", &reasons(change)),
    })
}

/// A failed action leaves its row with status `failed` and the error; the outputs are what
/// its last recorded step said, so the next plan redoes it — or, when it left the manifest,
/// removes what is left. A first create that failed leaves no row (state is as it was): kinds
/// undo what a failed create made, and what an undo misses is a leftover the next plan finds.
fn record_failure(
    ctx: &Ctx,
    run: RunId,
    change: &Change,
    error: &str,
) -> Result<(), ResourceError> {
    let addr = &change.address;
    let detail = format!("{} failed: {error}", change.op.as_str());
    ctx.with_store(|s| match s.get(addr)? {
        Some(r) if r.applied_once() => s.set_status(
            addr,
            Status::Failed,
            Some(error),
            Some(run),
            "fail",
            &detail,
        ),
        Some(_) => s.remove(addr, Some(run), "fail", &detail),
        None => s.note(addr, Some(run), "fail", &detail),
    })
}

//! `fort watch`: apply, then apply again whenever a watched file changes (debounced) and
//! every `--interval` to heal drift — with the safety rails of design §2: a manifest that
//! does not load is reported and ignored, a plan destroying more than `--max-destroy` is
//! refused, the state-dir lock is held only during a pass, SIGTERM/SIGINT finish the running
//! actions and exit 0 (VMs keep running), SIGHUP runs a pass now. With `--git URL` the
//! manifest comes from the branch's newest commit instead (`cli::gitops`), fetched every
//! interval and on SIGHUP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use notify::Watcher as _;
use tokio::signal::unix::{signal, SignalKind};

use super::args::WatchArgs;
use super::gitops::{self, GitSource, Outcome, Prepared};
use super::plan::{make_plan, resolve_images};
use super::{exit, session, term, Cli, CliError};
use crate::address::{Address, Kind};
use crate::apply::{self, ExecOptions, Outcome as ActionOutcome};
use crate::gitops::ProblemKind;
use crate::manifest::{Spec, VmSpec};
use crate::plan::{render, Op, PlanError, PlanOptions};
use crate::state::{CommitInfo, SqliteStore, StateLock, StateStore};
use crate::watch::{policy_allows, Crashes};

/// What a pass did, for its one-line summary (and, with --git, what the commit's state is).
enum Pass {
    Invalid,
    NoChanges,
    /// Why the plan was refused.
    Refused(String),
    /// Whether every action succeeded.
    Applied(bool),
    Error(String),
}

struct Watch<'a> {
    cli: &'a Cli,
    args: &'a WatchArgs,
    cancel: Arc<AtomicBool>,
    files: BTreeSet<PathBuf>,
    manifest_path: PathBuf,
    started: Instant,
    /// Per VM: crashes seen, backoff, and the dead VMM's PID already counted.
    crashes: BTreeMap<Address, (Crashes, Option<u64>)>,
    /// `--git`: the branch followed.
    git: Option<GitSource>,
    /// `--git`: failed fetches in a row (the next one waits longer).
    fetch_attempts: u32,
    /// `--git`: the commit the last pass planned.
    last_commit: Option<String>,
}

/// Did the guest power itself off (the kernel's last words on the console)?
fn powered_off(rec: Option<&crate::state::Record>) -> bool {
    let Some(path) = rec
        .and_then(|r| r.outputs.get("console_log"))
        .and_then(|v| v.as_str())
    else {
        return false;
    };
    let Ok(text) = std::fs::read(path) else {
        return false;
    };
    let tail = &text[text.len().saturating_sub(4096)..];
    String::from_utf8_lossy(tail).contains("reboot: Power down")
}

impl Watch<'_> {
    /// `--git`: the manifest of the commit to apply, with the commit and whether it is the
    /// branch's newest (`false`: the converged commit, re-applied to heal drift while the
    /// newest cannot be); `None`: nothing to apply.
    async fn git_target(
        &mut self,
        why: &str,
        src: &GitSource,
    ) -> Option<(crate::manifest::Manifest, CommitInfo, bool)> {
        let state_dir = session::state_dir(self.cli, None);
        match gitops::prepare(src, &state_dir, self.args.lock_timeout, self.cancel.clone()).await {
            Err(e) => {
                tracing::error!("{why}: {}", crate::resources::error_chain(&e));
                None
            }
            Ok(Prepared::Apply(t)) => {
                self.fetch_attempts = 0;
                if self.last_commit.as_deref() != Some(t.commit.id.as_str()) {
                    tracing::info!(
                        "{why}: commit {} \"{}\" ({}): applying",
                        crate::gitops::short(&t.commit.id),
                        t.commit.subject,
                        t.commit.author
                    );
                    self.last_commit = Some(t.commit.id.clone());
                }
                Some((t.manifest, t.commit, true))
            }
            Ok(Prepared::Stay {
                reason,
                new,
                fetch_attempts,
                fallback,
            }) => {
                self.fetch_attempts = fetch_attempts;
                if new {
                    tracing::warn!("{why}: {reason}");
                } else {
                    tracing::info!("{why}: still: {reason}");
                }
                let t = fallback?;
                self.last_commit = Some(t.commit.id.clone());
                Some((t.manifest, t.commit, false))
            }
        }
    }

    async fn pass(&mut self, why: &str) -> Pass {
        let Some(src) = self.git.clone() else {
            return self.pass_at(why, None).await;
        };
        let state_dir = session::state_dir(self.cli, None);
        let Some((m, commit, newest)) = self.git_target(why, &src).await else {
            report(&state_dir, &src, why);
            return Pass::Invalid;
        };
        let pass = self.pass_at(why, Some((m, &commit))).await;
        if newest {
            let outcome = match &pass {
                Pass::NoChanges | Pass::Applied(true) => Some(Outcome::Converged),
                Pass::Applied(false) => Some(Outcome::Problem(
                    ProblemKind::ApplyFailed,
                    format!(
                        "applying commit {} failed; the next pass tries again",
                        crate::gitops::short(&commit.id)
                    ),
                )),
                Pass::Refused(r) => Some(Outcome::Problem(ProblemKind::Refused, r.clone())),
                Pass::Error(e) => Some(Outcome::Problem(ProblemKind::ApplyFailed, e.clone())),
                Pass::Invalid => None,
            };
            if let Some(o) = outcome {
                if let Err(e) = gitops::record(&state_dir, &commit, o) {
                    tracing::error!(
                        "{why}: cannot record the commit's state: {}",
                        crate::resources::error_chain(&e)
                    );
                }
            }
        }
        report(&state_dir, &src, why);
        pass
    }

    /// One pass over the manifest: `-f`'s, or `git`'s (with the commit it comes from).
    async fn pass_at(
        &mut self,
        why: &str,
        git: Option<(crate::manifest::Manifest, &CommitInfo)>,
    ) -> Pass {
        let started = Instant::now();
        let (loaded, commit) = match git {
            Some((m, c)) => (Ok(m), Some(c)),
            None => (session::load_manifest(self.cli), None),
        };
        let m = match loaded {
            Ok(m) => m,
            Err(e) => {
                let diags = e.diagnostics();
                if diags.is_empty() {
                    tracing::error!(
                        "{why}: the manifest cannot be loaded, keeping the last good state: {}",
                        crate::resources::error_chain(&e)
                    );
                } else {
                    for d in diags {
                        tracing::error!("{why}: {d}");
                    }
                    tracing::error!("{why}: the manifest is invalid; nothing was changed (the host keeps its last good state)");
                }
                return Pass::Invalid;
            }
        };
        self.files = crate::watch::watched_files(&m);
        let state_dir = session::state_dir(self.cli, Some(&m));
        if let Err(e) = std::fs::create_dir_all(&state_dir) {
            let msg = format!("cannot create {}: {e}", state_dir.display());
            tracing::error!("{why}: {msg}");
            return Pass::Error(msg);
        }
        let dir = state_dir.clone();
        let timeout = self.args.lock_timeout;
        let lock = match tokio::task::spawn_blocking(move || {
            StateLock::acquire(&dir, timeout, "fort watch")
        })
        .await
        {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                let msg = crate::resources::error_chain(&e);
                tracing::warn!("{why}: skipped: {msg}");
                return Pass::Error(msg);
            }
            Err(e) => {
                tracing::error!("{why}: lock task failed: {e}");
                return Pass::Error(format!("lock task failed: {e}"));
            }
        };
        let result = self.pass_locked(why, &m, &state_dir, started, commit).await;
        drop(lock);
        match result {
            Ok(p) => p,
            Err(e) => {
                let diags = e.diagnostics();
                if diags.is_empty() {
                    tracing::error!("{why}: {}", crate::resources::error_chain(&e));
                } else {
                    for d in diags {
                        tracing::error!("{why}: {d}");
                    }
                }
                Pass::Error(crate::resources::error_chain(&e))
            }
        }
    }

    async fn pass_locked(
        &mut self,
        why: &str,
        m: &crate::manifest::Manifest,
        state_dir: &std::path::Path,
        started: Instant,
        commit: Option<&CommitInfo>,
    ) -> Result<Pass, CliError> {
        let store = SqliteStore::open(state_dir)?;
        let recorded = store.resources()?;
        let digest = store.digest()?;
        // Tags are resolved every pass: a moved tag is a change like any other.
        let (resolved, images) = resolve_images(m.clone()).await?;
        let m = &resolved;
        let ctx = session::ctx(state_dir, store, false, Some(m));
        let mut plan = make_plan(
            &ctx,
            Some(m),
            &recorded,
            digest,
            PlanOptions::default(),
            images,
        )
        .await?;
        // Crashed VMs: the restart policy and the backoff decide whether this pass restarts
        // them; each crash is counted once and written to the VM's history.
        let now = self.started.elapsed().as_secs();
        let mut restarting = Vec::new();
        let mut keep = Vec::new();
        for c in std::mem::take(&mut plan.changes) {
            let crashed = c.address.kind == Kind::Vm
                && c.op == Op::Create
                && c.reasons.iter().any(|r| r.contains("its VMM process"));
            let policy = match m.resources.get(&c.address).map(|r| &r.spec) {
                Some(Spec::Vm(VmSpec { restart, .. })) => *restart,
                _ => crate::manifest::RestartPolicy::OnFailure,
            };
            if !crashed {
                keep.push(c);
                continue;
            }
            let rec = recorded.get(&c.address);
            let pid = rec
                .and_then(|r| r.outputs.pointer("/started/vmm/pid"))
                .and_then(|p| p.as_u64());
            let clean = powered_off(rec);
            let (crashes, counted) = self.crashes.entry(c.address.clone()).or_default();
            if *counted != pid {
                *counted = pid;
                let delay = crashes.crashed(now);
                let allowed = policy_allows(policy, clean);
                let detail = format!(
                    "its VMM process {} died{} (crash {} seen by this watch); restart = \"{}\": {}",
                    pid.map_or_else(|| "?".into(), |p| p.to_string()),
                    if clean {
                        " after the guest powered off"
                    } else {
                        ""
                    },
                    crashes.count,
                    serde_json::to_value(policy)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    if !allowed {
                        "left stopped".to_string()
                    } else if delay == 0 {
                        "restarting now".to_string()
                    } else {
                        format!("restarting in {delay}s (backoff)")
                    }
                );
                tracing::warn!("{why}: {}: {detail}", c.address);
                let addr = c.address.clone();
                ctx.with_store(|s| s.note(&addr, None, "crash", &detail))?;
                if !allowed {
                    continue;
                }
            }
            if !policy_allows(policy, clean) {
                continue;
            }
            if !crashes.may_restart(now) {
                tracing::info!(
                    "{why}: {} stays down for {}s more (backoff after {} crashes)",
                    c.address,
                    crashes.not_before - now,
                    crashes.count
                );
                continue;
            }
            restarting.push(c.address.clone());
            keep.push(c);
        }
        plan.changes = keep;
        plan.summary = crate::plan::summarize(&plan.changes, &plan.orphans);
        if plan.is_empty() {
            tracing::info!("{why}: no changes ({} ms)", started.elapsed().as_millis());
            return Ok(Pass::NoChanges);
        }
        // Watch never passes --allow-data-loss: a protected drive's data is only lost by a
        // deliberate `fort apply`, whatever --max-destroy allows.
        match crate::plan::refuse_protected(&plan.changes, false) {
            Ok(()) => {}
            Err(PlanError::Protected { address, action }) => {
                let msg = format!("refused: the plan would {action} {address}, which is protected (protect = true), losing its data; fort watch never does that: run `fort apply --allow-data-loss` to do it; nothing was applied");
                tracing::warn!("{why}: {msg}");
                return Ok(Pass::Refused(msg));
            }
            Err(e) => return Err(e.into()),
        }
        let sandboxes = crate::watch::sandbox_owned(&recorded);
        let counted: Vec<_> = plan
            .changes
            .iter()
            .filter(|c| !(c.op == Op::Destroy && sandboxes.contains(&c.address)))
            .cloned()
            .collect();
        let destroys = crate::watch::destroys(&counted);
        if destroys.len() > self.args.max_destroy {
            let msg = format!(
                "refused: the plan would destroy {} resource(s) ({}), more than --max-destroy {}; nothing was applied (run `fort apply` to do it, or raise --max-destroy)",
                destroys.len(),
                destroys.join(", "),
                self.args.max_destroy
            );
            tracing::warn!("{why}: {msg}");
            return Ok(Pass::Refused(msg));
        }
        for c in &plan.changes {
            tracing::info!(
                "{why}: {} {} ({})",
                c.op.symbol(),
                c.address,
                c.reasons.join("; ")
            );
        }
        let opts = ExecOptions {
            parallelism: self
                .args
                .parallelism
                .unwrap_or_else(|| ExecOptions::default().parallelism),
            cancel: self.cancel.clone(),
            ..ExecOptions::default()
        };
        let plan_json = serde_json::to_value(&plan).unwrap_or_default();
        let run_id = ctx.with_store(|s| s.begin_run("fort watch", &plan_json))?;
        if let Some(c) = commit {
            ctx.with_store(|s| s.set_run_commit(run_id, c))?;
        }
        let progress = Arc::new(term::Lines {
            style: render::Style { color: false },
            to_stderr: true,
        });
        let report = apply::execute(
            &plan,
            &m.resources,
            &recorded,
            ctx.clone(),
            run_id,
            &opts,
            progress,
        )
        .await?;
        super::apply::finish_run(&ctx, run_id, &report, true)?;
        for addr in restarting {
            let ok = report
                .actions
                .iter()
                .any(|a| a.address == addr && matches!(a.outcome, ActionOutcome::Done { .. }));
            if ok {
                if let Some((c, _)) = self.crashes.get_mut(&addr) {
                    c.last_restart = Some(now);
                }
                let detail = "restarted by fort watch after a crash";
                ctx.with_store(|s| s.note(&addr, None, "restart", detail))?;
            }
        }
        let done = report.count(|a| matches!(a.outcome, ActionOutcome::Done { .. }));
        let failed = report.count(|a| matches!(a.outcome, ActionOutcome::Failed { .. }));
        let skipped = report.count(|a| matches!(a.outcome, ActionOutcome::Skipped { .. }));
        tracing::info!(
            "{why}: applied {} change(s): {done} done, {failed} failed, {skipped} skipped ({} ms)",
            plan.changes.len(),
            started.elapsed().as_millis()
        );
        Ok(Pass::Applied(report.succeeded()))
    }
}

/// Write the host's report after a pass (`--report-dir`); a failure is logged, not fatal.
fn report(state_dir: &std::path::Path, src: &GitSource, why: &str) {
    if let Err(e) = gitops::write_report(state_dir, src) {
        tracing::error!(
            "{why}: cannot write the host report: {}",
            crate::resources::error_chain(&e)
        );
    }
}

pub use super::passes::{External, Passes};

pub async fn watch(cli: &Cli, args: &WatchArgs) -> Result<u8, CliError> {
    run(cli, args, None).await
}

/// The watch loop; `ext` adds passes on request (and a stop) for the sandbox service.
pub async fn run(cli: &Cli, args: &WatchArgs, mut ext: Option<External>) -> Result<u8, CliError> {
    let git = GitSource::from_args(cli, &args.git)?;
    if git.is_some() && cli.file.is_some() {
        return Err(CliError::Usage(
            "--git reads the manifest from the repository (--path); -f/FORT_MANIFEST cannot be given with it".to_string(),
        ));
    }
    let manifest_path = session::absolute(
        &cli.file
            .clone()
            .unwrap_or_else(|| PathBuf::from("fort.toml")),
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let (cancel, stop, stopping) = (cancel.clone(), stop.clone(), stopping.clone());
        let mut term_sig = signal(SignalKind::terminate())
            .map_err(|e| CliError::Usage(format!("cannot handle SIGTERM: {e}")))?;
        let mut int_sig = signal(SignalKind::interrupt())
            .map_err(|e| CliError::Usage(format!("cannot handle SIGINT: {e}")))?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term_sig.recv() => tracing::info!("SIGTERM: finishing the running actions, then exiting (VMs keep running)"),
                _ = int_sig.recv() => tracing::info!("SIGINT: finishing the running actions, then exiting (VMs keep running)"),
            }
            stopping.store(true, Ordering::SeqCst);
            cancel.store(true, Ordering::SeqCst);
            stop.notify_one();
        });
    }
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| CliError::Usage(format!("cannot handle SIGHUP: {e}")))?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        }
    })
    .map_err(|e| CliError::Usage(format!("cannot watch files: {e}")))?;
    let mut subscribed: BTreeSet<PathBuf> = BTreeSet::new();
    // Subscribed before the first pass: a save while it runs (a boot can take a minute) is
    // seen when it ends, not lost.
    let first = if git.is_some() {
        BTreeSet::new()
    } else {
        BTreeSet::from([manifest_path.clone()])
    };
    for d in crate::watch::watched_dirs(&manifest_path, &first) {
        if git.is_some() {
            break;
        }
        if subscribed.insert(d.clone()) {
            if let Err(e) = watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
                tracing::warn!("cannot watch {}: {e}", d.display());
            }
        }
    }

    let mut w = Watch {
        cli,
        args,
        cancel,
        files: BTreeSet::new(),
        manifest_path: manifest_path.clone(),
        started: Instant::now(),
        crashes: BTreeMap::new(),
        git: git.clone(),
        fetch_attempts: 0,
        last_commit: None,
    };
    match &git {
        Some(g) => tracing::info!(
            "following {} branch {} (path {}; fetching every {}s and on SIGHUP, max-destroy {}, state in {})",
            crate::host::git::redact(&g.url),
            g.branch,
            g.path.display(),
            args.interval.as_secs_f64(),
            args.max_destroy,
            session::state_dir(cli, None).display()
        ),
        None => tracing::info!(
            "watching {} (every {}s, debounce {} ms, max-destroy {})",
            manifest_path.display(),
            args.interval.as_secs(),
            args.debounce.as_millis(),
            args.max_destroy
        ),
    }
    if let Some(e) = &ext {
        let (stop, ext_stop, stopping) = (stop.clone(), e.stop.clone(), stopping.clone());
        tokio::spawn(async move {
            ext_stop.notified().await;
            stopping.store(true, Ordering::SeqCst);
            stop.notify_one();
        });
    }
    let mut why = "start".to_string();
    loop {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        // Sandboxes whose time is up go first: their files are removed (with the reason in
        // their history), so this very pass destroys them.
        let due = super::sandbox::reap(cli);
        if let Some(e) = &mut ext {
            // Requests made until now are served by this pass.
            while e.wake.try_recv().is_ok() {}
            e.passes.started.fetch_add(1, Ordering::SeqCst);
        }
        w.pass(&why).await;
        if let Some(e) = &ext {
            let n = e.passes.started.load(Ordering::SeqCst);
            e.passes.done.send_replace(n);
        }
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        // Follow what the manifest references now (new overlay sources, local assets).
        let mut files = w.files.clone();
        if files.is_empty() {
            files.insert(w.manifest_path.clone());
        }
        for d in crate::watch::watched_dirs(&w.manifest_path, &files) {
            // --git: the files live in checkouts fort writes itself; the remote is polled.
            if w.git.is_some() {
                break;
            }
            if subscribed.insert(d.clone()) {
                if let Err(e) = watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!("cannot watch {}: {e}", d.display());
                }
            }
        }
        let wait = if w.git.is_some() && w.fetch_attempts > 0 {
            crate::gitops::fetch_backoff(args.interval, w.fetch_attempts)
        } else {
            args.interval
        };
        // The next sandbox due wakes the loop on time (a ttl of 20s is not 30s).
        let wait = match super::sandbox::reap_due_in(due) {
            Some(d) if d < wait => d,
            _ => wait,
        };
        let next = tokio::time::Instant::now() + wait;
        let wake = async {
            let got = match &mut ext {
                Some(e) => e.wake.recv().await.is_some(),
                None => false,
            };
            if !got {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(wake);
        why = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break "interval".to_string(),
                () = &mut wake => break "sandbox request".to_string(),
                _ = stop.notified() => break String::new(),
                _ = hup.recv() => break "SIGHUP".to_string(),
                Some(p) = rx.recv() => {
                    if !crate::watch::relevant(&p, &w.manifest_path, &files) {
                        continue;
                    }
                    // Coalesce a burst of writes (editors save in several steps).
                    let quiet = args.debounce;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(quiet) => break,
                            Some(_) = rx.recv() => continue,
                        }
                    }
                    break format!("change of {}", p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()));
                }
            }
        };
    }
    tracing::info!("fort watch stopped");
    Ok(exit::OK)
}

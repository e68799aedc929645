//! `--git URL`: fetch the followed branch into fort's clone (`state_dir/git/`), decide which
//! commit to apply (fast-forward check, verification hook, a manifest that loads), check it
//! out, and remember what happened for `fort status`. Used by `fort apply --git` (one pass)
//! and `fort watch --git` (every pass).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::args::GitArgs;
use super::CliError;
use crate::commit_trust::AllowedSigners;
use crate::fleet;
use crate::gitops::{self, short, when, Follow, ProblemKind};
use crate::host::git::{self, Mirror, Trust};
use crate::manifest::{HostSelection, Manifest};
use crate::state::{CommitInfo, SqliteStore, StateLock, StateStore};

/// What to follow, from the command line.
#[derive(Debug, Clone)]
pub struct GitSource {
    pub url: String,
    pub branch: String,
    /// The manifest (a file or a directory) inside the repository.
    pub path: PathBuf,
    pub allow_force_push: bool,
    pub trust: Trust,
    /// Which resources are this host's (`--host`).
    pub host: HostSelection,
    /// Where to write this host's report after every pass (`--report-dir`).
    pub report_dir: Option<PathBuf>,
}

impl GitSource {
    pub fn from_args(cli: &super::Cli, a: &GitArgs) -> Result<Option<GitSource>, CliError> {
        let Some(url) = &a.git else {
            return Ok(None);
        };
        let trust = match &a.allowed_signers {
            Some(file) => Trust::Signed(Box::new(AllowedSigners::load(file)?)),
            None => Trust::Any,
        };
        Ok(Some(GitSource {
            url: url.clone(),
            branch: a.branch.clone(),
            path: a.path.clone(),
            allow_force_push: a.allow_force_push,
            trust,
            host: super::session::host_selection(cli)?,
            report_dir: a.report_dir.clone(),
        }))
    }

    fn path_str(&self) -> String {
        self.path.display().to_string()
    }
}

/// A commit checked out with its manifest loaded.
pub struct Target {
    pub commit: CommitInfo,
    pub manifest: Manifest,
    pub checkout: PathBuf,
}

pub enum Prepared {
    /// Apply the branch's newest commit.
    Apply(Target),
    /// The newest commit cannot be applied (or the remote cannot be fetched): `reason` says
    /// why; `fallback` is the converged commit, for healing drift meanwhile.
    Stay {
        reason: String,
        /// First time this reason is seen (log it loudly once).
        new: bool,
        /// Failed fetches in a row (0: the fetch worked).
        fetch_attempts: u32,
        fallback: Option<Target>,
    },
}

fn now() -> i64 {
    crate::state::now_ms() / 1000
}

fn load_follow(store: &SqliteStore) -> Result<Option<Follow>, CliError> {
    Ok(store
        .follow()?
        .and_then(|v| serde_json::from_value::<Follow>(v).ok()))
}

fn save_follow(store: &SqliteStore, f: &Follow) -> Result<(), CliError> {
    store.set_follow(&serde_json::to_value(f).unwrap_or_default())?;
    Ok(())
}

/// The lines of `e`, with paths inside the checkout shown relative to the repository root
/// (`deploy/fort.toml:3:1: …`).
fn manifest_error(e: &crate::manifest::ManifestError, checkout: &Path) -> String {
    let diags = e.diagnostics();
    if diags.is_empty() {
        let chain = crate::resources::error_chain(e);
        let root = format!("{}/", checkout.display());
        return chain.replace(&root, "");
    }
    let canon = checkout.canonicalize().ok();
    diags
        .iter()
        .map(|d| {
            let file = d
                .file
                .strip_prefix(checkout)
                .ok()
                .or_else(|| canon.as_ref().and_then(|c| d.file.strip_prefix(c).ok()))
                .map_or_else(|| d.file.clone(), Path::to_path_buf);
            format!("{}:{}:{}: {}", file.display(), d.line, d.column, d.message)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Check out `commit` and load its manifest (`Err`: the problem and its reason).
fn load_commit(
    mirror: &Mirror,
    src: &GitSource,
    commit: &CommitInfo,
    checkouts: &Path,
) -> Result<Result<Target, (ProblemKind, String)>, CliError> {
    git::checkout(mirror, &commit.id, checkouts)?;
    let git_dir = checkouts.parent().unwrap_or(checkouts);
    let dir = git::point_current(git_dir, &commit.id)?;
    let path = dir.join(&src.path);
    if !path.exists() {
        return Ok(Err((
            ProblemKind::MissingPath,
            format!(
                "commit {} has no {} (the manifest path given with --path); skipped, nothing was changed",
                short(&commit.id),
                src.path_str()
            ),
        )));
    }
    match crate::manifest::load_for(&path, &src.host) {
        Ok(mut m) => {
            // The sandboxes made on this host are desired with every commit (docs/sandboxes.md).
            let sandboxes = git_dir.parent().map(super::session::sandbox_dir);
            if let Some(sd) = sandboxes.filter(|d| crate::manifest::has_sandboxes(d)) {
                match crate::manifest::merge_sandboxes(&path, &src.host, &sd) {
                    Ok(merged) => m = merged,
                    // Without them the pass would destroy the sandboxes: skip the commit.
                    Err(e) => {
                        return Ok(Err((
                            ProblemKind::Invalid,
                            format!(
                                "commit {}: the sandbox files cannot be merged with it: {}; skipped, nothing was changed",
                                short(&commit.id),
                                crate::resources::error_chain(&e)
                            ),
                        )))
                    }
                }
            }
            if let Some(d) = m.state_dir.take() {
                tracing::warn!(
                    "commit {}: [fort] state_dir = {} is ignored with --git (fort's clone and state stay in the state directory given with --state-dir)",
                    short(&commit.id),
                    d.display()
                );
            }
            Ok(Ok(Target {
                commit: commit.clone(),
                manifest: m,
                checkout: dir,
            }))
        }
        Err(e) => Ok(Err((
            ProblemKind::Invalid,
            format!(
                "commit {} does not validate: {}; skipped, nothing was changed",
                short(&commit.id),
                manifest_error(&e, &dir)
            ),
        ))),
    }
}

/// The converged commit's checkout and manifest, for healing drift while the branch's
/// newest commit cannot be applied.
fn fallback(mirror: &Mirror, src: &GitSource, f: &Follow, checkouts: &Path) -> Option<Target> {
    let c = f.converged.as_ref()?;
    match load_commit(mirror, src, c, checkouts) {
        Ok(Ok(t)) => Some(t),
        _ => None,
    }
}

fn prepare_blocking(
    src: &GitSource,
    state_dir: &Path,
    lock_timeout: Duration,
    interrupt: &AtomicBool,
) -> Result<Prepared, CliError> {
    let git_dir = state_dir.join("git");
    std::fs::create_dir_all(&git_dir).map_err(|source| CliError::Io {
        what: "cannot create",
        path: git_dir.clone(),
        source,
    })?;
    // One fetch/checkout at a time per state directory (flock: a killed fort releases it).
    let _lock = StateLock::acquire(&git_dir, lock_timeout, "fort (git fetch)")?;
    let store = SqliteStore::open(state_dir)?;
    let url = git::redact(&src.url);
    let mut follow = Follow::resume(load_follow(&store)?, &url, &src.branch, &src.path_str());
    let checkouts = git_dir.join("checkouts");
    let now = now();
    let fetched = Mirror::open(&git_dir).and_then(|m| {
        let tip = m.fetch(&src.url, &src.branch, interrupt)?;
        Ok((m, tip))
    });
    let (mirror, tip) = match fetched {
        Ok(x) => x,
        Err(e) => {
            let msg = e.to_string();
            follow.fetch_failed(now, msg.clone());
            save_follow(&store, &follow)?;
            let (since, attempts) = follow
                .fetch_failure
                .as_ref()
                .map_or((now, 1), |f| (f.since, f.attempts));
            let fb = Mirror::open(&git_dir)
                .ok()
                .and_then(|m| fallback(&m, src, &follow, &checkouts));
            return Ok(Prepared::Stay {
                reason: format!(
                    "{msg} (failing since {}, {attempts} attempt(s); retrying with backoff; the host keeps its last good state)",
                    when(since)
                ),
                new: attempts == 1,
                fetch_attempts: attempts,
                fallback: fb,
            });
        }
    };
    follow.fetched(now);
    let info = mirror.commit_info(&tip)?;
    let stay = |follow: &mut Follow, kind, reason: String| -> Result<Prepared, CliError> {
        let new = follow
            .problem
            .as_ref()
            .is_none_or(|p| p.kind != kind || p.commit.id != info.id);
        follow.problem(kind, &info, reason.clone(), now);
        save_follow(&store, follow)?;
        let fb = fallback(&mirror, src, follow, &checkouts);
        let keep: Vec<&str> = follow.converged.iter().map(|c| c.id.as_str()).collect();
        git::prune_checkouts(&checkouts, &keep);
        Ok(Prepared::Stay {
            reason,
            new,
            fetch_attempts: 0,
            fallback: fb,
        })
    };
    if let Some(seen) = follow.seen.clone() {
        match mirror.is_ancestor(&seen, &tip)? {
            Some(true) => {}
            Some(false) if !src.allow_force_push => {
                let reason = format!(
                    "branch {} of {url} moved from {} to {}, which does not contain it (history was rewritten, e.g. by a force-push); refused, the host stays at its last good commit; pass --allow-force-push to follow rewritten history",
                    src.branch,
                    short(&seen),
                    short(&tip)
                );
                return stay(&mut follow, ProblemKind::ForcePush, reason);
            }
            Some(false) => tracing::warn!(
                "branch {} of {url} was rewritten ({} → {}): following it (--allow-force-push)",
                src.branch,
                short(&seen),
                short(&tip)
            ),
            None => tracing::warn!(
                "cannot tell whether {} follows {} (not in fort's clone): following it",
                short(&tip),
                short(&seen)
            ),
        }
    }
    follow.seen = Some(tip.clone());
    if let Err(why) = git::verify(&src.trust, &mirror, &info) {
        let reason = format!("commit {} refused: {why}", short(&tip));
        return stay(&mut follow, ProblemKind::Unverified, reason);
    }
    let target = match load_commit(&mirror, src, &info, &checkouts)? {
        Ok(t) => t,
        Err((kind, reason)) => return stay(&mut follow, kind, reason),
    };
    follow.trying(&info);
    save_follow(&store, &follow)?;
    let mut keep: Vec<&str> = vec![tip.as_str()];
    keep.extend(follow.converged.iter().map(|c| c.id.as_str()));
    git::prune_checkouts(&checkouts, &keep);
    Ok(Prepared::Apply(target))
}

/// Fetch and pick the commit to apply (blocking work on a thread: gix's transports block).
pub async fn prepare(
    src: &GitSource,
    state_dir: &Path,
    lock_timeout: Duration,
    interrupt: Arc<AtomicBool>,
) -> Result<Prepared, CliError> {
    let (src, dir) = (src.clone(), state_dir.to_path_buf());
    tokio::task::spawn_blocking(move || prepare_blocking(&src, &dir, lock_timeout, &interrupt))
        .await
        .map_err(|e| CliError::Usage(format!("git task failed: {e}")))?
}

/// How applying a commit ended.
pub enum Outcome {
    Converged,
    Problem(ProblemKind, String),
}

/// Remember how applying `commit` ended.
pub fn record(state_dir: &Path, commit: &CommitInfo, outcome: Outcome) -> Result<(), CliError> {
    let store = SqliteStore::open(state_dir)?;
    let Some(mut follow) = load_follow(&store)? else {
        return Ok(());
    };
    match outcome {
        Outcome::Converged => follow.converged(commit, now()),
        Outcome::Problem(kind, reason) => follow.problem(kind, commit, reason, now()),
    }
    save_follow(&store, &follow)
}

/// `fort status`: the followed branch, if any.
pub fn status(store: &SqliteStore) -> Result<Option<Follow>, CliError> {
    load_follow(store)
}

pub use gitops::{status_json, status_lines};

/// Write this host's report to `--report-dir` (if given): the converged commit, the newest
/// one it could not converge to and why, the resources recorded, and what fails.
pub fn write_report(state_dir: &Path, src: &GitSource) -> Result<(), CliError> {
    let Some(dir) = &src.report_dir else {
        return Ok(());
    };
    let store = SqliteStore::open(state_dir)?;
    let follow = load_follow(&store)?;
    let resources = store.resources()?.len();
    let host = match &src.host {
        HostSelection::Host(h) => h.clone(),
        HostSelection::Every => super::session::hostname()?,
    };
    let commit = |c: &CommitInfo| fleet::Commit {
        id: c.id.clone(),
        subject: c.subject.clone(),
    };
    let (mut trying, mut error, mut problems) = (None, None, Vec::new());
    if let Some(f) = &follow {
        if let Some(p) = &f.problem {
            trying = Some(commit(&p.commit));
            error = Some(p.reason.clone());
        } else if let Some(t) = &f.trying {
            trying = Some(commit(t));
        }
        if let Some(ff) = &f.fetch_failure {
            problems.push(format!(
                "cannot fetch {} since {} ({} attempts): {}",
                f.url,
                when(ff.since),
                ff.attempts,
                ff.error
            ));
        }
    }
    let report = fleet::Report {
        fort_report: fleet::VERSION,
        host,
        updated: u64::try_from(now()).unwrap_or(0),
        converged: follow
            .as_ref()
            .and_then(|f| f.converged.as_ref())
            .map(commit),
        trying,
        error,
        resources,
        problems,
    };
    fleet::write(dir, &report)?;
    Ok(())
}

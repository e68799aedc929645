//! `fort apply` and `fort destroy`: plan (or load a saved plan), confirm, lock, execute, report.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::args::{ApplyArgs, DestroyArgs, RunArgs};
use super::plan::{make_plan, resolve_images};
use super::{exit, session, term, Cli, CliError};
use crate::apply::{self, ExecOptions, Outcome, Report};
use crate::manifest::Manifest;
use crate::plan::{self, render, Op, Plan, PlanOptions, ResolvedImage};
use crate::state::{SqliteStore, StateLock, StateStore};

pub async fn apply(cli: &Cli, args: &ApplyArgs) -> Result<u8, CliError> {
    // Sandboxes whose time is up are not made again: their files go first (docs/sandboxes.md).
    super::sandbox::reap(cli);
    if let Some(src) = super::gitops::GitSource::from_args(cli, &args.git)? {
        return apply_git(cli, args, &src).await;
    }
    if let Some(file) = &args.plan_file {
        return apply_saved(cli, args, file).await;
    }
    let (manifest, images) = resolve_images(session::load_manifest(cli)?).await?;
    let options = PlanOptions {
        targets: args.selection.targets.clone(),
        replace: args.replace.clone(),
        allow_data_loss: args.run.allow_data_loss,
        destroy: false,
    };
    run(cli, &args.run, Some(&manifest), options, None, images).await
}

/// `fort apply --git URL`: one pass at the branch's newest commit (fetched into fort's clone),
/// confirmed and reported like any apply; the commit is recorded with the run.
async fn apply_git(
    cli: &Cli,
    args: &ApplyArgs,
    src: &super::gitops::GitSource,
) -> Result<u8, CliError> {
    use super::gitops::{self, Outcome, Prepared};
    use crate::gitops::ProblemKind;
    if cli.file.is_some() {
        return Err(CliError::Usage(
            "--git reads the manifest from the repository (--path); -f/FORT_MANIFEST cannot be given with it".to_string(),
        ));
    }
    if args.plan_file.is_some() {
        return Err(CliError::Usage(
            "--git cannot run a saved plan: it plans the branch's newest commit".to_string(),
        ));
    }
    let state_dir = session::state_dir(cli, None);
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let target = match gitops::prepare(src, &state_dir, args.run.lock_timeout, cancel).await? {
        Prepared::Apply(t) => t,
        Prepared::Stay { reason, .. } => {
            if let Err(e) = gitops::write_report(&state_dir, src) {
                tracing::warn!(
                    "cannot write the host report: {}",
                    crate::resources::error_chain(&e)
                );
            }
            return Err(CliError::GitSkipped(reason));
        }
    };
    let c = target.commit.clone();
    eprintln!(
        "Applying commit {} \"{}\" ({}) of {} branch {}",
        crate::gitops::short(&c.id),
        c.subject,
        c.author,
        crate::host::git::redact(&src.url),
        src.branch
    );
    let (manifest, images) = resolve_images(target.manifest).await?;
    let options = PlanOptions {
        targets: args.selection.targets.clone(),
        replace: args.replace.clone(),
        allow_data_loss: args.run.allow_data_loss,
        destroy: false,
    };
    let untargeted = options.targets.is_empty();
    let result = run_in(
        cli,
        &args.run,
        Some(&manifest),
        &state_dir,
        options,
        None,
        images,
        Some(&c),
    )
    .await;
    let outcome = match &result {
        Ok(code) if *code == exit::OK && untargeted => Some(Outcome::Converged),
        Ok(code) if *code == exit::OK => None,
        Ok(_) => Some(Outcome::Problem(
            ProblemKind::ApplyFailed,
            format!(
                "applying commit {} did not complete",
                crate::gitops::short(&c.id)
            ),
        )),
        Err(e) => Some(Outcome::Problem(
            ProblemKind::Refused,
            crate::resources::error_chain(e),
        )),
    };
    if let Some(o) = outcome {
        gitops::record(&state_dir, &c, o)?;
    }
    gitops::write_report(&state_dir, src)?;
    result
}

pub async fn destroy(cli: &Cli, args: &DestroyArgs) -> Result<u8, CliError> {
    // The manifest is only read for `[fort] state_dir`: given with -f or as ./fort.toml it must
    // be valid (it may name another state directory); without one, --state-dir or the default.
    let manifest = if cli.file.is_some() || Path::new("fort.toml").is_file() {
        Some(session::load_manifest(cli)?)
    } else {
        None
    };
    let state_dir = session::state_dir(cli, manifest.as_ref());
    let sandboxes = |dir: &Path| -> std::collections::BTreeSet<crate::address::Address> {
        SqliteStore::open_readonly(dir)
            .and_then(|s| s.resources())
            .map(|r| crate::watch::sandbox_owned(&r))
            .unwrap_or_default()
    };
    let before = sandboxes(&state_dir);
    // A sandbox is one thing: destroying its VM destroys its root drive too.
    let mut targets = args.selection.targets.clone();
    for t in &args.selection.targets {
        let root =
            crate::address::Address::new(crate::address::Kind::Drive, format!("{}-root", t.name));
        if t.kind == crate::address::Kind::Vm && before.contains(t) && before.contains(&root) {
            targets.push(root);
        }
    }
    let options = PlanOptions {
        targets,
        replace: vec![],
        allow_data_loss: args.run.allow_data_loss,
        destroy: true,
    };
    let code = run_in(
        cli,
        &args.run,
        manifest.as_ref(),
        &state_dir,
        options,
        None,
        vec![],
        None,
    )
    .await?;
    // A sandbox destroyed here is gone for good: without its file, the next apply does not
    // make it again (docs/sandboxes.md).
    let after = sandboxes(&state_dir);
    let dir = session::sandbox_dir(&state_dir);
    for a in before.difference(&after) {
        if a.kind == crate::address::Kind::Vm {
            if let Err(e) = crate::host::sandboxes::remove(&dir, &a.name) {
                tracing::warn!("cannot remove sandbox {}'s file: {e}", a.name);
            }
        }
    }
    Ok(code)
}

async fn apply_saved(cli: &Cli, args: &ApplyArgs, file: &Path) -> Result<u8, CliError> {
    let text = std::fs::read_to_string(file).map_err(|source| CliError::Io {
        what: "cannot read saved plan",
        path: file.to_path_buf(),
        source,
    })?;
    let saved: Plan = serde_json::from_str(&text).map_err(|source| CliError::PlanFile {
        path: file.to_path_buf(),
        source,
    })?;
    if saved.format_version != plan::FORMAT_VERSION {
        return Err(CliError::Usage(format!(
            "saved plan {} has format version {}, this fort reads version {}",
            file.display(),
            saved.format_version,
            plan::FORMAT_VERSION
        )));
    }
    let manifest = match (&cli.file, &saved.manifest) {
        (None, Some(p)) => Some(crate::manifest::load_for(
            p,
            &session::host_selection(cli)?,
        )?),
        (Some(_), _) => Some(session::load_manifest(cli)?),
        (None, None) => None,
    };
    // Tags are resolved again: one that moved since the plan makes it stale.
    let (manifest, images) = match manifest {
        Some(m) => {
            let (m, images) = resolve_images(m).await?;
            (Some(m), images)
        }
        None => (None, vec![]),
    };
    for then in &saved.images {
        if let Some(now) = images
            .iter()
            .find(|i| i.address == then.address && i.digest != then.digest)
        {
            return Err(CliError::StalePlan {
                path: file.to_path_buf(),
                why: format!(
                    "the tag {} of {} moved ({} → {})",
                    then.image, then.address, then.digest, now.digest
                ),
            });
        }
    }
    let digest = manifest.as_ref().map_or_else(String::new, Manifest::digest);
    if digest != saved.manifest_digest {
        return Err(CliError::StalePlan {
            path: file.to_path_buf(),
            why: "the manifest changed".to_string(),
        });
    }
    let state_dir = saved.state_dir.clone();
    let options = saved.options.clone();
    run_in(
        cli,
        &args.run,
        manifest.as_ref(),
        &state_dir,
        options,
        Some((file, saved)),
        images,
        None,
    )
    .await
}

async fn run(
    cli: &Cli,
    run_args: &RunArgs,
    manifest: Option<&Manifest>,
    options: PlanOptions,
    saved: Option<(&Path, Plan)>,
    images: Vec<ResolvedImage>,
) -> Result<u8, CliError> {
    let state_dir = session::state_dir(cli, manifest);
    run_in(
        cli, run_args, manifest, &state_dir, options, saved, images, None,
    )
    .await
}

/// `images`: the tags resolved (and pinned into `manifest`) for this run; `commit`: the git
/// commit the manifest comes from (recorded with the run).
#[allow(clippy::too_many_arguments)]
async fn run_in(
    cli: &Cli,
    run_args: &RunArgs,
    manifest: Option<&Manifest>,
    state_dir: &Path,
    options: PlanOptions,
    saved: Option<(&Path, Plan)>,
    images: Vec<ResolvedImage>,
    commit: Option<&crate::state::CommitInfo>,
) -> Result<u8, CliError> {
    let command = command_line();
    // Lock before reading state: what we plan against must not change until we are done.
    let lock = lock(state_dir, run_args, &command).await?;
    let store = SqliteStore::open(state_dir)?;
    let recorded = store.resources()?;
    let digest = store.digest()?;
    let ctx = session::ctx(
        state_dir,
        store,
        term::stderr_is_tty() && !cli.json,
        manifest,
    );

    // A saved plan was reviewed when it was made (as in Terraform): no second question.
    let from_file = saved.is_some();
    let mut plan = match saved {
        Some((file, saved)) => {
            if saved.state_digest != digest {
                return Err(CliError::StalePlan {
                    path: file.to_path_buf(),
                    why: "the recorded state changed".to_string(),
                });
            }
            saved
        }
        None => make_plan(&ctx, manifest, &recorded, digest, options, images).await?,
    };
    // Losing a protected drive's data needs --allow-data-loss, given when the plan was made or
    // now (a saved plan made without it is then run with it, and recorded so). Checked before
    // anything is shown, asked or changed.
    plan.options.allow_data_loss |= run_args.allow_data_loss;
    plan::refuse_protected(&plan.changes, plan.options.allow_data_loss)?;
    let style = term::stdout_style();
    if plan.is_empty() {
        if cli.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&Report::default()).unwrap_or_default()
            );
        } else {
            print!("{}", render::render(&plan, style));
        }
        return Ok(exit::OK);
    }
    if !cli.json {
        print!("{}", render::render(&plan, style));
        println!();
    }
    if !run_args.yes && !from_file {
        if !term::stdin_is_tty() {
            return Err(CliError::Usage(
                "refusing to change the host without confirmation: stdin is not a terminal; re-run with --yes to apply this plan".to_string(),
            ));
        }
        let question = if plan.options.destroy {
            "Do you really want to destroy these resources?"
        } else {
            "Do you want to perform these actions?"
        };
        if !term::confirm(question).map_err(|source| CliError::Io {
            what: "cannot read the answer from",
            path: "stdin".into(),
            source,
        })? {
            println!("Cancelled: nothing was changed.");
            return Ok(exit::ERROR);
        }
    }

    let opts = ExecOptions {
        parallelism: run_args
            .parallelism
            .unwrap_or_else(|| ExecOptions::default().parallelism),
        ..ExecOptions::default()
    };
    let cancel = opts.cancel.clone();
    let watcher = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("Interrupted: finishing the running actions and recording them; no new ones will start (Ctrl-C again to abort now).");
            cancel.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
        }
    });

    let plan_json = serde_json::to_value(&plan).unwrap_or_default();
    let run_id = ctx.with_store(|s| s.begin_run(&command, &plan_json))?;
    if let Some(c) = commit {
        ctx.with_store(|s| s.set_run_commit(run_id, c))?;
    }
    let progress = Arc::new(term::Lines {
        style,
        to_stderr: cli.json,
    });
    let empty = Default::default();
    let desired = manifest.map_or(&empty, |m| &m.resources);
    let report = apply::execute(
        &plan,
        desired,
        &recorded,
        ctx.clone(),
        run_id,
        &opts,
        progress,
    )
    .await?;
    watcher.abort();
    finish_run(&ctx, run_id, &report, plan.options.targets.is_empty())?;
    drop(lock);

    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!();
        println!("{}", summary(&report, plan.options.destroy, style));
    }
    Ok(if report.interrupted {
        exit::INTERRUPTED
    } else if report.succeeded() {
        exit::OK
    } else {
        exit::ERROR
    })
}

/// Record how a run ended and, after a complete untargeted one, remove images nothing uses
/// (only then is "not recorded" the same as "not wanted").
pub(super) fn finish_run(
    ctx: &crate::resources::Ctx,
    run_id: crate::state::RunId,
    report: &Report,
    untargeted: bool,
) -> Result<(), CliError> {
    let result = if report.interrupted {
        "interrupted"
    } else if report.succeeded() {
        "ok"
    } else {
        "failed"
    };
    ctx.with_store(|s| s.finish_run(run_id, result))?;
    if report.succeeded() && untargeted {
        for p in crate::resources::template::collect_garbage(ctx)? {
            tracing::info!("removed unused image {}", p.display());
        }
        for p in crate::resources::collect_cache_garbage(ctx)? {
            tracing::info!("removed unused cache entry {}", p.display());
        }
    }
    Ok(())
}

async fn lock(state_dir: &Path, run_args: &RunArgs, command: &str) -> Result<StateLock, CliError> {
    let dir = state_dir.to_path_buf();
    let timeout = run_args.lock_timeout;
    let command = command.to_string();
    std::fs::create_dir_all(&dir).map_err(|source| CliError::Io {
        what: "cannot create state directory",
        path: dir.clone(),
        source,
    })?;
    tokio::task::spawn_blocking(move || StateLock::acquire(&dir, timeout, &command))
        .await
        .map_err(|e| CliError::Usage(format!("lock task failed: {e}")))?
        .map_err(CliError::from)
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    let mut s = "fort".to_string();
    for a in args.iter().skip(1) {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn summary(report: &Report, destroy: bool, style: crate::plan::render::Style) -> String {
    let done = |op: Op| report.count(|a| a.op == op && matches!(a.outcome, Outcome::Done { .. }));
    let failed = report.count(|a| matches!(a.outcome, Outcome::Failed { .. }));
    let skipped = report.count(|a| matches!(a.outcome, Outcome::Skipped { .. }));
    let not_started = report.count(|a| matches!(a.outcome, Outcome::NotStarted));
    let what = if destroy { "Destroy" } else { "Apply" };
    let how = if report.interrupted {
        "interrupted"
    } else if report.succeeded() {
        "complete"
    } else {
        "failed"
    };
    let head = format!("{what} {how}");
    let mut s = format!(
        "{head}: {} created, {} updated, {} restarted, {} replaced, {} destroyed",
        done(Op::Create),
        done(Op::Update),
        done(Op::Restart),
        done(Op::Replace),
        done(Op::Destroy)
    );
    if failed + skipped + not_started > 0 {
        s.push_str(&format!(", {failed} failed, {skipped} skipped"));
        if not_started > 0 {
            s.push_str(&format!(", {not_started} not started"));
        }
    }
    s.push('.');
    if report.succeeded() {
        style.green(&s)
    } else {
        style.red(&s)
    }
}

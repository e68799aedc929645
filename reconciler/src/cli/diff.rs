//! `fort diff REV_A..REV_B`: read both sides' manifests (from git, or the work tree), compare
//! each host's views with the pure `diff` module, print text, JSON or Markdown.

use std::path::{Path, PathBuf};

use super::args::{DiffArgs, DiffFormat};
use super::{exit, term, Cli, CliError};
use crate::diff::{self, Diff, End, Side};
use crate::gitread::{Repo, Revision};
use crate::manifest::{self, HostSelection, Manifest, Source};

/// A side, read: a revision's files or the work tree's.
struct Loaded {
    end: End,
    rev: Option<Revision>,
    /// The manifest path inside the repository (the default can differ per side).
    path: PathBuf,
    sources: Vec<Source>,
}

pub fn diff(cli: &Cli, args: &DiffArgs) -> Result<u8, CliError> {
    let range = diff::parse_range(&args.range).map_err(CliError::Usage)?;
    let (repo, path) = match &args.repo {
        Some(dir) => (
            Repo::open(dir)?,
            match &cli.file {
                Some(f) => Wanted::Exactly(f.clone()),
                None => Wanted::DefaultIn(PathBuf::new()),
            },
        ),
        None => {
            let start = cli.file.clone().unwrap_or_else(|| PathBuf::from("."));
            let repo = Repo::discover(&start)?;
            let rel = repo.relative(&start)?;
            // Without -f: the current directory's manifest (its fort.toml, else its *.toml).
            let path = match &cli.file {
                Some(_) => Wanted::Exactly(rel),
                None => Wanted::DefaultIn(rel),
            };
            (repo, path)
        }
    };
    let mut from_rev = side_rev(&repo, &range.from)?;
    let to_rev = side_rev(&repo, &range.to)?;
    if range.merge_base {
        if let (Some(a), Some(b)) = (&from_rev, &to_rev) {
            from_rev = Some(repo.merge_base(a, b)?);
        }
    }
    let from = read_side(&repo, from_rev, &path)?;
    let to = read_side(&repo, to_rev, &path)?;
    let names = [
        manifest::host_names(&from.sources),
        manifest::host_names(&to.sources),
    ];
    let selections = diff::selections(cli.host.as_deref(), &[&names[0], &names[1]]);
    let mut hosts = Vec::new();
    for sel in &selections {
        let before = validate(&repo, &from, sel)?;
        let after = validate(&repo, &to, sel)?;
        hosts.push(diff::host_diff(
            sel.host().map(str::to_string),
            &before,
            &after,
        )?);
    }
    let d = Diff {
        format_version: diff::FORMAT_VERSION,
        fort_version: crate::VERSION.to_string(),
        from: from.end,
        to: to.end,
        path: to.path,
        hosts,
    };
    let format = if cli.json {
        DiffFormat::Json
    } else {
        args.format
    };
    match format {
        DiffFormat::Text => print!("{}", diff::render::text(&d, term::stdout_style())),
        DiffFormat::Json => println!("{}", diff::render::json(&d)),
        DiffFormat::Markdown => print!("{}", diff::render::markdown(&d)),
    }
    Ok(if args.detailed_exitcode && !d.is_empty() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

fn side_rev(repo: &Repo, side: &Side) -> Result<Option<Revision>, CliError> {
    match side {
        Side::Rev(r) => Ok(Some(repo.resolve(r)?)),
        Side::WorkTree => Ok(None),
    }
}

/// Which manifest a side reads.
enum Wanted {
    /// `-f PATH`: that file, or every `*.toml` of that directory.
    Exactly(PathBuf),
    /// No `-f`: the directory's `fort.toml` if the side has one, else its `*.toml`.
    DefaultIn(PathBuf),
}

/// The side's manifest files.
fn read_side(repo: &Repo, rev: Option<Revision>, wanted: &Wanted) -> Result<Loaded, CliError> {
    match rev {
        Some(rev) => {
            let path = match wanted {
                Wanted::Exactly(p) => p.clone(),
                Wanted::DefaultIn(d) => default_in(d, |f| repo.read(&rev, f).is_ok()),
            };
            let sources = repo.sources(&rev, &path)?;
            Ok(Loaded {
                end: End {
                    rev: rev.name.clone(),
                    commit: Some(rev.commit.clone()),
                },
                rev: Some(rev),
                path,
                sources,
            })
        }
        None => {
            if repo.is_bare() {
                return Err(CliError::Usage(format!(
                    "{} is a bare repository: it has no work tree to compare with; give REV_A..REV_B",
                    repo.root().display()
                )));
            }
            let path = match wanted {
                Wanted::Exactly(p) => p.clone(),
                Wanted::DefaultIn(d) => default_in(d, |f| repo.root().join(f).is_file()),
            };
            let sources = manifest::sources_of(&manifest::read_files(&repo.root().join(&path))?);
            Ok(Loaded {
                end: End {
                    rev: "working tree".to_string(),
                    commit: None,
                },
                rev: None,
                path,
                sources,
            })
        }
    }
}

/// `DIR/fort.toml` when `exists` says it is there, else `DIR` (all its `*.toml`).
fn default_in(dir: &Path, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let f = dir.join("fort.toml");
    if exists(&f) {
        f
    } else {
        dir.to_path_buf()
    }
}

fn validate(repo: &Repo, side: &Loaded, sel: &HostSelection) -> Result<Manifest, CliError> {
    match &side.rev {
        Some(rev) => Ok(repo.validate(rev, &side.sources, &side.path, sel)?),
        None => Ok(manifest::load_sources(
            &side.sources,
            &repo.root().join(&side.path),
            sel,
            &manifest::Fs,
        )?),
    }
}

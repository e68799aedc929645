//! The manifest: parse `fort.toml` files (spans kept), validate, and resolve to [`Manifest`].
//!
//! Nothing here changes the host; it only reads the manifest files (and overlay sources, whose
//! hashes are part of a template's spec). Every problem is a [`Diagnostic`] naming the file,
//! line and column, and all of them are reported at once.

mod hosts;
pub mod image_ref;
pub mod model;
pub mod policy;
pub mod ports;
mod raw;
mod raw_sandbox;
pub mod sandbox_limits;
mod schema;
pub mod units;
mod validate;
mod validate_asset;
mod validate_fort;
mod validate_mounts;
mod validate_network;
mod validate_ports;
mod validate_sandbox;
mod validate_vm;

use std::fmt;
use std::path::{Path, PathBuf};

pub use hosts::HostSelection;
pub use model::*;
pub use schema::{json_schema, json_schema_string};

/// One problem, at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no *.toml files in directory {}", path.display())]
    Empty { path: PathBuf },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

impl ManifestError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ManifestError::Invalid(d) => d,
            _ => &[],
        }
    }
}

/// A file's text and where relative paths in it start.
#[derive(Debug, Clone)]
pub struct Source {
    /// As shown in messages (a path, or `REV:path` for a file read from a git revision).
    pub path: PathBuf,
    /// The directory relative paths are resolved against (absolute).
    pub dir: PathBuf,
    pub text: String,
    /// A sandbox file fort wrote (`state_dir/sandboxes/*.toml`): the only place an
    /// `[instance]` table may be.
    pub sandbox: bool,
}

/// Where the files a manifest points at (overlay `source`s) are read from: the filesystem, or
/// a git revision's tree.
pub trait ReadFile {
    /// The bytes of the regular file at `path` (absolute, as resolved against a [`Source::dir`]).
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// The filesystem.
pub struct Fs;

impl ReadFile for Fs {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        // Only a regular file (symlinks followed) is read: a device such as /dev/zero would be
        // read until memory ran out, a FIFO would block.
        let m = std::fs::metadata(path)?;
        if m.is_file() {
            std::fs::read(path)
        } else {
            Err(std::io::Error::other("not a regular file"))
        }
    }
}

/// Load a manifest: a file, or every `*.toml` in a directory (sorted by name, merged). Every
/// resource is kept, whatever its `hosts`; [`load_for`] selects one host's.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    load_for(path, &HostSelection::Every)
}

/// [`load`], keeping what `selection` selects.
pub fn load_for(path: &Path, selection: &HostSelection) -> Result<Manifest, ManifestError> {
    let files = read_files(path)?;
    load_sources(&sources_of(&files), path, selection, &Fs)
}

/// The `(path, text)` of a manifest's files: `path` itself, or the `*.toml` in it, by name.
pub fn read_files(path: &Path) -> Result<Vec<(PathBuf, String)>, ManifestError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| ManifestError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let meta = std::fs::metadata(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    if meta.is_dir() {
        let rd = std::fs::read_dir(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut names: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(ManifestError::Empty {
                path: path.to_path_buf(),
            });
        }
        for n in names {
            let text = read(&n)?;
            files.push((n, text));
        }
    } else {
        files.push((path.to_path_buf(), read(path)?));
    }
    Ok(files)
}

/// Validate manifest texts: `(file name, text)` pairs, merged in order. Relative paths inside
/// are resolved against each file's directory.
pub fn load_files(files: &[(PathBuf, String)], path: &Path) -> Result<Manifest, ManifestError> {
    load_sources(&sources_of(files), path, &HostSelection::Every, &Fs)
}

/// `(path, text)` pairs as sources, relative paths in each resolved against its directory.
pub fn sources_of(files: &[(PathBuf, String)]) -> Vec<Source> {
    files
        .iter()
        .map(|(p, text)| {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            Source {
                path: p.clone(),
                dir: abs.parent().map(Path::to_path_buf).unwrap_or_default(),
                text: text.clone(),
                sandbox: false,
            }
        })
        .collect()
}

/// The loader every other entry point ends in: sources from anywhere (files on disk, blobs of
/// a git revision), the files they point at read through `files`.
pub fn load_sources(
    sources: &[Source],
    path: &Path,
    selection: &HostSelection,
    files: &dyn ReadFile,
) -> Result<Manifest, ManifestError> {
    validate::resolve(sources, path, selection, files).map_err(ManifestError::Invalid)
}

/// Every host a `hosts` list in these files names, without validating anything else (a file
/// that does not parse names none: loading it says why).
pub fn host_names(sources: &[Source]) -> std::collections::BTreeSet<String> {
    // Most manifests select no hosts: skip parsing them twice.
    if !sources.iter().any(|s| s.text.contains("hosts")) {
        return Default::default();
    }
    validate::host_names(sources)
}

/// The sandbox files in `dir` (`state_dir/sandboxes/*.toml`, by name) as sources; a file
/// that cannot be read is skipped (its VM is then held, see [`merge_sandboxes`]).
fn sandbox_sources(dir: &Path) -> (Vec<Source>, Vec<(PathBuf, Diagnostic)>) {
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (out, unreadable);
    };
    let mut names: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    for p in names {
        match std::fs::read_to_string(&p) {
            Ok(text) => out.push(Source {
                dir: dir.to_path_buf(),
                path: p,
                text,
                sandbox: true,
            }),
            Err(e) => unreadable.push((
                p.clone(),
                Diagnostic {
                    file: p,
                    line: 1,
                    column: 1,
                    message: format!("cannot read this sandbox file: {e}"),
                },
            )),
        }
    }
    (out, unreadable)
}

/// Whether `dir` holds any sandbox file.
pub fn has_sandboxes(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "toml"))
    })
}

/// The manifest at `path` with the sandbox files in `dir` merged in. A sandbox file that does
/// not validate (with the manifest and the other files) does not stop the rest: its VM and
/// root drive are `held` (left as they are) and its problems are in `sandbox_problems`. A
/// manifest that does not validate by itself is an error, as always.
pub fn merge_sandboxes(
    path: &Path,
    selection: &HostSelection,
    dir: &Path,
) -> Result<Manifest, ManifestError> {
    let base = sources_of(&read_files(path)?);
    let (extra, unreadable) = sandbox_sources(dir);
    let mut all = base.clone();
    all.extend(extra.iter().cloned());
    let mut problems = Vec::new();
    let mut held = std::collections::BTreeSet::new();
    let mut hold = |p: &Path| {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        held.insert(crate::address::Address::new(
            crate::address::Kind::Vm,
            &stem,
        ));
        held.insert(crate::address::Address::new(
            crate::address::Kind::Drive,
            format!("{stem}-root"),
        ));
    };
    for (p, d) in unreadable {
        hold(&p);
        problems.push(d);
    }
    let mut m = match load_sources(&all, path, selection, &Fs) {
        Ok(m) => m,
        Err(_) => {
            // The manifest's own problems win; then each file is tried on top of the good ones.
            load_sources(&base, path, selection, &Fs)?;
            let mut good = base;
            for s in extra {
                let mut trial = good.clone();
                trial.push(s.clone());
                match load_sources(&trial, path, selection, &Fs) {
                    Ok(_) => good.push(s),
                    Err(e) => {
                        hold(&s.path);
                        problems.extend(e.diagnostics().iter().cloned());
                    }
                }
            }
            load_sources(&good, path, selection, &Fs)?
        }
    };
    m.held = held;
    m.sandbox_problems = problems;
    Ok(m)
}

/// The manifest with the sandbox files in `dir` and one more, `new` (a sandbox file about to
/// be written): an error names only `new`'s problems (or the manifest's); sandbox files that
/// do not validate by themselves are held as in [`merge_sandboxes`].
pub fn merge_with_new_sandbox(
    path: &Path,
    selection: &HostSelection,
    dir: &Path,
    new: Source,
) -> Result<Manifest, ManifestError> {
    let current = merge_sandboxes(path, selection, dir)?;
    let mut sources = sources_of(&read_files(path)?);
    let (extra, _) = sandbox_sources(dir);
    let is_held = |p: &Path| {
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
        stem.is_some_and(|s| {
            current
                .held
                .contains(&crate::address::Address::new(crate::address::Kind::Vm, &s))
        })
    };
    sources.extend(extra.into_iter().filter(|s| !is_held(&s.path)));
    sources.push(new);
    let mut m = load_sources(&sources, path, selection, &Fs)?;
    m.held = current.held;
    m.sandbox_problems = current.sandbox_problems;
    Ok(m)
}

/// The `[instance]` tables of the sandbox files in `dir`, read without validating the rest
/// (what reaping needs, also when the manifest comes from git or a file's VM is broken).
/// Files whose `[instance]` does not parse are skipped.
pub fn sandbox_instances(dir: &Path) -> Vec<Instance> {
    #[derive(serde::Deserialize)]
    struct File {
        instance: Option<Inst>,
    }
    #[derive(serde::Deserialize)]
    struct Inst {
        sandbox: String,
        created: String,
        expires: String,
        idle_timeout: Option<String>,
    }
    let unix = |s: &str| {
        humantime::parse_rfc3339(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    let (sources, _) = sandbox_sources(dir);
    sources
        .into_iter()
        .filter_map(|s| {
            let i = toml::from_str::<File>(&s.text).ok()?.instance?;
            let idle_timeout = match &i.idle_timeout {
                Some(t) => Some(sandbox_limits::parse_secs(t).ok()?),
                None => None,
            };
            Some(Instance {
                vm: s.path.file_stem()?.to_string_lossy().into_owned(),
                sandbox: i.sandbox,
                created: unix(&i.created)?,
                expires: unix(&i.expires)?,
                idle_timeout,
                file: s.path,
            })
        })
        .collect()
}

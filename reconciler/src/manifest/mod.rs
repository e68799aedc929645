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
mod schema;
pub mod units;
mod validate;
mod validate_asset;
mod validate_fort;
mod validate_mounts;
mod validate_network;
mod validate_ports;
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

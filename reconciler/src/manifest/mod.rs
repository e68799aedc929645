//! The manifest: parse `fort.toml` files (spans kept), validate, and resolve to [`Manifest`].
//!
//! Nothing here changes the host; it only reads the manifest files (and overlay sources, whose
//! hashes are part of a template's spec). Every problem is a [`Diagnostic`] naming the file,
//! line and column, and all of them are reported at once.

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
pub(crate) struct Source {
    /// As shown in messages.
    pub path: PathBuf,
    /// The directory relative paths are resolved against (absolute).
    pub dir: PathBuf,
    pub text: String,
}

/// Load a manifest: a file, or every `*.toml` in a directory (sorted by name, merged).
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
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
    load_files(&files, path)
}

/// Validate manifest texts: `(file name, text)` pairs, merged in order. Relative paths inside
/// are resolved against each file's directory.
pub fn load_files(files: &[(PathBuf, String)], path: &Path) -> Result<Manifest, ManifestError> {
    let sources: Vec<Source> = files
        .iter()
        .map(|(p, text)| {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            Source {
                path: p.clone(),
                dir: abs.parent().map(Path::to_path_buf).unwrap_or_default(),
                text: text.clone(),
            }
        })
        .collect();
    validate::resolve(&sources, path).map_err(ManifestError::Invalid)
}

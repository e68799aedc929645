//! Reading manifests out of a local git repository (read-only, no network): open or discover
//! the repository, resolve a revision (`main`, `HEAD~2`, a sha, a tag) to its commit, and load
//! the manifest under a path at that commit straight from the object database — no checkout,
//! so the work tree (if any) is never looked at or changed.
//!
//! Fetching and cloning (`fort watch --git`) are someone else's: this only reads objects.

use std::path::{Component, Path, PathBuf};

use crate::manifest::{self, HostSelection, Manifest, ManifestError, ReadFile, Source};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{} is not in a git repository", path.display())]
    NotARepository {
        path: PathBuf,
        #[source]
        source: Box<gix::Error>,
    },
    #[error("revision `{rev}` not found in {}", repo.display())]
    RevisionNotFound { rev: String, repo: PathBuf },
    #[error("`{a}` and `{b}` have no common ancestor")]
    NoMergeBase { a: String, b: String },
    #[error("revision `{rev}` is not a commit: {why}")]
    NotACommit { rev: String, why: String },
    #[error("{} does not exist at revision `{rev}` ({commit})", path.display())]
    PathMissing {
        rev: String,
        commit: String,
        path: PathBuf,
    },
    #[error("no *.toml files in {} at revision `{rev}` ({commit})", path.display())]
    Empty {
        rev: String,
        commit: String,
        path: PathBuf,
    },
    #[error("{} is outside the repository {}", path.display(), repo.display())]
    Outside { path: PathBuf, repo: PathBuf },
    #[error("cannot read {what} of revision `{rev}`: {why}")]
    Read {
        rev: String,
        what: String,
        why: String,
    },
    #[error("the manifest at revision `{rev}` ({commit}) is invalid:\n{source}")]
    Invalid {
        rev: String,
        commit: String,
        #[source]
        source: ManifestError,
    },
}

impl GitError {
    /// Validation problems, each at `REV:path:line:column`.
    pub fn diagnostics(&self) -> &[manifest::Diagnostic] {
        match self {
            GitError::Invalid { source, .. } => source.diagnostics(),
            _ => &[],
        }
    }
}

/// A local repository, bare or with a work tree.
pub struct Repo {
    repo: gix::Repository,
    /// The work tree, or the git directory of a bare repository: paths in the repository are
    /// relative to it, and manifests read from a revision resolve relative paths against it.
    root: PathBuf,
}

/// A revision resolved to its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// As the user spelled it (`main`, `HEAD~2`): names files in messages (`main:fort.toml`).
    pub name: String,
    /// The full commit id (hex).
    pub commit: String,
    tree: gix::ObjectId,
}

impl Revision {
    /// The first 7 hex digits of the commit id.
    pub fn short(&self) -> &str {
        &self.commit[..self.commit.len().min(7)]
    }
}

impl Repo {
    /// The repository containing `start` (a directory or file, existing or not: the nearest
    /// existing ancestor is searched from), bare or not.
    pub fn discover(start: &Path) -> Result<Repo, GitError> {
        let abs = std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf());
        let mut dir = abs.as_path();
        while !dir.is_dir() {
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
        let repo = gix::discover(dir).map_err(|e| GitError::NotARepository {
            path: abs.clone(),
            source: Box::new(e),
        })?;
        Ok(Self::from_gix(repo))
    }

    /// The repository at `dir` exactly (its work tree or git directory).
    pub fn open(dir: &Path) -> Result<Repo, GitError> {
        let repo = gix::open(dir).map_err(|e| GitError::NotARepository {
            path: dir.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok(Self::from_gix(repo))
    }

    fn from_gix(repo: gix::Repository) -> Repo {
        let root = repo
            .workdir()
            .unwrap_or_else(|| repo.git_dir())
            .to_path_buf();
        let root = std::path::absolute(&root).unwrap_or(root);
        Repo { repo, root }
    }

    /// The work tree (or git directory of a bare repository).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_bare(&self) -> bool {
        self.repo.workdir().is_none()
    }

    /// `path` (absolute, or relative to the current directory) as a path inside the repository.
    pub fn relative(&self, path: &Path) -> Result<PathBuf, GitError> {
        let abs = normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        // The work tree may be reached through a symlink (/tmp → /private/tmp): compare both.
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        for r in [&self.root, &root] {
            if let Ok(rel) = abs.strip_prefix(r) {
                return Ok(rel.to_path_buf());
            }
        }
        Err(GitError::Outside {
            path: path.to_path_buf(),
            repo: self.root.clone(),
        })
    }

    /// The commit `rev` names (following tags).
    pub fn resolve(&self, rev: &str) -> Result<Revision, GitError> {
        let not_found = || GitError::RevisionNotFound {
            rev: rev.to_string(),
            repo: self.root.clone(),
        };
        let id = self.repo.rev_parse_single(rev).map_err(|_| not_found())?;
        let object = id.object().map_err(|_| not_found())?;
        let commit = object.peel_to_commit().map_err(|e| GitError::NotACommit {
            rev: rev.to_string(),
            why: e.to_string(),
        })?;
        let tree = commit.tree_id().map_err(|e| GitError::Read {
            rev: rev.to_string(),
            what: "the commit".into(),
            why: e.to_string(),
        })?;
        Ok(Revision {
            name: rev.to_string(),
            commit: commit.id.to_string(),
            tree: tree.detach(),
        })
    }

    /// The best common ancestor of `a` and `b` (what `git merge-base` prints), named by its
    /// short id.
    pub fn merge_base(&self, a: &Revision, b: &Revision) -> Result<Revision, GitError> {
        let id = |r: &Revision| {
            gix::ObjectId::from_hex(r.commit.as_bytes()).map_err(|e| GitError::Read {
                rev: r.name.clone(),
                what: "its commit id".into(),
                why: e.to_string(),
            })
        };
        let base = self
            .repo
            .merge_base(id(a)?, id(b)?)
            .map_err(|e| GitError::Read {
                rev: format!("{}...{}", a.name, b.name),
                what: "the merge base".into(),
                why: e.to_string(),
            })?
            .ok_or_else(|| GitError::NoMergeBase {
                a: a.name.clone(),
                b: b.name.clone(),
            })?;
        let mut rev = self.resolve(&base.to_string())?;
        rev.name = rev.short().to_string();
        Ok(rev)
    }

    /// The manifest files at `path` (inside the repository) at `rev`: the file, or the `*.toml`
    /// directly in the directory, by name — as `fort validate -f PATH` reads them from disk.
    /// Each is named `REV:path` in messages.
    pub fn sources(&self, rev: &Revision, path: &Path) -> Result<Vec<Source>, GitError> {
        let path = normalize(path);
        let read_err = |what: String, e: &dyn std::fmt::Display| GitError::Read {
            rev: rev.name.clone(),
            what,
            why: e.to_string(),
        };
        let missing = || GitError::PathMissing {
            rev: rev.name.clone(),
            commit: rev.short().to_string(),
            path: path.clone(),
        };
        let root_tree = self
            .repo
            .find_tree(rev.tree)
            .map_err(|e| read_err("its tree".into(), &e))?;
        let (is_dir, oid) = if path.as_os_str().is_empty() {
            (true, rev.tree)
        } else {
            let entry = root_tree
                .lookup_entry_by_path(&path)
                .map_err(|e| read_err(path.display().to_string(), &e))?
                .ok_or_else(missing)?;
            let mode = entry.mode();
            if !mode.is_tree() && !mode.is_blob() {
                return Err(missing());
            }
            (mode.is_tree(), entry.object_id())
        };
        let mut files: Vec<PathBuf> = Vec::new();
        let mut blobs = Vec::new();
        if is_dir {
            let tree = self
                .repo
                .find_tree(oid)
                .map_err(|e| read_err(path.display().to_string(), &e))?;
            for e in tree.iter() {
                let e = e.map_err(|e| read_err(path.display().to_string(), &e))?;
                let name = e.inner.filename.to_string();
                if e.inner.mode.is_blob() && name.ends_with(".toml") {
                    files.push(path.join(&name));
                    blobs.push(e.inner.oid.to_owned());
                }
            }
            // Tree order is byte order, as `load` sorts a directory's names.
            if files.is_empty() {
                return Err(GitError::Empty {
                    rev: rev.name.clone(),
                    commit: rev.short().to_string(),
                    path,
                });
            }
        } else {
            files.push(path.clone());
            blobs.push(oid);
        }
        files
            .into_iter()
            .zip(blobs)
            .map(|(f, oid)| {
                let blob = self
                    .repo
                    .find_blob(oid)
                    .map_err(|e| read_err(f.display().to_string(), &e))?;
                let text = String::from_utf8(blob.data.clone())
                    .map_err(|e| read_err(f.display().to_string(), &e))?;
                let dir = self.root.join(f.parent().unwrap_or(Path::new("")));
                Ok(Source {
                    path: PathBuf::from(format!("{}:{}", rev.name, f.display())),
                    dir,
                    text,
                    sandbox: false,
                })
            })
            .collect()
    }

    /// Load and validate the manifest at `path` at `rev` for `selection`; overlay `source`
    /// files are read from the same revision.
    pub fn load(
        &self,
        rev: &Revision,
        path: &Path,
        selection: &HostSelection,
    ) -> Result<Manifest, GitError> {
        let sources = self.sources(rev, path)?;
        self.validate(rev, &sources, path, selection)
    }

    /// Validate `sources` read by [`Repo::sources`] from `rev` (once for several hosts' views).
    pub fn validate(
        &self,
        rev: &Revision,
        sources: &[Source],
        path: &Path,
        selection: &HostSelection,
    ) -> Result<Manifest, GitError> {
        let files = AtRevision { repo: self, rev };
        manifest::load_sources(sources, &self.root.join(path), selection, &files).map_err(
            |source| GitError::Invalid {
                rev: rev.name.clone(),
                commit: rev.short().to_string(),
                source,
            },
        )
    }

    /// The bytes of the file at `path` (inside the repository) at `rev`.
    pub fn read(&self, rev: &Revision, path: &Path) -> std::io::Result<Vec<u8>> {
        let not_found = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{why} at revision `{}`", rev.name),
            )
        };
        let tree = self
            .repo
            .find_tree(rev.tree)
            .map_err(std::io::Error::other)?;
        let entry = tree
            .lookup_entry_by_path(normalize(path))
            .map_err(std::io::Error::other)?
            .ok_or_else(|| not_found("no such file"))?;
        if !entry.mode().is_blob() {
            return Err(not_found("not a regular file"));
        }
        let blob = self
            .repo
            .find_blob(entry.object_id())
            .map_err(std::io::Error::other)?;
        Ok(blob.data.clone())
    }
}

/// Files a manifest points at, read from the revision it was read from.
struct AtRevision<'a> {
    repo: &'a Repo,
    rev: &'a Revision,
}

impl ReadFile for AtRevision<'_> {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let path = normalize(path);
        let rel = path.strip_prefix(&self.repo.root).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "outside the repository, so not in the revision",
            )
        })?;
        self.repo.read(self.rev, rel)
    }
}

/// `a/./b/../c` → `a/c`, without touching the filesystem (a revision's paths are not on disk).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;
    use std::path::Path;

    #[test]
    fn paths_are_normalized_lexically() {
        for (p, want) in [
            ("a/./b/../c", "a/c"),
            (".", ""),
            ("/r/m/../files/motd", "/r/files/motd"),
            ("hosts/h1/", "hosts/h1"),
        ] {
            assert_eq!(normalize(Path::new(p)), Path::new(want), "{p}");
        }
    }
}

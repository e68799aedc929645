//! A commit's tree as a directory, `state_dir/git/checkouts/<commit>`: written into a temp
//! directory, fsynced, then renamed into place, so a directory under its commit's name is
//! always complete (a kill -9 mid-checkout leaves only a `.tmp-*` that the next prune
//! removes). Overlay `source` files and relative `file://` assets resolve inside it.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use gix::objs::tree::EntryKind;

use super::{describe, GitError, Mirror};

/// The checkout of commit `id` under `checkouts`, materialized unless already there.
pub fn checkout(mirror: &Mirror, id: &str, checkouts: &Path) -> Result<PathBuf, GitError> {
    let done = checkouts.join(id);
    if done.is_dir() {
        return Ok(done);
    }
    let tmp = checkouts.join(format!(".tmp-{id}-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GitError::Checkout {
            id: id.to_string(),
            path,
            source,
        }
    };
    std::fs::create_dir_all(checkouts).map_err(io(checkouts))?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let tree = mirror.tree(id)?;
    write_tree(mirror, id, &tree, &tmp)?;
    std::fs::rename(&tmp, &done).map_err(io(&done))?;
    sync_dir(checkouts).map_err(io(checkouts))?;
    Ok(done)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A tree entry's name as a single safe path component (git itself refuses the others; a
/// crafted repository could still carry them).
fn component(id: &str, name: &[u8]) -> Result<String, GitError> {
    let s = std::str::from_utf8(name).map_err(|_| GitError::Object {
        id: id.to_string(),
        message: format!(
            "tree entry {:?} is not UTF-8",
            String::from_utf8_lossy(name)
        ),
    })?;
    if s.is_empty() || s == "." || s == ".." || s == ".git" || s.contains('/') || s.contains('\0') {
        return Err(GitError::Object {
            id: id.to_string(),
            message: format!("tree entry {s:?} is not a safe file name"),
        });
    }
    Ok(s.to_string())
}

fn write_tree(mirror: &Mirror, id: &str, tree: &gix::Tree<'_>, dir: &Path) -> Result<(), GitError> {
    let oerr = |e: gix::Error| GitError::Object {
        id: id.to_string(),
        message: describe(&e),
    };
    let io = |path: PathBuf| {
        move |source| GitError::Checkout {
            id: id.to_string(),
            path,
            source,
        }
    };
    for entry in tree.iter() {
        let entry = entry.map_err(oerr)?;
        let e = entry.inner;
        let path = dir.join(component(id, e.filename)?);
        match e.mode.kind() {
            EntryKind::Tree => {
                std::fs::create_dir(&path).map_err(io(path.clone()))?;
                let sub = mirror.repo().find_tree(e.oid).map_err(oerr)?;
                write_tree(mirror, id, &sub, &path)?;
            }
            EntryKind::Blob | EntryKind::BlobExecutable => {
                let blob = mirror.repo().find_blob(e.oid).map_err(oerr)?;
                let mode = if e.mode.kind() == EntryKind::BlobExecutable {
                    0o755
                } else {
                    0o644
                };
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(io(path.clone()))?;
                f.write_all(&blob.data).map_err(io(path.clone()))?;
                // The umask may have narrowed the mode; git's modes are what the tree says.
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io(path.clone()))?;
                f.sync_all().map_err(io(path.clone()))?;
            }
            EntryKind::Link => {
                let blob = mirror.repo().find_blob(e.oid).map_err(oerr)?;
                let target =
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&blob.data);
                std::os::unix::fs::symlink(target, &path).map_err(io(path.clone()))?;
            }
            EntryKind::Commit => {
                // A submodule: git leaves an empty directory too; its content is not fetched.
                tracing::warn!(
                    "commit {id}: submodule {} is not checked out (fort does not fetch submodules)",
                    path.display()
                );
                std::fs::create_dir(&path).map_err(io(path.clone()))?;
            }
        }
    }
    sync_dir(dir).map_err(io(dir.to_path_buf()))
}

/// Point `git_dir/current` at the checkout of `id` (a relative symlink replaced by rename,
/// so it always names one complete checkout). Manifests are loaded through it: the paths
/// they resolve (relative assets, overlay sources) stay the same from commit to commit, and
/// only a file whose content changed is re-fetched.
pub fn point_current(git_dir: &Path, id: &str) -> Result<PathBuf, GitError> {
    let link = git_dir.join("current");
    let target = Path::new("checkouts").join(id);
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(link);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GitError::Checkout {
            id: id.to_string(),
            path,
            source,
        }
    };
    let tmp = git_dir.join(format!(".current-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &link).map_err(io(&link))?;
    sync_dir(git_dir).map_err(io(git_dir))?;
    Ok(link)
}

/// Remove every checkout but `keep` (the converged commit and the one being applied), and
/// any temp directory a killed fort left.
pub fn prune_checkouts(checkouts: &Path, keep: &[&str]) {
    let Ok(rd) = std::fs::read_dir(checkouts) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if keep.contains(&name.as_str()) {
            continue;
        }
        let p = e.path();
        if let Err(err) = std::fs::remove_dir_all(&p) {
            tracing::warn!("cannot remove old checkout {}: {err}", p.display());
        }
    }
}

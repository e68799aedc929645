//! File ownership for confined VMs. A VM's uid owns its run dir (0700) and its drive files
//! (0600), can read the kernel and initrd, and can traverse — not list — the directories on
//! the way (0711); the state database, the lock and template images stay root's, and drives
//! are 0600 from their creation, so a compromised VMM reads neither fort's state nor another
//! VM's files.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", path.display())]
pub struct FileError {
    what: &'static str,
    path: std::path::PathBuf,
    #[source]
    source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Set `path`'s mode (permission bits only) when it differs.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), FileError> {
    let m = std::fs::metadata(path).map_err(err("read", path))?;
    if m.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(err("chmod", path))?;
    }
    Ok(())
}

/// Give `path` to `uid:gid` with `mode`, when it is not already so.
pub fn own(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), FileError> {
    let m = std::fs::metadata(path).map_err(err("read", path))?;
    if m.uid() != uid || m.gid() != gid {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err("chown", path))?;
    }
    set_mode(path, mode)
}

/// Let everyone traverse the directories from `root` down to `file`'s parent and read
/// `file` (a kernel, an initrd: nothing secret). Outside `root` nothing is changed.
pub fn readable_under(root: &Path, file: &Path) -> Result<(), FileError> {
    let Ok(rel) = file.strip_prefix(root) else {
        return Ok(());
    };
    let mut dir = root.to_path_buf();
    for part in rel.parent().into_iter().flat_map(|p| p.components()) {
        dir.push(part);
        add_mode(&dir, 0o001)?;
    }
    add_mode(file, 0o004)
}

fn add_mode(path: &Path, bits: u32) -> Result<(), FileError> {
    let m = std::fs::metadata(path).map_err(err("read", path))?;
    let mode = m.mode() & 0o7777;
    if mode & bits != bits {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | bits))
            .map_err(err("chmod", path))?;
    }
    Ok(())
}

/// The state dir as confined VMs need it: the dir itself and `run/` and `drives/`
/// traversable (0711), the database, its WAL files and the lock root's only (0600).
pub fn harden_state_dir(state_dir: &Path) -> Result<(), FileError> {
    reachable(state_dir)?;
    set_mode(state_dir, 0o711)?;
    for d in ["run", "drives"] {
        let p = state_dir.join(d);
        std::fs::create_dir_all(&p).map_err(err("create", &p))?;
        set_mode(&p, 0o711)?;
    }
    // The cache is passed through to the kernel (not listed); template images (whose
    // `files` may hold secrets) are root's alone.
    for (d, mode) in [("cache", 0o711), ("images", 0o700)] {
        let p = state_dir.join(d);
        if p.is_dir() {
            set_mode(&p, mode)?;
        }
    }
    private_files(state_dir)
}

/// Every directory above the state dir must let others through (fort does not change
/// modes outside its state dir): say which does not, and the fix.
fn reachable(state_dir: &Path) -> Result<(), FileError> {
    for up in state_dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(up) else {
            continue;
        };
        if m.mode() & 0o001 == 0 {
            return Err(FileError {
                what: "confine VMs in",
                path: state_dir.to_path_buf(),
                source: std::io::Error::other(format!(
                    "their uids cannot reach it: {} is mode {:04o}; make it traversable (chmod o+x {}), move the state dir, or run unconfined with FORT_CONFINE=0",
                    up.display(),
                    m.mode() & 0o7777,
                    up.display()
                )),
            });
        }
    }
    Ok(())
}

/// The database, its WAL files and the lock: 0600 (SQLite gives the WAL files the
/// database's mode).
pub fn private_files(state_dir: &Path) -> Result<(), FileError> {
    for f in ["state.db", "state.db-wal", "state.db-shm", "lock"] {
        let p = state_dir.join(f);
        if p.exists() {
            set_mode(&p, 0o600)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_kernel_in_the_cache_is_made_reachable_and_nothing_above_the_root() {
        let d = tempfile::tempdir().unwrap();
        set_mode(d.path(), 0o711).unwrap();
        let root = d.path().join("state");
        let k = root.join("cache/sha256/ab/kernel");
        std::fs::create_dir_all(k.parent().unwrap()).unwrap();
        std::fs::write(&k, b"k").unwrap();
        for p in [
            &root,
            &root.join("cache"),
            &root.join("cache/sha256"),
            &root.join("cache/sha256/ab"),
        ] {
            set_mode(p, 0o700).unwrap();
        }
        set_mode(&k, 0o600).unwrap();
        readable_under(&root, &k).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(
            mode(&root),
            0o700,
            "the root's own mode is harden_state_dir's"
        );
        assert_eq!(mode(&root.join("cache/sha256/ab")), 0o701);
        assert_eq!(mode(&k), 0o604);
        std::fs::write(root.join("state.db"), b"").unwrap();
        harden_state_dir(&root).unwrap();
        assert_eq!(mode(&root), 0o711);
        assert_eq!(mode(&root.join("run")), 0o711);
        assert_eq!(mode(&root.join("state.db")), 0o600);
    }
}

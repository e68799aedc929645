//! Sandbox files on disk (`state_dir/sandboxes/NAME.toml`, docs/sandboxes.md): written
//! atomically, read, removed; and each sandbox's last agent request, kept as the mtime of
//! `sandboxes/.activity/NAME` so an idle timeout survives a restart of fort.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

fn activity(dir: &Path, name: &str) -> PathBuf {
    dir.join(".activity").join(name)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Write `NAME.toml` whole or not at all: a temporary name (not `*.toml`, so no pass reads
/// it half-written), fsync, rename, fsync the directory. The directory is the owner's only.
pub fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".{name}.toml.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    let path = file(dir, name);
    std::fs::rename(&tmp, &path)?;
    fsync_dir(dir)?;
    Ok(path)
}

pub fn read(dir: &Path, name: &str) -> std::io::Result<String> {
    std::fs::read_to_string(file(dir, name))
}

/// Remove `NAME.toml` (and its activity mark); `false` if there was none.
pub fn remove(dir: &Path, name: &str) -> std::io::Result<bool> {
    let _ = std::fs::remove_file(activity(dir, name));
    match std::fs::remove_file(file(dir, name)) {
        Ok(()) => {
            fsync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Leftover temporary files of writes a crash interrupted.
pub fn remove_temporaries(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with('.') && n.ends_with(".toml.tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Mark an agent request to `name` now.
pub fn touch(dir: &Path, name: &str) -> std::io::Result<()> {
    let p = activity(dir, name);
    if let Some(parent) = p.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&p)?;
    f.set_modified(SystemTime::now())
}

/// When an agent request last reached `name` (unix seconds), if one did.
pub fn last_activity(dir: &Path, name: &str) -> Option<u64> {
    let m = std::fs::metadata(activity(dir, name))
        .ok()?
        .modified()
        .ok()?;
    m.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_is_atomic_private_and_remove_says_whether_there_was_one() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("sandboxes");
        let p = write(&dir, "ci-0001", "a = 1\n").unwrap();
        assert_eq!(read(&dir, "ci-0001").unwrap(), "a = 1\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["ci-0001.toml"]);
        assert_eq!(last_activity(&dir, "ci-0001"), None);
        touch(&dir, "ci-0001").unwrap();
        assert!(last_activity(&dir, "ci-0001").unwrap() + 5 >= now());
        assert!(remove(&dir, "ci-0001").unwrap());
        assert!(!remove(&dir, "ci-0001").unwrap());
        assert_eq!(last_activity(&dir, "ci-0001"), None);
        std::fs::write(dir.join(".x.toml.tmp"), "half").unwrap();
        remove_temporaries(&dir);
        assert!(!dir.join(".x.toml.tmp").exists());
    }
}

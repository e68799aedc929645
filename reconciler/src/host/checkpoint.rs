//! User checkpoints on disk: `state_dir/snapshots/VM/checkpoints/LABEL/` holds the VM's state
//! stream (`vmstate`) and `snapshot.json` exactly as a suspend writes them, plus
//! `drives/NAME` — a reflink clone (a sparse copy where the filesystem cannot share extents)
//! of each of its drives, taken while the vCPUs were stopped — described in `drives.json`.
//! A checkpoint is written into `.LABEL.tmp/`, fsynced and renamed into place by the suspend's
//! commit, so a directory without a leading dot is always whole.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::image::clone::{clone_file, CloneError, Method};
use crate::host::snapshot::{self, Meta, SnapshotError};
use crate::manifest::units::human_size;

pub const DRIVES_FILE: &str = "drives.json";
const DRIVES_DIR: &str = "drives";
pub const MAX_LABEL: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Clone(#[from] CloneError),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint label {label:?} is invalid: {why}")]
    Label { label: String, why: String },
    #[error("{} is not a checkpoint's drive list: {why}", path.display())]
    Garbled { path: PathBuf, why: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io { what, path, source }
}

/// One drive as the checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveCopy {
    /// The drive's name (`drive.NAME`).
    pub drive: String,
    /// The copy's file, relative to the checkpoint directory.
    pub file: String,
    /// Its apparent size.
    pub bytes: u64,
    /// Reflink (shares extents with the drive) or a sparse copy.
    pub method: Method,
}

/// A committed checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub label: String,
    pub dir: PathBuf,
    pub meta: Meta,
    pub drives: Vec<DriveCopy>,
}

impl Checkpoint {
    /// "40.1MiB memory + drives s-root (256MiB, reflink), 3m old".
    pub fn summary(&self) -> String {
        let drives: Vec<String> = self
            .drives
            .iter()
            .map(|d| {
                let how = match d.method {
                    Method::Reflink => "reflink",
                    _ => "copy",
                };
                format!("{} ({}, {how})", d.drive, human_size(d.bytes))
            })
            .collect();
        let age = snapshot::now_unix().saturating_sub(self.meta.created_unix);
        format!(
            "{} memory + drives {}, {} old",
            human_size(self.meta.state_bytes),
            if drives.is_empty() {
                "none".to_string()
            } else {
                drives.join(", ")
            },
            humantime::format_duration(std::time::Duration::from_secs(age))
        )
    }
}

/// Labels name directories: letters, digits, `.`, `_` and `-`, starting with a letter or a
/// digit (so no hidden or temporary names), at most [`MAX_LABEL`] characters.
pub fn validate_label(label: &str) -> Result<(), CheckpointError> {
    let bad = |why: String| {
        Err(CheckpointError::Label {
            label: label.to_string(),
            why,
        })
    };
    if label.is_empty() {
        return bad("it is empty".into());
    }
    if label.len() > MAX_LABEL {
        return bad(format!(
            "it has {} characters, at most {MAX_LABEL} are allowed",
            label.len()
        ));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !label.chars().all(ok) || !label.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad(
            "use letters, digits, '.', '_' and '-', starting with a letter or a digit".into(),
        );
    }
    Ok(())
}

/// The label of a checkpoint taken at `unix` seconds without `--name`: `2026-12-02T01-30-00Z`
/// (RFC 3339 in UTC, `:` being awkward in file names).
pub fn default_label(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(':', "-")
}

/// `state_dir/snapshots/VM/checkpoints/`.
pub fn root(state_dir: &Path, vm: &str) -> PathBuf {
    snapshot::vm_dir(state_dir, vm).join("checkpoints")
}

/// Where checkpoint `label` lives, and where it is written first.
pub fn dirs(state_dir: &Path, vm: &str, label: &str) -> (PathBuf, PathBuf) {
    let r = root(state_dir, vm);
    (r.join(label), r.join(format!(".{label}.tmp")))
}

/// Read one committed checkpoint.
pub fn read(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let meta = snapshot::read_meta(dir)?;
    let p = dir.join(DRIVES_FILE);
    let text = std::fs::read_to_string(&p).map_err(io("cannot read", &p))?;
    let drives = serde_json::from_str(&text).map_err(|e| CheckpointError::Garbled {
        path: p.clone(),
        why: e.to_string(),
    })?;
    Ok(Checkpoint {
        label: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        dir: dir.to_path_buf(),
        meta,
        drives,
    })
}

/// A VM's committed checkpoints, oldest first (temporary directories are not listed).
pub fn list(state_dir: &Path, vm: &str) -> Result<Vec<Checkpoint>, CheckpointError> {
    let r = root(state_dir, vm);
    let rd = match std::fs::read_dir(&r) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("cannot list", &r)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io("cannot list", &r))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(read(&e.path())?);
    }
    out.sort_by(|a, b| (a.meta.created_unix, &a.label).cmp(&(b.meta.created_unix, &b.label)));
    Ok(out)
}

/// Remove all but the newest `keep` checkpoints; the labels removed, oldest first.
pub fn prune(state_dir: &Path, vm: &str, keep: usize) -> Result<Vec<String>, CheckpointError> {
    let all = list(state_dir, vm)?;
    let n = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for c in all.into_iter().take(n) {
        snapshot::remove(&c.dir)?;
        removed.push(c.label);
    }
    Ok(removed)
}

/// Remove what interrupted checkpoints left (`.LABEL.tmp/`).
pub fn remove_temporaries(state_dir: &Path, vm: &str) -> Result<(), CheckpointError> {
    let r = root(state_dir, vm);
    let Ok(rd) = std::fs::read_dir(&r) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            snapshot::remove(&e.path())?;
        }
    }
    Ok(())
}

fn fsync(path: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io("cannot fsync", path))
}

/// Copy each drive (`(name, file)`) into `tmp/drives/NAME` by reflink (else sparse copy),
/// fsynced, and describe them in `tmp/drives.json`. Called while the vCPUs are stopped.
pub fn copy_drives(tmp: &Path, drives: &[(String, PathBuf)]) -> Result<(), CheckpointError> {
    let d = tmp.join(DRIVES_DIR);
    std::fs::create_dir_all(&d).map_err(io("cannot create", &d))?;
    let mut copies = Vec::new();
    for (name, src) in drives {
        let file = format!("{DRIVES_DIR}/{name}");
        let dst = tmp.join(&file);
        let method = clone_file(src, &dst)?;
        fsync(&dst)?;
        let bytes = std::fs::metadata(&dst)
            .map_err(io("cannot stat", &dst))?
            .len();
        copies.push(DriveCopy {
            drive: name.clone(),
            file,
            bytes,
            method,
        });
    }
    fsync(&d)?;
    let p = tmp.join(DRIVES_FILE);
    let text = serde_json::to_string_pretty(&copies).unwrap_or_default();
    let mut f = std::fs::File::create(&p).map_err(io("cannot create", &p))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("cannot write", &p))
}

/// Put the checkpoint's drive copies back over the VM's drive files (`(name, file)`): each
/// is cloned (the checkpoint stays reusable) to a temporary file beside the drive, given the
/// drive's owner and mode (a confined VM's uid), fsynced and renamed over it — each drive is
/// either wholly old or wholly the checkpoint's.
pub fn put_back(cp: &Checkpoint, drives: &[(String, PathBuf)]) -> Result<(), CheckpointError> {
    for (name, dst) in drives {
        let Some(copy) = cp.drives.iter().find(|d| &d.drive == name) else {
            return Err(CheckpointError::Garbled {
                path: cp.dir.join(DRIVES_FILE),
                why: format!("it has no copy of drive.{name}"),
            });
        };
        let src = cp.dir.join(&copy.file);
        let tmp = dst.with_extension("fort-restore.tmp");
        let _ = std::fs::remove_file(&tmp);
        clone_file(&src, &tmp)?;
        if let Ok(old) = std::fs::metadata(dst) {
            std::os::unix::fs::chown(&tmp, Some(old.uid()), Some(old.gid()))
                .map_err(io("cannot chown", &tmp))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(old.mode() & 0o7777))
                .map_err(io("cannot chmod", &tmp))?;
        }
        fsync(&tmp)?;
        std::fs::rename(&tmp, dst).map_err(io("cannot rename into place", dst))?;
        if let Some(parent) = dst.parent() {
            fsync(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_are_checked_with_a_reason() {
        for ok in ["before", "2026-12-02T01-30-00Z", "a.b_c-1", &"x".repeat(64)] {
            validate_label(ok).unwrap();
        }
        let why = |l: &str| validate_label(l).unwrap_err().to_string();
        assert_eq!(why(""), "checkpoint label \"\" is invalid: it is empty");
        assert_eq!(
            why(&"x".repeat(65)),
            format!(
                "checkpoint label \"{}\" is invalid: it has 65 characters, at most 64 are allowed",
                "x".repeat(65)
            )
        );
        for bad in [".hidden", "a/b", "-x", "a b", "é"] {
            assert_eq!(
                why(bad),
                format!("checkpoint label {bad:?} is invalid: use letters, digits, '.', '_' and '-', starting with a letter or a digit")
            );
        }
    }

    #[test]
    fn default_labels_are_timestamps() {
        assert_eq!(default_label(1_796_175_000), "2026-12-02T01-30-00Z");
        validate_label(&default_label(0)).unwrap();
    }

    fn commit(state: &Path, label: &str, created: u64, drive: &Path) {
        let (dest, tmp) = dirs(state, "a", label);
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join(snapshot::STATE_FILE), label).unwrap();
        copy_drives(&tmp, &[("a-root".into(), drive.to_path_buf())]).unwrap();
        let mut meta = Meta::new("a", "qemu", "v", serde_json::json!({}), 5, "x".into());
        meta.created_unix = created;
        snapshot::commit(&tmp, &dest, &meta).unwrap();
    }

    #[test]
    fn copies_list_prune_and_put_back() {
        let d = tempfile::tempdir().unwrap();
        let drive = d.path().join("root.ext4");
        std::fs::write(&drive, "first").unwrap();
        commit(d.path(), "one", 10, &drive);
        std::fs::write(&drive, "second").unwrap();
        commit(d.path(), "two", 20, &drive);
        std::fs::create_dir_all(dirs(d.path(), "a", "three").1).unwrap();
        let all = list(d.path(), "a").unwrap();
        let labels: Vec<_> = all.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["one", "two"]);
        assert_eq!(all[0].drives[0].bytes, 5);

        std::fs::write(&drive, "later data").unwrap();
        put_back(&all[0], &[("a-root".into(), drive.clone())]).unwrap();
        assert_eq!(std::fs::read_to_string(&drive).unwrap(), "first");
        // The checkpoint is still whole after being put back.
        put_back(&all[0], &[("a-root".into(), drive.clone())]).unwrap();
        assert_eq!(std::fs::read_to_string(&drive).unwrap(), "first");
        let err = put_back(&all[0], &[("other".into(), drive.clone())]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a checkpoint's drive list: it has no copy of drive.other",
                all[0].dir.join(DRIVES_FILE).display()
            )
        );

        assert_eq!(prune(d.path(), "a", 1).unwrap(), ["one"]);
        remove_temporaries(d.path(), "a").unwrap();
        assert!(!dirs(d.path(), "a", "three").1.exists());
        assert_eq!(prune(d.path(), "a", 0).unwrap(), ["two"]);
        assert!(list(d.path(), "a").unwrap().is_empty());
    }
}

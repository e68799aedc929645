//! Layers applied in order into one directory, with OCI whiteouts: `.wh.NAME` removes `NAME`
//! of the layers below, `.wh..wh..opq` hides everything the layers below put in its
//! directory. The safety rules are the tarball unpacker's (`host::image::unpack`): no
//! absolute paths, no `..`, no hard links out of the tree, no writes through a symlink —
//! whiteouts included. Owners, modes, mtimes and (for files) xattrs are kept.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::media::Compression;
use crate::host::image::unpack::{create, entry_path, Stats, UnpackError};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// The tar stream of the layer in `file`.
pub fn layer_reader(file: &Path, compression: Compression) -> std::io::Result<Box<dyn Read>> {
    let f = BufReader::with_capacity(1 << 20, File::open(file)?);
    Ok(match compression {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(f)?),
    })
}

/// Apply the layer in `file` on top of what `dest` holds.
pub fn apply_layer(
    file: &Path,
    compression: Compression,
    dest: &Path,
) -> Result<Stats, UnpackError> {
    let read_err = |source| UnpackError::Archive {
        archive: file.to_path_buf(),
        source,
    };
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnpackError::Write { path, source }
    };
    let reader = layer_reader(file, compression).map_err(read_err)?;
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(true);
    tar.set_overwrite(true);
    // What this layer put in place (and their ancestors): whiteouts only hide lower layers.
    let mut mine: HashSet<PathBuf> = HashSet::new();
    let mut stats = Stats::default();
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let Some((rel, shown)) = entry_path(&entry, dest, file)? else {
            continue;
        };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == OPAQUE {
            let dir = dest.join(&parent);
            hide_below(&dir, &parent, &mine).map_err(write_err(&dir))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let target = parent.join(hidden);
            if !mine.contains(&target) {
                let p = dest.join(&target);
                remove_any(&p).map_err(write_err(&p))?;
            }
            continue;
        }
        // What a lower layer has here is replaced: a directory only by a non-directory.
        let out = dest.join(&rel);
        let is_dir = entry.header().entry_type().is_dir();
        match std::fs::symlink_metadata(&out) {
            Ok(m) if m.is_dir() && !is_dir => {
                std::fs::remove_dir_all(&out).map_err(write_err(&out))?
            }
            Ok(m) if !m.is_dir() => std::fs::remove_file(&out).map_err(write_err(&out))?,
            _ => {}
        }
        create(&mut entry, dest, &rel, &shown, file, &mut stats)?;
        let mut p = rel.as_path();
        while mine.insert(p.to_path_buf()) {
            match p.parent() {
                Some(q) if !q.as_os_str().is_empty() => p = q,
                _ => break,
            }
        }
    }
    Ok(stats)
}

/// An opaque directory: remove what lower layers put below `dir` (`rel` inside the image),
/// keeping what this layer wrote.
fn hide_below(dir: &Path, rel: &Path, mine: &HashSet<PathBuf>) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let child = rel.join(e.file_name());
        if !mine.contains(&child) {
            remove_any(&e.path())?;
        } else if e.file_type()?.is_dir() {
            hide_below(&e.path(), &child, mine)?;
        }
    }
    Ok(())
}

/// Remove a file, link or directory tree (never following a symlink); gone already is fine.
fn remove_any(p: &Path) -> std::io::Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn layer(dir: &Path, name: &str, entries: &[(&str, Option<&[u8]>)]) -> PathBuf {
        let mut t = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    h.set_cksum();
                    t.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_cksum();
                    t.append_data(&mut h, path, &b""[..]).unwrap();
                }
            }
        }
        let p = dir.join(name);
        std::fs::write(&p, t.into_inner().unwrap()).unwrap();
        p
    }

    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let w = tempfile::tempdir().unwrap();
        let root = w.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let lower = layer(
            w.path(),
            "l1",
            &[
                ("etc", None),
                ("etc/gone", Some(b"x")),
                ("etc/kept", Some(b"x")),
                ("opt", None),
                ("opt/sub", None),
                ("opt/sub/old", Some(b"x")),
                ("opt/old", Some(b"x")),
                ("var", None),
                ("var/tree", None),
                ("var/tree/a", Some(b"x")),
            ],
        );
        // The opaque marker comes after some of the layer's own entries of that directory.
        let upper = layer(
            w.path(),
            "l2",
            &[
                ("etc/.wh.gone", Some(b"")),
                ("opt/sub/new", Some(b"y")),
                ("opt/.wh..wh..opq", Some(b"")),
                ("opt/new", Some(b"y")),
                ("var/.wh.tree", Some(b"")),
                ("var/fresh", Some(b"y")),
                ("var/.wh.fresh", Some(b"")),
            ],
        );
        apply_layer(&lower, Compression::None, &root).unwrap();
        apply_layer(&upper, Compression::None, &root).unwrap();
        assert_eq!(
            tree(&root),
            [
                "etc",
                "etc/kept",
                "opt",
                "opt/new",
                "opt/sub",
                "opt/sub/new",
                "var",
                "var/fresh"
            ]
        );
    }

    #[test]
    fn whiteouts_follow_the_safety_rules() {
        let w = tempfile::tempdir().unwrap();
        let root = w.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let outside = w.path().join("victim");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(w.path(), root.join("up")).unwrap();
        let evil = layer(w.path(), "evil", &[("up/.wh.victim", Some(b""))]);
        let e = apply_layer(&evil, Compression::None, &root).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("entry `up/.wh.victim` would be written through the symlink `up`"),
            "{e}"
        );
        assert!(outside.exists());
    }
}

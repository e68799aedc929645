//! Unpack a rootfs tarball (`.tar`, `.tar.gz`, `.tar.xz`, sniffed by magic bytes) into a work
//! directory, preserving owners, modes, mtimes, symlinks, hard links and device nodes — and
//! refusing any entry that would land outside it: absolute paths, `..`, hard links to outside,
//! and writes through a symlink the archive itself planted.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("unsafe archive {}: entry `{entry}` {why}", archive.display())]
    Unsafe {
        archive: PathBuf,
        entry: String,
        why: String,
    },
    #[error("cannot read archive {}", archive.display())]
    Archive {
        archive: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was unpacked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    /// Bytes of regular file contents.
    pub bytes: u64,
}

/// The tar stream of `archive`, decompressed as its magic bytes say (also used to index an
/// archive without unpacking it, see `init::index_archive`).
pub fn open(archive: &Path) -> Result<Box<dyn Read>, std::io::Error> {
    let mut f = BufReader::new(File::open(archive)?);
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut f, &mut magic)?;
    let head = std::io::Cursor::new(magic[..n].to_vec()).chain(f);
    Ok(if magic[..n].starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(head))
    } else if magic[..n].starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::read::XzDecoder::new(head))
    } else {
        Box::new(head)
    })
}

/// `archive` → `dest` (which must exist and should be empty).
pub fn unpack(archive: &Path, dest: &Path) -> Result<Stats, UnpackError> {
    let read_err = |source| UnpackError::Archive {
        archive: archive.to_path_buf(),
        source,
    };
    let reader = open(archive).map_err(read_err)?;
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    let mut stats = Stats::default();
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let Some((rel, shown)) = entry_path(&entry, dest, archive)? else {
            continue; // "./" itself
        };
        create(&mut entry, dest, &rel, &shown, archive, &mut stats)?;
    }
    Ok(stats)
}

fn unsafe_entry(archive: &Path, entry: &str, why: String) -> UnpackError {
    UnpackError::Unsafe {
        archive: archive.to_path_buf(),
        entry: entry.to_string(),
        why,
    }
}

/// An entry's path relative to the image root (and as shown in errors), refused when it is
/// absolute, has `..`, or goes through a symlink already under `dest`; `None` for the root
/// itself.
pub(crate) fn entry_path<R: Read>(
    entry: &tar::Entry<'_, R>,
    dest: &Path,
    archive: &Path,
) -> Result<Option<(PathBuf, String)>, UnpackError> {
    let raw = entry
        .path()
        .map_err(|source| UnpackError::Archive {
            archive: archive.to_path_buf(),
            source,
        })?
        .into_owned();
    let shown = raw.display().to_string();
    let rel = inside(&raw).map_err(|why| unsafe_entry(archive, &shown, why.to_string()))?;
    if rel.as_os_str().is_empty() {
        return Ok(None);
    }
    if let Some(link) = through_symlink(dest, &rel) {
        return Err(unsafe_entry(
            archive,
            &shown,
            format!("would be written through the symlink `{}`", link.display()),
        ));
    }
    Ok(Some((rel, shown)))
}

/// Create an entry whose path `entry_path` checked: a hard link must point inside the image;
/// device nodes and fifos are made here, everything else by the tar crate. Counted in `stats`.
pub(crate) fn create<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    rel: &Path,
    shown: &str,
    archive: &Path,
    stats: &mut Stats,
) -> Result<(), UnpackError> {
    let read_err = |source| UnpackError::Archive {
        archive: archive.to_path_buf(),
        source,
    };
    let kind = entry.header().entry_type();
    if kind.is_hard_link() {
        let target = entry
            .link_name()
            .map_err(read_err)?
            .unwrap_or_default()
            .into_owned();
        inside(&target).map_err(|why| {
            unsafe_entry(
                archive,
                shown,
                format!("is a hard link to `{}`, which {why}", target.display()),
            )
        })?;
    }
    let out = dest.join(rel);
    if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
        make_node(entry, &out)?;
    } else if !entry.unpack_in(dest).map_err(|source| {
        // The tar crate keeps the kind of the underlying error: a truncated or corrupt
        // stream is the archive's fault, anything else is ours (disk, permissions).
        if matches!(
            source.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
        ) {
            read_err(source)
        } else {
            UnpackError::Write {
                path: out.clone(),
                source,
            }
        }
    })? {
        return Err(unsafe_entry(
            archive,
            shown,
            "was refused by the unpacker".to_string(),
        ));
    }
    stats.entries += 1;
    if kind.is_file() {
        // The size the entry's data was read with: a PAX `size` record overrides the
        // header's field, which may then be anything (up to u64::MAX) and must not count.
        stats.bytes += entry.size();
    }
    Ok(())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The entry's path relative to the image root, or why it leaves the image.
pub(crate) fn inside(p: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("has an absolute path"),
            Component::ParentDir => return Err("leaves the image (`..`)"),
        }
    }
    Ok(out)
}

/// Where `path` (absolute inside the image) is on the host, resolving the image's own
/// symlinks as the guest will see them — an absolute link target starts again at `root`, `..`
/// stops at `root` (like `openat2`'s `RESOLVE_IN_ROOT`) — so a file fort writes into an image
/// (overlays, the agent, the image config) never lands outside it, whatever links the rootfs
/// holds (`sbin -> /sbin`, `etc -> ../../..`). The last component is not followed: the
/// writer replaces a link there.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, String> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    let name = path
        .file_name()
        .ok_or_else(|| format!("`{}` names no file", path.display()))?
        .to_os_string();
    let comps = |p: &Path| -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    };
    let mut todo: VecDeque<OsString> = path.parent().map(comps).unwrap_or_default().into();
    let mut done: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&done);
        here.push(&c);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("`{}`: too many levels of symlinks", path.display()));
                }
                let target = std::fs::read_link(&here)
                    .map_err(|e| format!("cannot read the link {}: {e}", here.display()))?;
                if target.is_absolute() {
                    done.clear();
                }
                for t in comps(&target).into_iter().rev() {
                    todo.push_front(t);
                }
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!(
                    "`{}`: /{} is not a directory",
                    path.display(),
                    done.iter()
                        .chain([&c])
                        .map(|s| s.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                ))
            }
            _ => done.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    out.push(name);
    Ok(out)
}

/// The first existing ancestor of `rel` (below `dest`) that is a symlink, if any: unpacking
/// would follow it, possibly out of the image.
pub(crate) fn through_symlink(dest: &Path, rel: &Path) -> Option<PathBuf> {
    let mut cur = dest.to_path_buf();
    let parent = rel.parent()?;
    for c in parent.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return cur.strip_prefix(dest).ok().map(Path::to_path_buf)
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Device nodes and fifos, which the tar crate does not create.
fn make_node<R: Read>(entry: &tar::Entry<'_, R>, out: &Path) -> Result<(), UnpackError> {
    use rustix::fs::{FileType, Mode};
    let h = entry.header();
    let werr = |source: std::io::Error| UnpackError::Write {
        path: out.to_path_buf(),
        source,
    };
    let kind = h.entry_type();
    let ft = if kind.is_character_special() {
        FileType::CharacterDevice
    } else if kind.is_block_special() {
        FileType::BlockDevice
    } else {
        FileType::Fifo
    };
    let major = h.device_major().ok().flatten().unwrap_or(0);
    let minor = h.device_minor().ok().flatten().unwrap_or(0);
    let mode = h.mode().unwrap_or(0o600) & 0o7777;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(werr)?;
    }
    let _ = std::fs::remove_file(out);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        out,
        ft,
        Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .map_err(|e| werr(e.into()))?;
    let uid = h.uid().ok().and_then(|u| u32::try_from(u).ok());
    let gid = h.gid().ok().and_then(|g| u32::try_from(g).ok());
    std::os::unix::fs::lchown(out, uid, gid).map_err(werr)?;
    // mknod applies the umask: set the mode exactly.
    rustix::fs::chmodat(
        rustix::fs::CWD,
        out,
        Mode::from_raw_mode(mode),
        rustix::fs::AtFlags::empty(),
    )
    .map_err(|e| werr(e.into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_root() {
        let w = tempfile::tempdir().unwrap();
        let root = w.path().join("root");
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::os::unix::fs::symlink("/usr/sbin", root.join("sbin")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        std::os::unix::fs::symlink(w.path(), root.join("host")).unwrap();
        std::fs::write(root.join("file"), b"").unwrap();
        let r = |p: &str| resolve_in_root(&root, Path::new(p));
        assert_eq!(r("/sbin/init").unwrap(), root.join("usr/sbin/init"));
        assert_eq!(r("/up/etc/x").unwrap(), root.join("etc/x"));
        assert_eq!(
            r("/host/victim").unwrap(),
            root.join(w.path().strip_prefix("/").unwrap())
                .join("victim")
        );
        assert_eq!(r("/new/dir/f").unwrap(), root.join("new/dir/f"));
        assert!(r("/file/x")
            .unwrap_err()
            .ends_with("/file is not a directory"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(r("/loop/x").unwrap_err().contains("too many levels"));
    }
}

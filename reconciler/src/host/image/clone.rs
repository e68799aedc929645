//! Drive files: copy-on-write clones of template images (`FICLONE` where the filesystem
//! supports it, e.g. btrfs or XFS; else a sparse copy), empty ext4 drives, and growing a drive
//! (`e2fsck -fy` + `resize2fs`; never shrinking).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed on {}: {stderr}", path.display())]
    Tool {
        tool: &'static str,
        path: PathBuf,
        stderr: String,
    },
}

/// How a drive was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Shares extents with the image (FICLONE): instant, no space.
    Reflink,
    /// A sparse byte copy (the filesystem cannot share extents).
    Copy,
    /// A new, empty ext4 filesystem.
    Mkfs,
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> CloneError + 'p {
    move |source| CloneError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Clone `src` to `dst` (which must not exist): reflink if possible, else sparse copy.
pub fn clone_file(src: &Path, dst: &Path) -> Result<Method, CloneError> {
    let from = File::open(src).map_err(io("cannot open", src))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io("cannot create", dst))?;
    if rustix::fs::ioctl_ficlone(&to, &from).is_ok() {
        return Ok(Method::Reflink);
    }
    sparse_copy(&from, &to, src, dst)?;
    to.sync_all().map_err(io("cannot sync", dst))?;
    Ok(Method::Copy)
}

/// Copy only the data regions (SEEK_DATA/SEEK_HOLE), so an image's holes stay holes.
fn sparse_copy(from: &File, to: &File, src: &Path, dst: &Path) -> Result<(), CloneError> {
    let len = from.metadata().map_err(io("cannot stat", src))?.len();
    to.set_len(len).map_err(io("cannot size", dst))?;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < len {
        let data = match rustix::fs::seek(from, rustix::fs::SeekFrom::Data(pos as i64)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(io("cannot seek", src)(e.into())),
        };
        let hole = rustix::fs::seek(from, rustix::fs::SeekFrom::Hole(data as i64))
            .map_err(|e| io("cannot seek", src)(e.into()))?;
        let mut off = data;
        while off < hole {
            let n = ((hole - off) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], off)
                .map_err(io("cannot read", src))?;
            to.write_all_at(&buf[..n], off)
                .map_err(io("cannot write", dst))?;
            off += n as u64;
        }
        pos = hole;
    }
    let mut to = to;
    to.seek(SeekFrom::Start(0))
        .map_err(io("cannot seek", dst))?;
    Ok(())
}

fn run(tool: &'static str, args: &[&str], path: &Path, ok_codes: &[i32]) -> Result<(), CloneError> {
    let out = crate::host::tool(tool)
        .args(args)
        .arg(path)
        .output()
        .map_err(io("cannot run on", path))?;
    if !out.status.code().is_some_and(|c| ok_codes.contains(&c)) {
        return Err(CloneError::Tool {
            tool,
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Grow an ext4 image file to (at least) `size` bytes and its filesystem with it; returns the
/// file's length. `grown_to` is the length whose filesystem is known to fill the file (what
/// was recorded): a file longer than that was extended by a grow that may not have finished,
/// so its filesystem is grown again (resize2fs of a filesystem that fills its file is a
/// no-op). `extended` runs between lengthening the file and growing the filesystem.
pub fn grow(
    path: &Path,
    size: u64,
    grown_to: u64,
    extended: impl FnOnce(),
) -> Result<u64, CloneError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("cannot open", path))?;
    let mut len = f.metadata().map_err(io("cannot stat", path))?.len();
    if len < size {
        f.set_len(size).map_err(io("cannot grow", path))?;
        len = size;
    }
    drop(f);
    if len <= grown_to {
        return Ok(len);
    }
    extended();
    // e2fsck exits 1 when it fixed something (e.g. the new size), which is fine.
    run("e2fsck", &["-f", "-y"], path, &[0, 1])?;
    run("resize2fs", &["-f"], path, &[0])?;
    Ok(len)
}

/// A new empty ext4 filesystem of `size` bytes at `path` (which must not exist).
pub fn mkfs(path: &Path, size: u64) -> Result<(), CloneError> {
    let out = crate::host::tool("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0"])
        .arg(path)
        .arg(format!("{}k", size / 1024))
        .output()
        .map_err(io("cannot run mke2fs for", path))?;
    if !out.status.success() {
        return Err(CloneError::Tool {
            tool: "mke2fs",
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The filesystem a path (or its nearest existing ancestor) lives on, and how drives cloned
/// there would be made. Read-only (`statfs`), so `fort plan` can say it without touching
/// the host; the method each drive really got is recorded in its outputs.
pub fn clone_method(path: &Path) -> (&'static str, Method) {
    const BTRFS: i64 = 0x9123_683e;
    const XFS: i64 = 0x5846_5342;
    const BCACHEFS: i64 = 0xca45_1a4e;
    const EXT4: i64 = 0xef53;
    const TMPFS: i64 = 0x0102_1994;
    const ZFS: i64 = 0x2fc1_2fc1;
    let mut p = Some(path);
    while let Some(dir) = p {
        if let Ok(st) = rustix::fs::statfs(dir) {
            #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
            return match st.f_type as i64 {
                BTRFS => ("btrfs", Method::Reflink),
                XFS => ("xfs", Method::Reflink),
                BCACHEFS => ("bcachefs", Method::Reflink),
                EXT4 => ("ext4", Method::Copy),
                TMPFS => ("tmpfs", Method::Copy),
                ZFS => ("zfs", Method::Copy),
                _ => ("a filesystem without reflink", Method::Copy),
            };
        }
        p = dir.parent();
    }
    ("an unknown filesystem", Method::Copy)
}

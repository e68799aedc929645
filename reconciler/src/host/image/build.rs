//! Build an ext4 image from a prepared root directory with `mke2fs -d` (no loop mount, no
//! root needed), sized as declared, refusing sizes that cannot hold the files.

use std::path::{Path, PathBuf};
use std::process::Stdio;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the files need about {needed} but the image size is {size}: raise `size` to at least {needed}")]
    TooSmall { needed: String, size: String },
    #[error("cannot run mke2fs (install e2fsprogs)")]
    Spawn(#[source] std::io::Error),
    #[error("mke2fs failed building {}: {stderr}", image.display())]
    Mke2fs { image: PathBuf, stderr: String },
    #[error("cannot measure {}", path.display())]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Bytes the files under `root` occupy in 4 KiB blocks, and their number (for inodes).
pub fn usage(root: &Path) -> Result<(u64, u64), BuildError> {
    let mut bytes = 0u64;
    let mut count = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| BuildError::Walk {
            path: dir.clone(),
            source,
        })?;
        for e in rd.flatten() {
            let m = std::fs::symlink_metadata(e.path()).map_err(|source| BuildError::Walk {
                path: e.path(),
                source,
            })?;
            count += 1;
            // Real block usage of the source tree would depend on its filesystem; round each
            // file up to ext4's 4 KiB blocks instead.
            bytes += m.len().div_ceil(4096) * 4096;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, count))
}

/// A lower bound for the image size the tree needs: data, inode tables (256 B per inode,
/// one inode per 16 KiB by default), the journal (ext4 picks 4 MiB below 128 MiB, more
/// above) and ~5% of metadata and reserved blocks.
pub fn needed_size(data: u64, files: u64) -> u64 {
    let journal = if data < (128 << 20) {
        4 << 20
    } else {
        32 << 20
    };
    let inodes = files.max(data / 16384) * 256;
    (data + inodes + journal) * 105 / 100 + (1 << 20)
}

/// Headroom `size = "auto"` adds on top of what the files need (documented in
/// docs/images.md): room for logs, package caches and the agent's own writes.
pub const AUTO_HEADROOM: u64 = 64 << 20;

/// `size = "auto"`: what the files need plus [`AUTO_HEADROOM`], and never less than 1.5× the
/// files' data, rounded up to whole MiB (mke2fs and `fort plan` speak MiB).
pub fn auto_size(data: u64, files: u64) -> u64 {
    let size = (needed_size(data, files) + AUTO_HEADROOM).max(data / 2 * 3);
    size.div_ceil(1 << 20) << 20
}

fn human(b: u64) -> String {
    format!("{}MiB", b.div_ceil(1 << 20))
}

/// `mke2fs -t ext4 -d root image size`. `image` must not exist (write to a temp path and rename).
/// `running` is called while mke2fs runs. `size` None is `size = "auto"`. Returns the size built.
pub fn mke2fs(
    root: &Path,
    image: &Path,
    size: Option<u64>,
    running: impl FnOnce(),
) -> Result<u64, BuildError> {
    let (data, files) = usage(root)?;
    let needed = needed_size(data, files);
    let size = size.unwrap_or_else(|| auto_size(data, files));
    if needed > size {
        return Err(BuildError::TooSmall {
            needed: human(needed),
            size: human(size),
        });
    }
    let child = crate::host::tool("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d"])
        .arg(root)
        .arg(image)
        .arg(format!("{}k", size / 1024))
        .env("MKE2FS_SYNC", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BuildError::Spawn)?;
    running();
    let out = child.wait_with_output().map_err(BuildError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("Could not allocate block") || stderr.contains("No space left") {
            return Err(BuildError::TooSmall {
                needed: human(needed.max(size + (size / 4))),
                size: human(size),
            });
        }
        return Err(BuildError::Mke2fs {
            image: image.to_path_buf(),
            stderr,
        });
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_size_is_needed_plus_headroom_and_at_least_half_again() {
        const M: u64 = 1 << 20;
        let cases: Vec<(u64, u64, u64)> = vec![
            // A busybox tree: what it needs (~7.3MiB) + 64MiB headroom.
            (2 * M, 50, 72 * M),
            // 210MiB of Debian (~8,000 files): needed (~259MiB) + 64MiB, above 1.5× (315MiB).
            (210 * M, 8000, 323 * M),
            // 1GiB of data: 1.5× (1536MiB) wins over needed + headroom (~1.2GiB).
            (1024 * M, 20000, 1536 * M),
        ];
        for (data, files, want) in cases {
            let got = auto_size(data, files);
            assert_eq!(got, want, "data {data} files {files}");
            assert!(got >= needed_size(data, files) && got >= data / 2 * 3);
        }
    }
}

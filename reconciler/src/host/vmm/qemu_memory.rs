//! A QEMU guest's memory saved beside its migration stream rather than in it. The guest's
//! RAM is QEMU's `memory-backend-memfd` (shared, for vhost-user); with the `x-ignore-shared`
//! migration capability QEMU leaves shared RAM out of the stream, and fort copies the memfd
//! itself, reaching it through `/proc/PID/fd`. Only pages the guest has touched exist in a
//! memfd (`SEEK_DATA`/`SEEK_HOLE` find them without faulting the rest in), so saving and
//! loading cost the guest's working set, not its size: QEMU's own stream reads every page of
//! the guest's memory to find the zero ones, and reading an untouched memfd page allocates
//! it (docs/benchmarks.md measured 3.4 s/GiB that way).
//!
//! The file `memory` is sparse, the guest's size, its non-zero pages at their offsets. Its
//! checksum is the sha256 of every non-zero 4 KiB page preceded by its offset
//! (little-endian u64), in order: it does not depend on how a filesystem lays out holes.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::host::snapshot::{FileSum, SnapshotError};

/// The memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

const PAGE: usize = 4096;
const CHUNK: usize = 1 << 20;

/// The guest memory of the QEMU with process id `pid`: its memfd (named after the backend
/// type, as QEMU names it), checked to be `bytes` long.
pub fn find_memfd(pid: u32, bytes: u64) -> Result<File, SnapshotError> {
    let dir = std::path::PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = std::fs::read_dir(&dir).map_err(|e| SnapshotError::io("cannot list", &dir, e))?;
    for e in entries.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if !link
            .to_string_lossy()
            .starts_with("/memfd:memory-backend-memfd")
        {
            continue;
        }
        let f = File::options()
            .read(true)
            .write(true)
            .open(e.path())
            .map_err(|err| SnapshotError::io("cannot open QEMU's guest memory", &e.path(), err))?;
        let len = f
            .metadata()
            .map_err(|err| SnapshotError::io("cannot stat", &e.path(), err))?
            .len();
        if len == bytes {
            return Ok(f);
        }
    }
    Err(SnapshotError::Failed(format!(
        "QEMU (pid {pid}) has no guest memory of {bytes} bytes among its descriptors"
    )))
}

/// Where the data of `f` (below `len`) is: `(start, end)` ranges, holes skipped.
fn data_ranges(f: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match seek_data(f, pos) {
            Ok(s) => s,
            // No data after `pos`.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(e),
        };
        if start >= len {
            break;
        }
        // Pages are hashed at page offsets, wherever a filesystem says its data starts.
        let start = start - start % PAGE as u64;
        let end = seek_hole(f, start)?.min(len);
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

fn seek_data(f: &File, from: u64) -> std::io::Result<u64> {
    rustix::fs::seek(f, rustix::fs::SeekFrom::Data(from as i64)).map_err(Into::into)
}

fn seek_hole(f: &File, from: u64) -> std::io::Result<u64> {
    rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(from as i64)).map_err(Into::into)
}

/// Every non-zero page of `src` (below `len`), hashed as the module says, handed to `sink`
/// as runs of consecutive non-zero pages `(offset, bytes)`. Returns the bytes of non-zero
/// pages and the checksum; an error carries the bytes handed on before it.
fn pages(
    src: &File,
    len: u64,
    mut sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> Result<FileSum, (std::io::Error, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    for (start, end) in data_ranges(src, len).map_err(|e| (e, 0))? {
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..n], off)
                .map_err(|e| (e, bytes))?;
            // Runs of non-zero pages in this chunk, each handed on in one write.
            let mut run: Option<usize> = None;
            for i in (0..n).step_by(PAGE) {
                let page = &buf[i..(i + PAGE).min(n)];
                // An OR over the page (no early exit) vectorises: one pass either way.
                if page.iter().fold(0u8, |a, &b| a | b) != 0 {
                    h.update((off + i as u64).to_le_bytes());
                    h.update(page);
                    run.get_or_insert(i);
                } else if let Some(r) = run.take() {
                    sink(off + r as u64, &buf[r..i]).map_err(|e| (e, bytes))?;
                    bytes += (i - r) as u64;
                }
            }
            if let Some(r) = run {
                sink(off + r as u64, &buf[r..n]).map_err(|e| (e, bytes))?;
                bytes += (n - r) as u64;
            }
            off += n as u64;
        }
    }
    Ok(FileSum {
        name: MEMORY_FILE.to_string(),
        bytes,
        sha256: hex::encode(h.finalize()),
    })
}

/// Copy the guest memory `memfd` (`len` bytes) to `dir/memory` (created, sparse; fsynced by
/// the caller's commit). A write error comes back with the bytes written before it (ENOSPC:
/// the disk is full).
pub fn save(memfd: &File, len: u64, dir: &Path) -> Result<FileSum, (std::io::Error, u64)> {
    let path = dir.join(MEMORY_FILE);
    let out = File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| (e, 0))?;
    out.set_len(len).map_err(|e| (e, 0))?;
    pages(memfd, len, |off, data| out.write_all_at(data, off))
}

/// Fill the guest memory `memfd` of a QEMU that has not loaded its stream yet with
/// `dir/memory`, checking it against `sum` (the guest has not run: a bad file is refused
/// before it does).
pub fn load(memfd: &File, len: u64, dir: &Path, sum: &FileSum) -> Result<(), SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let f = open_checked(&path, len)?;
    let got = pages(&f, len, |off, data| memfd.write_all_at(data, off))
        .map_err(|(e, _)| SnapshotError::io("cannot load", &path, e))?;
    check(&path, &got, sum)
}

/// Check `dir/memory` against `sum` without loading it.
pub fn verify(dir: &Path, len: u64, sum: &FileSum) -> Result<(), SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let f = open_checked(&path, len)?;
    let got = pages(&f, len, |_, _| Ok(()))
        .map_err(|(e, _)| SnapshotError::io("cannot read", &path, e))?;
    check(&path, &got, sum)
}

fn open_checked(path: &Path, len: u64) -> Result<File, SnapshotError> {
    let f = File::open(path).map_err(|e| SnapshotError::io("cannot open", path, e))?;
    let have = f
        .metadata()
        .map_err(|e| SnapshotError::io("cannot stat", path, e))?
        .len();
    if have != len {
        return Err(SnapshotError::Failed(format!(
            "{} is truncated: it has {have} bytes, the guest's memory is {len}",
            path.display()
        )));
    }
    Ok(f)
}

fn check(path: &Path, got: &FileSum, sum: &FileSum) -> Result<(), SnapshotError> {
    if got.sha256 != sum.sha256 {
        return Err(SnapshotError::Failed(format!(
            "{} is corrupt: its sha256 is {}, the snapshot recorded {}",
            path.display(),
            got.sha256,
            sum.sha256
        )));
    }
    Ok(())
}

/// True when `e` is the disk being full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == ErrorKind::StorageFull
}

#[cfg(test)]
#[path = "qemu_memory_tests.rs"]
mod tests;

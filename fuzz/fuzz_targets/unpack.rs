//! Fuzz target: arbitrary bytes as a rootfs tarball (plain, or gzip'd by the harness) →
//! `host::image::unpack::unpack` into a fresh directory; afterwards nothing may have been
//! written outside it.
//!
//! The first input byte picks the variant: bit 0 gzips the rest, bit 1 first rewrites every
//! tar header's checksum, so mutations of header fields get past the checksum check instead of
//! ending the archive there.
//!
//! Each run gets `root/{archive, image/, outside/sentinel}`: the unpacker writes into `image/`
//! only, so `root` must still hold exactly those three, `outside/` exactly its sentinel,
//! unchanged, and no file in `image/` may be a hard link to anything outside `image/` (every
//! link of every inode found there must be found there).

#![no_main]
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const SENTINEL: &[u8] = b"outside the image: must stay as it is\n";

static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();

/// `(dev, ino)` → links seen, for every non-directory under `dir` (symlinks not followed).
fn links(dir: &Path, seen: &mut HashMap<(u64, u64), (u64, u64)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            links(&p, seen);
        } else {
            seen.entry((m.dev(), m.ino())).or_insert((0, m.nlink())).0 += 1;
        }
    }
}

/// Rewrite the checksum of every header block, walking the archive as a reader does: header,
/// then the data its size field announces, rounded up to whole 512-byte blocks.
fn fix_checksums(tar: &mut [u8]) {
    let mut pos = 0;
    while pos + 512 <= tar.len() {
        let block = &mut tar[pos..pos + 512];
        pos += 512;
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let field = &block[124..136];
        let size = if field[0] & 0x80 != 0 {
            field[4..]
                .iter()
                .fold(0u64, |n, &b| (n << 8) | u64::from(b))
        } else {
            let digits: String = field
                .iter()
                .map(|&b| b as char)
                .skip_while(|c| *c == ' ')
                .take_while(|c| c.is_digit(8))
                .collect();
            u64::from_str_radix(&digits, 8).unwrap_or(0)
        };
        let Some(next) = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(511))
            .map(|s| s / 512 * 512)
            .and_then(|s| pos.checked_add(s))
        else {
            return;
        };
        pos = next;
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let base = BASE.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let root = tempfile::tempdir_in(base).unwrap();
    let archive = root.path().join("archive");
    let image = root.path().join("image");
    let outside = root.path().join("outside");
    std::fs::create_dir(&image).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("sentinel"), SENTINEL).unwrap();
    let mut tar = payload.to_vec();
    if mode & 2 == 2 {
        fix_checksums(&mut tar);
    }
    // The plain tar's length when the unpacker will see exactly it (not when the raw input
    // happens to start with gzip or xz magic): no more file content can come out of it.
    let tar_len = (mode & 1 == 1
        || !(tar.starts_with(&[0x1f, 0x8b]) || tar.starts_with(b"\xfd7zXZ\0")))
    .then_some(tar.len() as u64);
    let bytes = if mode & 1 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    } else {
        tar
    };
    std::fs::write(&archive, &bytes).unwrap();

    if let (Ok(stats), Some(len)) = (fort::host::image::unpack::unpack(&archive, &image), tar_len) {
        assert!(stats.bytes <= len, "{stats:?} from {len} bytes of tar");
    }

    assert_eq!(names(root.path()), ["archive", "image", "outside"]);
    assert_eq!(names(&outside), ["sentinel"]);
    let m = std::fs::symlink_metadata(outside.join("sentinel")).unwrap();
    assert!(m.is_file() && m.nlink() == 1, "sentinel replaced or linked");
    assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), SENTINEL);
    assert_eq!(std::fs::read(&archive).unwrap(), bytes);
    let mut seen = HashMap::new();
    links(&image, &mut seen);
    for ((_, ino), (found, nlink)) in seen {
        assert_eq!(found, nlink, "inode {ino} has links outside the image");
    }
    // Leave nothing behind that would trip the next run (or the disk): modes the archive set
    // may make directories unreadable, which root ignores.
    drop(root);
});

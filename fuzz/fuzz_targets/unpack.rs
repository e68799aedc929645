//! Fuzz target: arbitrary bytes as a rootfs tarball (plain, or gzip'd by the harness) →
//! `host::image::unpack::unpack` into a fresh directory; afterwards nothing may have been
//! written outside it.
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
    let bytes = if mode & 1 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(payload).unwrap();
        gz.finish().unwrap()
    } else {
        payload.to_vec()
    };
    std::fs::write(&archive, &bytes).unwrap();

    let _ = fort::host::image::unpack::unpack(&archive, &image);

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

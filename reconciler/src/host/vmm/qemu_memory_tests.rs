//! Tests of the guest memory file: on real memfds and real sparse files.
#![allow(clippy::unwrap_used)]
use super::*;
use std::os::fd::OwnedFd;

const LEN: u64 = 8 << 20;

/// A memfd named as QEMU names its guest memory, `LEN` long, with a few pages written.
fn guest_memory(name: &str) -> File {
    let fd: OwnedFd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let f = File::from(fd);
    f.set_len(LEN).unwrap();
    // A run of three pages, one lone page, one page written with zeros (allocated, but not
    // data the guest would miss), and the last page.
    f.write_all_at(&[0x11; 3 * PAGE], 64 * PAGE as u64).unwrap();
    f.write_all_at(b"fort", 1000 * PAGE as u64 + 17).unwrap();
    f.write_all_at(&[0u8; PAGE], 1500 * PAGE as u64).unwrap();
    f.write_all_at(&[0x22; PAGE], LEN - PAGE as u64).unwrap();
    f
}

fn read_all(f: &File) -> Vec<u8> {
    let mut v = vec![0u8; LEN as usize];
    f.read_exact_at(&mut v, 0).unwrap();
    v
}

#[test]
fn saves_only_the_pages_with_data_sparse_and_loads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let mem = guest_memory("memory-backend-memfd");
    let sum = save(&mem, LEN, dir.path()).unwrap();
    assert_eq!(sum.name, "memory");
    // 3 + 1 + 1 pages: the zero-filled page is not saved.
    assert_eq!(sum.bytes, 5 * PAGE as u64);
    let path = dir.path().join(MEMORY_FILE);
    let file = File::open(&path).unwrap();
    assert_eq!(file.metadata().unwrap().len(), LEN);
    assert_eq!(
        data_ranges(&file, LEN).unwrap(),
        vec![
            (64 * PAGE as u64, 67 * PAGE as u64),
            (1000 * PAGE as u64, 1001 * PAGE as u64),
            (LEN - PAGE as u64, LEN)
        ],
        "the file is sparse: only its data pages are allocated"
    );
    verify(dir.path(), LEN, &sum).unwrap();

    // Loaded into a fresh QEMU's (empty) memory, it is the guest's memory again.
    let fresh = File::from(
        rustix::fs::memfd_create("memory-backend-memfd", rustix::fs::MemfdFlags::CLOEXEC).unwrap(),
    );
    fresh.set_len(LEN).unwrap();
    load(&fresh, LEN, dir.path(), &sum).unwrap();
    assert!(read_all(&fresh) == read_all(&mem));
}

#[test]
fn the_checksum_does_not_depend_on_holes_or_zero_pages_but_on_every_byte_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let a = save(&guest_memory("a"), LEN, dir.path()).unwrap();
    // The same contents with more zero pages allocated: the same sum.
    let more = guest_memory("b");
    more.write_all_at(&[0u8; 4 * PAGE], 200 * PAGE as u64)
        .unwrap();
    assert_eq!(pages(&more, LEN, |_, _| Ok(())).unwrap(), a);
    // One byte, or one page moved: another sum.
    let byte = guest_memory("c");
    byte.write_all_at(b"F", 1000 * PAGE as u64 + 17).unwrap();
    assert_ne!(pages(&byte, LEN, |_, _| Ok(())).unwrap().sha256, a.sha256);
    let moved = guest_memory("d");
    moved.write_all_at(&[0u8; PAGE], LEN - PAGE as u64).unwrap();
    moved
        .write_all_at(&[0x22; PAGE], LEN - 2 * PAGE as u64)
        .unwrap();
    let m = pages(&moved, LEN, |_, _| Ok(())).unwrap();
    assert_eq!(m.bytes, a.bytes);
    assert_ne!(m.sha256, a.sha256);
}

#[test]
fn a_corrupt_or_truncated_file_is_refused_before_the_guest_memory_is_touched_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let sum = save(&guest_memory("m"), LEN, dir.path()).unwrap();
    let path = dir.path().join(MEMORY_FILE);
    let f = File::options().write(true).open(&path).unwrap();
    f.write_all_at(&[0x12], 65 * PAGE as u64).unwrap();
    let e = verify(dir.path(), LEN, &sum).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{} is corrupt: its sha256 is ", path.display())),
        "{e}"
    );
    assert!(
        e.ends_with(&format!(", the snapshot recorded {}", sum.sha256)),
        "{e}"
    );
    f.set_len(LEN / 2).unwrap();
    assert_eq!(
        verify(dir.path(), LEN, &sum).unwrap_err().to_string(),
        format!(
            "{} is truncated: it has {} bytes, the guest's memory is {LEN}",
            path.display(),
            LEN / 2
        )
    );
}

#[test]
fn a_file_that_is_already_there_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(MEMORY_FILE), b"x").unwrap();
    let (e, n) = save(&guest_memory("m"), LEN, dir.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert_eq!(n, 0);
}

#[test]
fn finds_qemus_guest_memory_by_name_and_size() {
    // A size no other test's memfd has (they run in this process too).
    let len = LEN + 3 * PAGE as u64;
    let mem = File::from(
        rustix::fs::memfd_create("memory-backend-memfd", rustix::fs::MemfdFlags::CLOEXEC).unwrap(),
    );
    mem.set_len(len).unwrap();
    let other = File::from(
        rustix::fs::memfd_create("something-else", rustix::fs::MemfdFlags::CLOEXEC).unwrap(),
    );
    other.set_len(len + PAGE as u64).unwrap();
    let found = find_memfd(std::process::id(), len).unwrap();
    let (a, b) = (found.metadata().unwrap(), mem.metadata().unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    // Another name is not QEMU's guest memory, whatever its size.
    assert_eq!(
        find_memfd(std::process::id(), len + PAGE as u64)
            .unwrap_err()
            .to_string(),
        format!(
            "QEMU (pid {}) has no guest memory of {} bytes among its descriptors",
            std::process::id(),
            len + PAGE as u64
        )
    );
}

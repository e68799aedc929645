//! Verified-file stamps: remember that a cache entry hashed to its recorded sha256, keyed by
//! what any change to the file would alter (inode, size, mtime, ctime), so observing an
//! unchanged entry costs a `stat` instead of re-reading it on every plan (and every `fort
//! watch` pass).
//!
//! Like git's index, a stamp is only written for a file whose ctime is safely in the past:
//! a write in the same timestamp tick as the hashing could otherwise go unnoticed.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::FetchError;

/// Files changed this recently are hashed every time until they settle.
const SETTLE: Duration = Duration::from_secs(2);

fn stamp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".verified");
    PathBuf::from(s)
}

fn fingerprint(m: &std::fs::Metadata) -> String {
    format!(
        "{} {} {}.{:09} {}.{:09}",
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// sha256 of `path`: taken from its stamp when the file is unchanged since it was stamped,
/// else read and hashed (and stamped, best effort, once the file has settled).
pub fn sha256_stamped(path: &Path) -> Result<String, FetchError> {
    let meta = std::fs::metadata(path).map_err(|e| FetchError::io("cannot stat", path, e))?;
    let print = fingerprint(&meta);
    let stamp = stamp_path(path);
    if let Ok(text) = std::fs::read_to_string(&stamp) {
        if let Some((fp, hash)) = text.trim().rsplit_once(' ') {
            if fp == print {
                return Ok(hash.to_string());
            }
        }
    }
    let hash = sha256_file(path)?;
    let ctime = UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec() as u32);
    let settled = SystemTime::now()
        .duration_since(ctime)
        .is_ok_and(|age| age > SETTLE);
    if settled {
        // A stamp that cannot be written (read-only state dir) only costs the next re-hash.
        let _ = std::fs::write(&stamp, format!("{print} {hash}\n"));
    } else {
        let _ = std::fs::remove_file(&stamp);
    }
    Ok(hash)
}

/// Remove the stamp of a file that is being removed or replaced.
pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(stamp_path(path));
}

/// sha256 of a file, streamed in large reads.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(|e| FetchError::io("cannot open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| FetchError::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_stamp_is_trusted_only_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("entry");
        std::fs::write(&f, b"hello").unwrap();
        let real = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        // Fresh files are hashed but not stamped (a write in the same tick could be missed).
        assert_eq!(sha256_stamped(&f).unwrap(), real);
        assert!(!stamp_path(&f).exists());
        std::thread::sleep(SETTLE + Duration::from_millis(200));
        assert_eq!(sha256_stamped(&f).unwrap(), real);
        let text = std::fs::read_to_string(stamp_path(&f)).unwrap();
        assert!(text.ends_with(&format!(" {real}\n")), "{text}");
        // Proof that the stamp is what answers: doctor it, and the doctored hash comes back.
        let fake = "0".repeat(64);
        std::fs::write(stamp_path(&f), text.replace(real, &fake)).unwrap();
        assert_eq!(sha256_stamped(&f).unwrap(), fake);
        // Same size, new content: the fingerprint no longer matches, so the file is re-read.
        std::fs::write(&f, b"jello").unwrap();
        assert_eq!(
            sha256_stamped(&f).unwrap(),
            hex::encode(Sha256::digest(b"jello"))
        );
        forget(&f);
        assert!(!stamp_path(&f).exists());
    }
}

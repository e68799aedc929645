//! A real (busybox-static) rootfs tarball and the static guest agent, for image tests.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn static_agent() -> PathBuf {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/build-agent"
    ))
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A small real rootfs: busybox-static with a few applet links, /etc files owned as on a real
/// system (shadow is root:42 0640) even though nobody chowned anything here.
pub fn busybox_rootfs(dest: &Path) {
    let busybox =
        std::fs::read("/bin/busybox").expect("busybox-static is needed (.ci/run installs it)");
    let mut t = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut add =
        |path: &str, kind: tar::EntryType, mode: u32, gid: u64, link: Option<&str>, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(gid);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            t.append_data(&mut h, path, data).unwrap();
        };
    for d in ["bin", "etc", "sbin", "root"] {
        add(d, tar::EntryType::Directory, 0o755, 0, None, b"");
    }
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        0,
        None,
        &busybox,
    );
    for a in ["sh", "ls", "cat"] {
        add(
            &format!("bin/{a}"),
            tar::EntryType::Symlink,
            0o777,
            0,
            Some("busybox"),
            b"",
        );
    }
    add(
        "sbin/init",
        tar::EntryType::Symlink,
        0o777,
        0,
        Some("../bin/busybox"),
        b"",
    );
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        0,
        None,
        b"root:x:0:0:root:/root:/bin/sh\n",
    );
    add(
        "etc/shadow",
        tar::EntryType::Regular,
        0o640,
        42,
        None,
        b"root:*:19000:0:99999:7:::\n",
    );
    let bytes = t.into_inner().unwrap().finish().unwrap();
    std::fs::write(dest, bytes).unwrap();
}

//! What `fort watch` watches (pure): the manifest's files and every local file it references
//! (overlay sources, `file://` assets), and which directories to subscribe to so editors'
//! rename-into-place saves are seen.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::manifest::{AssetSource, Manifest, OverlayContent, Spec};

/// Files whose change should trigger a pass.
pub fn watched_files(m: &Manifest) -> BTreeSet<PathBuf> {
    let mut out: BTreeSet<PathBuf> = m.files.iter().cloned().collect();
    let mut local = |s: &AssetSource| {
        if let Some(p) = s.url.strip_prefix("file://") {
            out.insert(PathBuf::from(p));
        }
    };
    let mut overlays = Vec::new();
    for r in m.resources.values() {
        match &r.spec {
            Spec::Kernel(k) => {
                local(&k.source);
                if let Some(i) = &k.initrd {
                    local(i);
                }
            }
            Spec::Rootfs(x) => local(&x.source),
            Spec::Firecracker(f) => local(&f.source),
            Spec::Template(t) => {
                for o in t.files.values() {
                    if let OverlayContent::Source { path, .. } = &o.content {
                        overlays.push(path.clone());
                    }
                }
            }
            _ => {}
        }
    }
    out.extend(overlays);
    out
}

/// The directories to subscribe to: the manifest directory (new `*.toml` files count) and the
/// parent of every watched file.
pub fn watched_dirs(manifest_path: &Path, files: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    if manifest_path.is_dir() {
        dirs.insert(manifest_path.to_path_buf());
    }
    for f in files {
        if let Some(d) = f.parent() {
            dirs.insert(d.to_path_buf());
        }
    }
    dirs
}

/// Does a change at `path` matter?
pub fn relevant(path: &Path, manifest_path: &Path, files: &BTreeSet<PathBuf>) -> bool {
    files.contains(path)
        || (manifest_path.is_dir()
            && path.parent() == Some(manifest_path)
            && path.extension().is_some_and(|e| e == "toml"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn manifest_files_local_assets_and_overlay_sources_are_watched() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("tools.sh"), "x").unwrap();
        std::fs::write(d.path().join("vmlinux"), "k").unwrap();
        std::fs::write(
            d.path().join("fort.toml"),
            "[fort]\nversion = 1\n[kernel.k]\nurl = \"vmlinux\"\n[rootfs.r]\nurl = \"https://example.org/r.tar\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n[template.t]\nrootfs = \"r\"\nsize = \"64MiB\"\n[template.t.files]\n\"/a\" = { source = \"tools.sh\" }\n",
        )
        .unwrap();
        let m = crate::manifest::load(d.path()).unwrap();
        let files = watched_files(&m);
        let root = d.path().canonicalize().unwrap_or(d.path().to_path_buf());
        let names: Vec<String> = files
            .iter()
            .map(|p| {
                p.strip_prefix(&root)
                    .or_else(|_| p.strip_prefix(d.path()))
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["fort.toml", "tools.sh", "vmlinux"]);
        let dirs = watched_dirs(d.path(), &files);
        assert_eq!(dirs.len(), 1 + usize::from(root != d.path()));
        assert!(relevant(&d.path().join("extra.toml"), d.path(), &files));
        assert!(!relevant(&d.path().join("notes.txt"), d.path(), &files));
    }
}

//! Manifests from text for the table tests: one file, several files, and a base of the
//! resources most cases refer to.

use std::path::{Path, PathBuf};

use fort::manifest;

pub const H: &str = "[fort]\nversion = 1\n";

/// `body` after the `[fort]` table, as `fort.toml`: the manifest, or the error text.
pub fn load(body: &str) -> Result<manifest::Manifest, String> {
    let text = format!("{H}{body}");
    manifest::load_files(
        &[(PathBuf::from("fort.toml"), text)],
        Path::new("fort.toml"),
    )
    .map_err(|e| e.to_string())
}

/// Several files (name, text) as one manifest directory.
pub fn load_many(files: &[(&str, &str)]) -> Result<manifest::Manifest, String> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    manifest::load_files(&files, Path::new(".")).map_err(|e| e.to_string())
}

/// A manifest with a kernel `k`, rootfs `r`, template `t` and network `lan` around `body`.
pub fn base(body: &str) -> String {
    format!(
        "[kernel.k]\nurl = \"/boot/vmlinux\"\n[rootfs.r]\nurl = \"/srv/r.tar\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n[network.lan]\ncidr = \"10.77.0.0/24\"\n{body}"
    )
}

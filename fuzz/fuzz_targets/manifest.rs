//! Fuzz target: manifest text → `manifest::load_files` (TOML parse, validation, resolution).
//!
//! The input is split on NUL (never valid in TOML) into up to four files of one manifest,
//! merged in order as a directory's `*.toml` would be. Relative overlay sources resolve inside
//! an empty per-process directory, so they fail to read rather than touch the checkout.

#![no_main]
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::OnceLock;

use fort::manifest::{self, ManifestError};
use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    // `load` reads files with `read_to_string`: anything else never reaches validation.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let files: Vec<(PathBuf, String)> = text
        .splitn(4, '\0')
        .enumerate()
        .map(|(i, t)| (dir.join(format!("{i}.toml")), t.to_string()))
        .collect();
    match manifest::load_files(&files, dir) {
        Ok(m) => {
            // What the planner relies on: every reference resolves and the graph is a DAG.
            for r in m.resources.values() {
                for d in &r.deps {
                    assert!(m.resources.contains_key(d), "{} → missing {d}", r.address);
                }
                let _ = r.spec_hash();
            }
            let _ = m.digest();
            fort::graph::Graph::new(
                m.resources
                    .values()
                    .map(|r| (&r.address, r.deps.as_slice())),
            )
            .unwrap();
        }
        Err(ManifestError::Invalid(diags)) => {
            assert!(!diags.is_empty(), "invalid without a diagnostic");
            for d in &diags {
                let Some((_, text)) = files.iter().find(|(p, _)| *p == d.file) else {
                    panic!("diagnostic for a file that is not in the manifest: {d}");
                };
                assert!(d.line >= 1 && d.line <= text.lines().count() + 1, "{d}");
                assert!(d.column >= 1, "{d}");
                let _ = d.to_string();
            }
        }
        Err(e) => panic!("load_files reads no files, yet: {e}"),
    }
});

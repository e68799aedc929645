//! What `fort watch` watches (pure): the manifest's files and every local file it references
//! (overlay sources, `file://` assets), and which directories to subscribe to so editors'
//! rename-into-place saves are seen; what a pass counts against `--max-destroy`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::manifest::{AssetSource, Manifest, OverlayContent, Spec};
use crate::plan::{Change, Op};

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
            Spec::Rootfs(crate::manifest::RootfsSpec::Tarball { source }) => local(source),
            Spec::Rootfs(crate::manifest::RootfsSpec::Image { .. }) => {}
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

/// Crash bookkeeping for one VM in a long-running watch: how often it died, and when it may
/// be restarted again (exponential backoff, capped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Crashes {
    pub count: u32,
    /// Seconds since the watch started before which no restart happens.
    pub not_before: u64,
    /// When it was last restarted (seconds since the watch started).
    pub last_restart: Option<u64>,
}

/// The first restart is immediate; then 2 s, 4 s, 8 s … up to 5 minutes.
pub const BACKOFF_CAP_SECS: u64 = 300;

/// A VM that ran this long since its last restart has recovered: its count starts over.
pub const STABLE_SECS: u64 = 600;

impl Crashes {
    /// Record a crash seen at `now`; returns the delay before the next restart.
    pub fn crashed(&mut self, now: u64) -> u64 {
        if self
            .last_restart
            .is_some_and(|r| now.saturating_sub(r) >= STABLE_SECS)
        {
            self.count = 0;
        }
        self.count += 1;
        let delay = if self.count <= 1 {
            0
        } else {
            (1u64 << (self.count - 1).min(20)).min(BACKOFF_CAP_SECS)
        };
        self.not_before = now + delay;
        delay
    }

    pub fn may_restart(&self, now: u64) -> bool {
        now >= self.not_before
    }
}

/// The changes a watch pass counts against `--max-destroy`, as they are named in its log:
/// every destroy, and every replace that loses data (`-/+ !`, a drive started over). A
/// replaced asset or image is rebuilt from its source and is not counted.
pub fn destroys(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|c| match c.op {
            Op::Destroy => Some(c.address.to_string()),
            Op::Replace if c.data_loss => {
                Some(format!("{} (replaced: its data is lost)", c.address))
            }
            _ => None,
        })
        .collect()
}

/// The recorded resources of sandbox instances (docs/sandboxes.md): each VM made from a
/// `[sandbox.NAME]` (its recorded spec says which) and its root drive. Destroying them when
/// their file goes (expired, destroyed through MCP, removed by hand) is what was asked for,
/// so a watch pass does not count them against `--max-destroy`.
pub fn sandbox_owned(
    recorded: &std::collections::BTreeMap<crate::address::Address, crate::state::Record>,
) -> std::collections::BTreeSet<crate::address::Address> {
    use crate::address::{Address, Kind};
    let mut out = std::collections::BTreeSet::new();
    for (a, r) in recorded {
        // Both the VM and its root drive say so in their spec (the drive's survives a VM
        // whose first boot failed and left no row).
        if r.spec.get("sandbox").is_none_or(|v| v.is_null()) {
            continue;
        }
        out.insert(a.clone());
        if let Some(root) = r.spec.get("root").and_then(|v| v.as_str()) {
            out.insert(Address::new(Kind::Drive, root));
        }
    }
    out
}

/// What the `restart` policy says about a VM found dead. `clean` = the guest powered itself
/// off (its console log ends with the kernel's power-down message).
pub fn policy_allows(restart: crate::manifest::RestartPolicy, clean: bool) -> bool {
    use crate::manifest::RestartPolicy as R;
    match restart {
        R::Never => false,
        R::OnFailure => !clean,
        R::Always => true,
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;
    use crate::manifest::RestartPolicy;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets_after_a_stable_run() {
        let mut c = Crashes::default();
        let delays: Vec<u64> = (0..12).map(|i| c.crashed(i)).collect();
        assert_eq!(delays, [0, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert!(!c.may_restart(11) && c.may_restart(311));
        c.last_restart = Some(1000);
        assert_eq!(
            c.crashed(1000 + STABLE_SECS),
            0,
            "a long healthy run forgives"
        );
        assert_eq!(c.count, 1);
    }

    #[test]
    fn restart_policies() {
        assert!(!policy_allows(RestartPolicy::Never, false));
        assert!(policy_allows(RestartPolicy::OnFailure, false));
        assert!(!policy_allows(RestartPolicy::OnFailure, true));
        assert!(policy_allows(RestartPolicy::Always, true));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod destroy_tests {
    use super::*;

    fn change(addr: &str, op: Op, data_loss: bool) -> Change {
        Change {
            address: addr.parse().unwrap(),
            op,
            reasons: vec![],
            data_loss,
            protected: false,
            details: vec![],
            fields: vec![],
        }
    }

    #[test]
    fn what_counts_as_a_destroy() {
        type Case<'a> = (&'a [(&'a str, Op, bool)], &'a [&'a str]);
        let cases: &[Case] = &[
            (&[], &[]),
            (&[("kernel.k", Op::Create, false)], &[]),
            (&[("kernel.k", Op::Update, false)], &[]),
            (&[("vm.a", Op::Restart, false)], &[]),
            (&[("kernel.k", Op::Replace, false)], &[]),
            (&[("template.t", Op::Replace, false)], &[]),
            (&[("rootfs.r", Op::Destroy, false)], &["rootfs.r"]),
            (&[("drive.d", Op::Destroy, true)], &["drive.d"]),
            (
                &[("drive.d", Op::Replace, true)],
                &["drive.d (replaced: its data is lost)"],
            ),
            (
                &[
                    ("kernel.k", Op::Replace, false),
                    ("drive.d", Op::Replace, true),
                    ("vm.a", Op::Destroy, false),
                    ("vm.b", Op::Create, false),
                ],
                &["drive.d (replaced: its data is lost)", "vm.a"],
            ),
        ];
        for (changes, want) in cases {
            let changes: Vec<Change> = changes
                .iter()
                .map(|(a, op, loss)| change(a, *op, *loss))
                .collect();
            assert_eq!(destroys(&changes), *want, "{changes:?}");
        }
    }
}

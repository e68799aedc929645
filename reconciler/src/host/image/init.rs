//! Which init an image runs, for `init = "distro"`: `/sbin/init` resolved through the image's
//! own symlinks (never the host's), classified as systemd, OpenRC or busybox init — on an
//! unpacked tree (apply, right after unpacking) or on a cached tarball's index (plan).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The inits fort knows how to run its agent under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    Systemd,
    Openrc,
    Busybox,
}

impl InitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InitKind::Systemd => "systemd",
            InitKind::Openrc => "openrc",
            InitKind::Busybox => "busybox",
        }
    }
}

/// What the image's `/sbin/init` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub kind: InitKind,
    /// The file `/sbin/init` resolves to inside the image, e.g. `/usr/lib/systemd/systemd`.
    pub target: String,
}

impl std::fmt::Display for Detected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.target == "/sbin/init" {
            write!(f, "{}", self.kind.as_str())
        } else {
            write!(f, "{} (/sbin/init → {})", self.kind.as_str(), self.target)
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitError {
    #[error("init = \"distro\" but the image has no init: /sbin/init {why} (use init = \"agent\" to make fort's guest agent PID 1)")]
    NoInit { why: String },
    #[error("init = \"distro\" but the image's /sbin/init is {target}, which is not systemd, OpenRC or busybox init (use init = \"agent\")")]
    Unknown { target: String },
    #[error("cannot read archive {} to find its init: {why}", archive.display())]
    Archive { archive: PathBuf, why: String },
}

/// One path of an image tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File,
    Link(String),
}

/// A read-only view of an image tree by absolute, normalized path (`/sbin/init`).
pub trait Tree {
    fn node(&self, path: &str) -> Option<Node>;
}

/// An unpacked tree on the host. Paths are looked up component by component by `resolve`, so
/// a symlink inside the tree is never followed by the host.
pub struct DirTree<'a>(pub &'a Path);

impl Tree for DirTree<'_> {
    fn node(&self, path: &str) -> Option<Node> {
        let p = self.0.join(path.trim_start_matches('/'));
        let m = std::fs::symlink_metadata(&p).ok()?;
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(&p).ok()?;
            Some(Node::Link(t.to_string_lossy().into_owned()))
        } else if m.is_dir() {
            Some(Node::Dir)
        } else {
            Some(Node::File)
        }
    }
}

/// The entries of an archive, without contents (what the plan reads of a cached tarball).
#[derive(Debug, Default)]
pub struct IndexTree(pub BTreeMap<String, Node>);

impl Tree for IndexTree {
    fn node(&self, path: &str) -> Option<Node> {
        self.0.get(path).cloned()
    }
}

impl IndexTree {
    /// Add an entry; its parent directories are implied (tarballs may leave them out). A later
    /// entry for the same path wins, as when unpacking.
    pub fn insert(&mut self, path: &str, node: Node) {
        let p = normalize(path);
        let comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        let Some((_, parents)) = comps.split_last() else {
            return; // the root itself
        };
        let mut at = String::new();
        for c in parents {
            at = format!("{at}/{c}");
            self.0.entry(at.clone()).or_insert(Node::Dir);
        }
        self.0.insert(p, node);
    }
}

/// Read the entry list of a (possibly compressed) tarball.
pub fn index_archive(archive: &Path) -> Result<IndexTree, InitError> {
    let reader = super::unpack::open(archive).map_err(|e| InitError::Archive {
        archive: archive.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut tree = IndexTree::default();
    index_into(&mut tree, archive, reader)?;
    Ok(tree)
}

/// The entry list of an OCI image's layers (bottom first, each a tar stream), with their
/// whiteouts applied: `.wh.NAME` hides NAME of the layers below, `.wh..wh..opq` everything
/// below in its directory.
pub fn index_layers(
    layers: impl IntoIterator<Item = (std::path::PathBuf, Box<dyn std::io::Read>)>,
) -> Result<IndexTree, InitError> {
    let mut tree = IndexTree::default();
    for (path, reader) in layers {
        let mut layer = IndexTree::default();
        index_into(&mut layer, &path, reader)?;
        // Whiteouts hide what the layers below have, never this layer's own entries: all of
        // them first, then this layer's entries on top.
        let (whiteouts, entries): (Vec<_>, Vec<_>) = layer.0.into_iter().partition(|(p, _)| {
            p.rsplit_once('/')
                .is_some_and(|(_, name)| name.starts_with(".wh."))
        });
        for (p, _) in whiteouts {
            let (dir, name) = p.rsplit_once('/').unwrap_or(("", p.as_str()));
            if name == ".wh..wh..opq" {
                let prefix = format!("{dir}/");
                tree.0.retain(|k, _| !k.starts_with(&prefix));
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                let gone = format!("{dir}/{hidden}");
                let under = format!("{gone}/");
                tree.0.retain(|k, _| k != &gone && !k.starts_with(&under));
            }
        }
        for (p, node) in entries {
            // A directory this layer only implies (its entries' parents) leaves a lower
            // layer's entry there alone (e.g. merged /usr's `/sbin -> usr/sbin`).
            match node {
                Node::Dir => {
                    tree.0.entry(p).or_insert(Node::Dir);
                }
                n => {
                    tree.0.insert(p, n);
                }
            }
        }
    }
    Ok(tree)
}

/// Add the entries of the tar stream `reader` (read from `archive`) to `tree`.
fn index_into(
    tree: &mut IndexTree,
    archive: &Path,
    reader: Box<dyn std::io::Read>,
) -> Result<(), InitError> {
    let fail = |why: String| InitError::Archive {
        archive: archive.to_path_buf(),
        why,
    };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(|e| fail(e.to_string()))? {
        let entry = entry.map_err(|e| fail(e.to_string()))?;
        let path = entry.path().map_err(|e| fail(e.to_string()))?;
        let path = path.to_string_lossy().into_owned();
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => Node::Dir,
            tar::EntryType::Symlink => match entry.link_name() {
                Ok(Some(t)) => Node::Link(t.to_string_lossy().into_owned()),
                _ => Node::File,
            },
            _ => Node::File,
        };
        tree.insert(&path, node);
    }
    Ok(())
}

/// An archive path (`./sbin/init`, `sbin/init`) as an absolute path with `.` and `..` folded;
/// `..` stops at the root, as the kernel does inside the VM.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Follow `path` through the tree's symlinks (at every component, up to 40 links as the kernel
/// does) to what it names: Ok(final path) of a non-directory, or Err(why) in words.
pub fn resolve(tree: &dyn Tree, path: &str) -> Result<String, String> {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .rev()
        .collect();
    let mut at = String::new();
    let mut hops = 0;
    let mut linked = false;
    while let Some(c) = pending.pop() {
        let next = match c.as_str() {
            "." => continue,
            ".." => {
                at = at
                    .rsplit_once('/')
                    .map_or(String::new(), |x| x.0.to_string());
                continue;
            }
            c => format!("{at}/{c}"),
        };
        match tree.node(&next) {
            None if linked => {
                return Err(format!(
                    "is a dangling symlink (nothing at {next} in the image)"
                ))
            }
            None => return Err("does not exist".to_string()),
            Some(Node::Link(t)) => {
                hops += 1;
                if hops > 40 {
                    return Err("is a symlink loop".to_string());
                }
                linked = true;
                if t.starts_with('/') {
                    at = String::new();
                }
                pending.extend(
                    t.split('/')
                        .filter(|c| !c.is_empty())
                        .rev()
                        .map(String::from),
                );
            }
            Some(Node::Dir) if pending.is_empty() => return Err("is a directory".to_string()),
            Some(Node::File) if !pending.is_empty() => {
                return Err(format!("does not exist ({next} is a file)"))
            }
            Some(_) => at = next,
        }
    }
    if at.is_empty() {
        return Err("is the root directory".to_string());
    }
    Ok(at)
}

/// What the image's `/sbin/init` is. systemd: it resolves to a file named `systemd`. OpenRC:
/// `openrc-init`, or a busybox/sysvinit init in an image that has `/sbin/openrc` (Alpine runs
/// OpenRC from busybox init's inittab). busybox: it resolves to `busybox`.
pub fn detect(tree: &dyn Tree) -> Result<Detected, InitError> {
    let target = resolve(tree, "/sbin/init").map_err(|why| InitError::NoInit { why })?;
    let name = target.rsplit('/').next().unwrap_or_default();
    let has_openrc = resolve(tree, "/sbin/openrc").is_ok();
    let kind = match name {
        "systemd" => InitKind::Systemd,
        "openrc-init" => InitKind::Openrc,
        "busybox" | "init" if has_openrc => InitKind::Openrc,
        "busybox" => InitKind::Busybox,
        _ => return Err(InitError::Unknown { target }),
    };
    Ok(Detected { kind, target })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Case<'a> = (
        &'a str,
        Vec<(&'a str, Option<&'a str>)>,
        Result<&'a str, String>,
    );

    fn tree(entries: &[(&str, Option<&str>)]) -> IndexTree {
        let mut t = IndexTree::default();
        for (p, link) in entries {
            let node = match link {
                Some("/") => Node::Dir,
                Some(l) => Node::Link(l.to_string()),
                None => Node::File,
            };
            t.insert(p, node);
        }
        t
    }

    #[test]
    fn detection_follows_the_image_links() {
        let debian = [
            ("./lib", Some("usr/lib")),
            ("./sbin", Some("usr/sbin")),
            ("./usr/sbin/init", Some("/lib/systemd/systemd")),
            ("./usr/lib/systemd/systemd", None),
        ];
        let cases: Vec<Case> = vec![
            ("debian merged /usr", debian.to_vec(), Ok("systemd (/sbin/init → /usr/lib/systemd/systemd)")),
            ("plain systemd", vec![("sbin/init", Some("../lib/systemd/systemd")), ("lib/systemd/systemd", None)],
             Ok("systemd (/sbin/init → /lib/systemd/systemd)")),
            ("busybox", vec![("bin/busybox", None), ("sbin/init", Some("../bin/busybox"))],
             Ok("busybox (/sbin/init → /bin/busybox)")),
            ("alpine: busybox init running openrc", vec![("bin/busybox", None), ("sbin/init", Some("/bin/busybox")), ("sbin/openrc", None)],
             Ok("openrc (/sbin/init → /bin/busybox)")),
            ("openrc-init", vec![("sbin/openrc-init", None), ("sbin/init", Some("openrc-init"))],
             Ok("openrc (/sbin/init → /sbin/openrc-init)")),
            ("sysvinit + openrc", vec![("sbin/init", None), ("sbin/openrc", None)], Ok("openrc")),
            ("no init", vec![("etc/hostname", None)],
             Err("init = \"distro\" but the image has no init: /sbin/init does not exist (use init = \"agent\" to make fort's guest agent PID 1)".into())),
            ("dangling", vec![("sbin/init", Some("/lib/systemd/systemd"))],
             Err("init = \"distro\" but the image has no init: /sbin/init is a dangling symlink (nothing at /lib in the image) (use init = \"agent\" to make fort's guest agent PID 1)".into())),
            ("loop", vec![("sbin/init", Some("init2")), ("sbin/init2", Some("init"))],
             Err("init = \"distro\" but the image has no init: /sbin/init is a symlink loop (use init = \"agent\" to make fort's guest agent PID 1)".into())),
            ("a directory", vec![("sbin/init/x", None)],
             Err("init = \"distro\" but the image has no init: /sbin/init is a directory (use init = \"agent\" to make fort's guest agent PID 1)".into())),
            // `..` stops at the image's root: it never reaches the host's /sbin/init.
            ("escape", vec![("sbin/init", Some("../../../../bin/busybox")), ("bin/busybox", None)],
             Ok("busybox (/sbin/init → /bin/busybox)")),
            ("sysvinit alone", vec![("sbin/init", None)],
             Err("init = \"distro\" but the image's /sbin/init is /sbin/init, which is not systemd, OpenRC or busybox init (use init = \"agent\")".into())),
            ("runit", vec![("sbin/init", Some("runit-init")), ("sbin/runit-init", None)],
             Err("init = \"distro\" but the image's /sbin/init is /sbin/runit-init, which is not systemd, OpenRC or busybox init (use init = \"agent\")".into())),
        ];
        for (name, entries, want) in cases {
            let got = detect(&tree(&entries))
                .map(|d| d.to_string())
                .map_err(|e| e.to_string());
            assert_eq!(got, want.map(str::to_string), "{name}");
        }
    }

    #[test]
    fn an_unpacked_tree_is_read_without_following_its_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        std::fs::write(root.join("usr/lib/systemd/systemd"), b"").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        std::os::unix::fs::symlink("/lib/systemd/systemd", root.join("sbin/init")).unwrap();
        assert_eq!(
            detect(&DirTree(root)).map(|d| d.to_string()),
            Ok("systemd (/sbin/init → /usr/lib/systemd/systemd)".to_string())
        );
    }

    fn layer(entries: &[(&str, Option<&str>)]) -> (std::path::PathBuf, Box<dyn std::io::Read>) {
        let mut b = tar::Builder::new(Vec::new());
        for (path, link) in entries {
            let mut h = tar::Header::new_gnu();
            match link {
                Some(t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, t).unwrap();
                }
                None if path.ends_with('/') => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
                None => {
                    h.set_size(0);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        let bytes = b.into_inner().unwrap();
        ("layer.tar".into(), Box::new(std::io::Cursor::new(bytes)))
    }

    #[test]
    fn layers_index_with_their_whiteouts() {
        let t = index_layers(vec![
            layer(&[
                ("sbin", Some("usr/sbin")),
                ("usr/sbin/init", Some("../lib/systemd/systemd")),
                ("usr/lib/systemd/systemd", None),
                ("etc/old/a", None),
                ("etc/gone", None),
            ]),
            layer(&[
                ("etc/.wh.gone", None),
                ("etc/old/.wh..wh..opq", None),
                ("etc/old/-first", None),
                ("usr/sbin/extra", None),
            ]),
        ])
        .unwrap();
        assert_eq!(t.node("/etc/gone"), None);
        assert_eq!(t.node("/etc/old/a"), None);
        assert_eq!(t.node("/etc/old/-first"), Some(Node::File));
        assert_eq!(t.node("/etc/.wh.gone"), None);
        // The upper layer only implies /usr/sbin's parents: the lower /sbin link stays.
        assert_eq!(t.node("/sbin"), Some(Node::Link("usr/sbin".into())));
        assert_eq!(
            detect(&t).unwrap().to_string(),
            "systemd (/sbin/init → /usr/lib/systemd/systemd)"
        );
        // A later layer deleting the init leaves none.
        let none = index_layers(vec![
            layer(&[("sbin/init", None)]),
            layer(&[("sbin/.wh.init", None)]),
        ])
        .unwrap();
        assert_eq!(
            detect(&none).unwrap_err().to_string(),
            "init = \"distro\" but the image has no init: /sbin/init does not exist (use init = \"agent\" to make fort's guest agent PID 1)"
        );
    }
}

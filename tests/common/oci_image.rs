//! OCI images built in tests: layers (tar, with owners, xattrs, symlinks and hostile raw
//! paths), configs, manifests and OCI layouts; and the helpers the OCI tests share.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", super::fort::sha256_hex(data))
}

/// An image: layers (bytes as stored, with their media types) and a config.
#[derive(Clone)]
pub struct Image {
    pub layers: Vec<(Vec<u8>, String)>,
    pub config: Value,
}

impl Image {
    pub fn new(layers: Vec<(Vec<u8>, &str)>, run_config: Value) -> Image {
        let diff_ids: Vec<String> = layers.iter().map(|(b, _)| digest(b)).collect();
        Image {
            layers: layers
                .into_iter()
                .map(|(b, m)| (b, m.to_string()))
                .collect(),
            config: json!({
                "architecture": "amd64", "os": "linux", "config": run_config,
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }),
        }
    }

    pub fn config_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.config).unwrap()
    }

    pub fn blobs(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self.layers.iter().map(|(b, _)| b.clone()).collect();
        v.push(self.config_bytes());
        v
    }

    pub fn manifest(&self) -> Vec<u8> {
        let c = self.config_bytes();
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|(b, m)| json!({"mediaType": m, "digest": digest(b), "size": b.len()}))
            .collect();
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(&c), "size": c.len()},
            "layers": layers,
        }))
        .unwrap()
    }

    /// Write an OCI image layout at `dir` with this image tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let m = self.manifest();
        for b in self.blobs().iter().chain(std::iter::once(&m)) {
            std::fs::write(blobs.join(digest(b).trim_start_matches("sha256:")), b).unwrap();
        }
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": digest(&m), "size": m.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }]});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// One entry of a test layer.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    /// A file with an owner, a mode and an extended attribute (`user.fort`).
    Owned(&'a str, &'a [u8], u64, u32, &'a str),
    Symlink(&'a str, &'a str),
    /// Raw path bytes, written without the tar crate's checks (hostile layers).
    Raw(&'a [u8], &'a [u8]),
}

/// A layer tarball (uncompressed).
pub fn tar_layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_cksum();
                t.append_data(&mut h, p, &b""[..]).unwrap();
            }
            Entry::File(p, d) => {
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                h.set_cksum();
                t.append_data(&mut h, p, *d).unwrap();
            }
            Entry::Owned(p, d, uid, mode, xattr) => {
                // A PAX header carrying the xattr (SCHILY.xattr.NAME=VALUE).
                let rec = |k: &str, v: &str| {
                    let body = format!(" {k}={v}\n");
                    let mut n = body.len() + 1;
                    while format!("{n}{body}").len() != n {
                        n += 1;
                    }
                    format!("{n}{body}")
                };
                let pax = rec("SCHILY.xattr.user.fort", xattr);
                let mut x = tar::Header::new_ustar();
                x.set_entry_type(tar::EntryType::XHeader);
                x.set_path("PaxHeader").unwrap();
                x.set_size(pax.len() as u64);
                x.set_mode(0o644);
                x.set_cksum();
                t.append(&x, pax.as_bytes()).unwrap();
                h.set_uid(*uid);
                h.set_gid(*uid);
                h.set_mode(*mode);
                h.set_size(d.len() as u64);
                h.set_cksum();
                t.append_data(&mut h, p, *d).unwrap();
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                h.set_cksum();
                t.append_link(&mut h, p, target).unwrap();
            }
            Entry::Raw(path, d) => {
                h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path);
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                h.set_cksum();
                t.append(&h, *d).unwrap();
            }
        }
    }
    t.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `debugfs -R CMD IMAGE`'s output.
pub fn debugfs(image: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(image)
        .output()
        .expect("run debugfs");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    for l in String::from_utf8_lossy(&out.stderr).lines() {
        // Its version banner.
        if !l.starts_with("debugfs ") {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

// What the OCI tests share.

/// `[rootfs.app]` from `image` (plus `extra` keys) and `[template.t]` from it, without the agent.
pub fn rootfs_and_template(image: &str, extra: &str) -> String {
    format!(
        "[rootfs.app]\nimage = \"{image}\"\n{extra}\n\n[template.t]\nrootfs = \"app\"\nsize = \"32MiB\"\nguest_agent = false\n"
    )
}

/// Run fort without any `$FORT_REGISTRY_AUTH` of the caller's.
pub fn run(ws: &super::fort::Workspace, args: &[&str]) -> super::fort::Run {
    let out = ws
        .command(args)
        .env_remove("FORT_REGISTRY_AUTH")
        .output()
        .unwrap();
    super::fort::Run::from(out)
}

/// The image file `template.NAME` recorded.
pub fn template_image(ws: &super::fort::Workspace, name: &str) -> PathBuf {
    let show: serde_json::Value = serde_json::from_str(
        &run(
            ws,
            &["state", "show", &format!("template.{name}"), "--json"],
        )
        .ok()
        .stdout,
    )
    .unwrap();
    PathBuf::from(show["outputs"]["image"].as_str().unwrap())
}

/// A one-layer (gzip) image holding `path` with `content`.
pub fn one_file_image(path: &str, content: &str) -> Image {
    Image::new(
        vec![(
            gzip(&tar_layer(&[
                Entry::Dir("etc"),
                Entry::File(path, content.as_bytes()),
            ])),
            LAYER_GZIP,
        )],
        json!({}),
    )
}

/// stdout and stderr together.
pub fn both(r: &super::fort::Run) -> String {
    format!("{}{}", r.stdout, r.stderr)
}

//! `template.*`: an ext4 image built from a rootfs tarball, overlay files and (by default)
//! fort's guest agent as `/sbin/init` — or, with `init = "distro"`, as a service of the image's
//! own init. Images live in `state_dir/images/<key>.ext4`, keyed by a hash of every input, so
//! an unchanged template is never rebuilt.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::asset::{self, CachedFile};
use super::rootfs::RootfsOutputs;
use super::template_rootfs;
use super::{Ctx, ResourceError, ResourceKind};
use crate::address::{Address, Kind};
use crate::host::image::build;
use crate::host::image::init::{self as image_init, DirTree};
use crate::host::image::service::{self, Install};
use crate::manifest::{InitMode, OverlayContent, Resource, Spec, TemplateSpec};
use crate::plan::{Effect, Observation};
use crate::state::Record;

pub struct Template;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateOutputs {
    pub image: PathBuf,
    pub key: String,
    pub size: u64,
    /// `init = "distro"`: the image's init as detected, e.g. "systemd (/sbin/init → /lib/systemd/systemd)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

#[async_trait]
impl ResourceKind for Template {
    fn kind(&self) -> Kind {
        Kind::Template
    }

    fn field_effect(&self, _field: &str) -> Effect {
        // A changed template builds a new image beside the old one; drives keep theirs.
        Effect::Update
    }

    async fn observe(&self, _ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError> {
        let out: TemplateOutputs = asset::outputs(&record.address, &record.outputs)?;
        Ok(asset::observe_sized("image", &out.image, out.size))
    }

    async fn apply(
        &self,
        ctx: &Ctx,
        desired: &Resource,
        recorded: Option<&Record>,
    ) -> Result<serde_json::Value, ResourceError> {
        let Spec::Template(spec) = &desired.spec else {
            return Err(ResourceError::Check(format!(
                "{} has no template spec",
                desired.address
            )));
        };
        let rootfs_addr = Address::new(Kind::Rootfs, &spec.rootfs);
        let rootfs = ctx.applied(&rootfs_addr)?;
        let rootfs: RootfsOutputs = asset::outputs(&rootfs_addr, &rootfs.outputs)?;
        let agent = if spec.guest_agent {
            Some(find_agent()?)
        } else {
            None
        };
        let key = image_key(spec, &rootfs, agent.as_ref().map(|a| a.1.as_str()));
        let images = ctx.state_dir.join("images");
        let image = images.join(format!("{key}.ext4"));
        let previous =
            recorded.and_then(|r| asset::outputs::<TemplateOutputs>(&r.address, &r.outputs).ok());
        let built = std::fs::metadata(&image)
            .ok()
            .map(|m| m.len())
            .filter(|len| spec.size.fixed().is_none_or(|s| s == *len));
        // An image that is already there was detected when it was built (by this template or
        // another with the same inputs): say its init only if the record knows it.
        let known_init = previous
            .as_ref()
            .filter(|p| p.image == image)
            .and_then(|p| p.init.clone());
        let reuse = built.filter(|_| spec.init == InitMode::Agent || known_init.is_some());
        // Two templates with the same inputs (say one `warm` and one not) share one image key
        // and are applied in parallel: one builds, the other waits and takes its result, as
        // both would otherwise unpack into the same `images/tmp/KEY`.
        let slot = build_slot(&key);
        let mut done = slot.lock().await;
        let finished = done
            .clone()
            .filter(|(len, _)| std::fs::metadata(&image).is_ok_and(|m| m.len() == *len));
        let (size, init) = if let Some(len) = reuse {
            (len, known_init)
        } else if let Some(result) = finished {
            result
        } else {
            let (spec, images, image, rootfs, agent) = (
                spec.clone(),
                images.clone(),
                image.clone(),
                rootfs.clone(),
                agent.map(|a| a.0),
            );
            let key2 = key.clone();
            tokio::task::spawn_blocking(move || {
                build_image(&spec, &images, &image, &key2, &rootfs, agent.as_deref())
            })
            .await
            .map_err(|e| ResourceError::Check(format!("image build task failed: {e}")))??
        };
        *done = Some((size, init.clone()));
        drop(done);
        if let Some(old) = previous {
            if old.image != image {
                release(ctx, &desired.address, &old.image)?;
            }
        }
        serde_json::to_value(TemplateOutputs {
            image,
            key,
            size,
            init,
        })
        .map_err(|e| ResourceError::Check(e.to_string()))
    }

    async fn destroy(&self, ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError> {
        let out: TemplateOutputs = asset::outputs(&recorded.address, &recorded.outputs)?;
        // Its warm snapshots are of VMs no template makes any more.
        crate::host::warm::remove_template(&ctx.state_dir, &recorded.address.name);
        release(ctx, &recorded.address, &out.image)
    }
}

/// Remove an image no other recorded resource (another template, a drive) points at.
fn release(ctx: &Ctx, owner: &Address, image: &Path) -> Result<(), ResourceError> {
    let file = CachedFile {
        path: image.to_path_buf(),
        fetched_sha256: String::new(),
        content_sha256: String::new(),
        size: 0,
    };
    asset::release(ctx, owner, &[file])
}

/// Every input of the image, hashed: rootfs content (an image's digest), size, overlays, the
/// agent's bytes, and what only some templates have (the init mode when "distro",
/// `run_image_cmd` when true), so images built before those existed keep their key.
fn image_key(spec: &TemplateSpec, rootfs: &RootfsOutputs, agent_sha: Option<&str>) -> String {
    let mut inputs = serde_json::json!({
        "format": 1,
        "rootfs": template_rootfs::key_input(rootfs),
        "size": spec.size,
        "files": spec.files,
        "agent": agent_sha,
    });
    if spec.init == InitMode::Distro {
        inputs["init"] = serde_json::json!("distro");
    }
    if spec.run_image_cmd {
        inputs["run_image_cmd"] = true.into();
    }
    hex::encode(Sha256::digest(inputs.to_string().as_bytes()))[..32].to_string()
}

/// What a build of an image key in this process produced, behind a lock the builds of that
/// key take in turn (other fort processes are kept out by the state lock).
type BuildSlot = std::sync::Arc<tokio::sync::Mutex<Option<(u64, Option<String>)>>>;

fn build_slot(key: &str) -> BuildSlot {
    static SLOTS: std::sync::Mutex<BTreeMap<String, BuildSlot>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut slots = SLOTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    slots.entry(key.to_string()).or_default().clone()
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> ResourceError + 'p {
    move |e| ResourceError::io(what, path, e)
}

fn build_image(
    spec: &TemplateSpec,
    images: &Path,
    image: &Path,
    key: &str,
    rootfs: &RootfsOutputs,
    agent: Option<&Path>,
) -> Result<(u64, Option<String>), ResourceError> {
    let work = images.join("tmp").join(key);
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io("cannot clear", &work))?;
    }
    let root = work.join("root");
    std::fs::create_dir_all(&root).map_err(io("cannot create", &root))?;
    let result = (|| {
        template_rootfs::unpack_rootfs(spec, rootfs, &root)?;
        crate::crash::hit(crate::crash::Point::TemplateUnpacked);
        // Detected before anything is written into the tree: an image without an init fails
        // here with the same words `fort plan` uses when the rootfs is already cached.
        let init = match (spec.init, agent) {
            (InitMode::Distro, Some(_)) => Some(
                image_init::detect(&DirTree(&root))
                    .map_err(|e| ResourceError::Check(e.to_string()))?,
            ),
            _ => None,
        };
        for (path, overlay) in &spec.files {
            let dst = in_image(&root, path)?;
            let bytes = match &overlay.content {
                OverlayContent::Inline(t) => t.clone().into_bytes(),
                OverlayContent::Source { path: src, sha256 } => {
                    let b = std::fs::read(src).map_err(io("cannot read overlay source", src))?;
                    if hex::encode(Sha256::digest(&b)) != *sha256 {
                        return Err(ResourceError::Check(format!(
                            "overlay source {} changed since the manifest was read; plan again",
                            src.display()
                        )));
                    }
                    b
                }
            };
            write_file(&dst, &bytes, overlay.mode)?;
        }
        if let Some(agent) = agent {
            let bytes = std::fs::read(agent).map_err(io("cannot read", agent))?;
            match &init {
                None => write_file(&in_image(&root, "/sbin/init")?, &bytes, 0o755)?,
                Some(d) => install_service(&root, d.kind, &bytes)?,
            }
        }
        let part = images.join("tmp").join(format!("{key}.ext4.part"));
        let _ = std::fs::remove_file(&part);
        let size = build::mke2fs(&root, &part, spec.size.fixed(), || {
            crate::crash::hit(crate::crash::Point::TemplateMke2fs)
        })
        .map_err(|e| ResourceError::Check(crate::resources::error_chain(&e)))?;
        std::fs::rename(&part, image).map_err(io("cannot install", image))?;
        Ok((size, init.map(|d| d.to_string())))
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// `init = "distro"`: the agent at [`service::AGENT_PATH`] plus its service files for `kind`.
fn install_service(
    root: &Path,
    kind: image_init::InitKind,
    agent: &[u8],
) -> Result<(), ResourceError> {
    // Every path is resolved inside the image: its own symlinks are followed as the guest
    // would, never onto the host.
    let inside = |p: &str| in_image(root, p);
    let read = |p: &str| {
        let path = inside(p).ok()?;
        std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|_| std::fs::read_to_string(&path).ok())
    };
    let existing = service::Existing {
        inittab: read("/etc/inittab"),
        interfaces: read("/etc/network/interfaces"),
    };
    write_file(&inside(service::AGENT_PATH)?, agent, 0o755)?;
    for i in service::installs(kind, &existing) {
        match i {
            Install::File { path, text, mode } => {
                write_file(&inside(&path)?, text.as_bytes(), mode)?
            }
            Install::Symlink { path, target } => {
                let dst = inside(&path)?;
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
                }
                if std::fs::symlink_metadata(&dst).is_ok() {
                    std::fs::remove_file(&dst).map_err(io("cannot replace", &dst))?;
                }
                std::os::unix::fs::symlink(&target, &dst).map_err(io("cannot link", &dst))?;
            }
            Install::Dir { path, mode } => {
                let dst = inside(&path)?;
                if std::fs::symlink_metadata(&dst).is_err() {
                    std::fs::create_dir_all(&dst).map_err(io("cannot create", &dst))?;
                    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
                        .map_err(io("cannot chmod", &dst))?;
                }
            }
        }
    }
    Ok(())
}

/// Where the image's `path` is under `root`, its own symlinks resolved inside it (never out).
pub(super) fn in_image(root: &Path, path: &str) -> Result<PathBuf, ResourceError> {
    crate::host::image::unpack::resolve_in_root(root, Path::new(path))
        .map_err(|why| ResourceError::Check(format!("cannot write into the image: {why}")))
}

/// Write a file owned by root with `mode`, replacing whatever (e.g. a symlink) is there.
pub(super) fn write_file(dst: &Path, bytes: &[u8], mode: u32) -> Result<(), ResourceError> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
    }
    if std::fs::symlink_metadata(dst).is_ok() {
        std::fs::remove_file(dst).map_err(io("cannot replace", dst))?;
    }
    std::fs::write(dst, bytes).map_err(io("cannot write", dst))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
        .map_err(io("cannot chmod", dst))?;
    std::os::unix::fs::lchown(dst, Some(0), Some(0)).map_err(io("cannot chown", dst))
}

/// The guest agent binary and its sha256: `FORT_GUEST_AGENT`, else `fort-guest-agent` next to
/// the running `fort`. It must be a static x86_64 executable (it runs as PID 1 in any rootfs).
pub fn find_agent() -> Result<(PathBuf, String), ResourceError> {
    let path = match std::env::var_os("FORT_GUEST_AGENT") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("fort-guest-agent")))
            .unwrap_or_else(|| PathBuf::from("fort-guest-agent")),
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        ResourceError::Check(format!(
            "cannot read the guest agent {} ({e}): install fort-guest-agent next to fort (scripts/build-agent builds it) or set FORT_GUEST_AGENT",
            path.display()
        ))
    })?;
    check_static_x86_64(&bytes)
        .map_err(|why| ResourceError::Check(format!("the guest agent {} {why}", path.display())))?;
    Ok((path, hex::encode(Sha256::digest(&bytes))))
}

/// ELF64, x86_64, no `PT_INTERP` program header (no dynamic loader needed).
pub fn check_static_x86_64(elf: &[u8]) -> Result<(), &'static str> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return Err("is not a 64-bit ELF executable");
    }
    if u16::from_le_bytes([elf[0x12], elf[0x13]]) != 0x3e {
        return Err("is not an x86_64 executable");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = elf
        .get(0x20..0x28)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes) as usize;
    let (size, num) = (u16_at(0x36), u16_at(0x38));
    for i in 0..num {
        let o = phoff + i * size;
        let Some(t) = elf.get(o..o + 4) else {
            return Err("has a truncated program header table");
        };
        if u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 3 {
            return Err("is dynamically linked (it needs a loader the guest may not have): build it static with scripts/build-agent");
        }
    }
    Ok(())
}

/// Remove images in `state_dir/images` that no recorded resource (template or drive) points
/// at any more — e.g. the image of an old template version once its last drive is gone.
pub fn collect_garbage(ctx: &Ctx) -> Result<Vec<PathBuf>, ResourceError> {
    let dir = ctx.state_dir.join("images");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(vec![]);
    };
    let records = ctx.with_store(crate::state::StateStore::resources)?;
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "ext4") {
            continue;
        }
        let used = records
            .values()
            .any(|r| asset::mentions_path(&r.outputs, &p));
        if !used {
            std::fs::remove_file(&p).map_err(|e| ResourceError::io("cannot remove", &p, e))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

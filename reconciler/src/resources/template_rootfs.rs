//! A template's root directory from its rootfs: a tarball unpacked, or an OCI image's layers
//! flattened in order (whiteouts applied), with the image config written to
//! `/etc/fort/image.json` for the guest agent (defaults of `run_command`, and the command
//! `run_image_cmd` supervises).

use std::path::Path;

use serde_json::json;

use super::rootfs::{ImageOutputs, RootfsOutputs};
use super::ResourceError;
use crate::host::image::unpack;
use crate::host::oci::{flatten, media};
use crate::manifest::TemplateSpec;

/// Where the guest agent reads the image config.
pub const IMAGE_CONFIG: &str = "etc/fort/image.json";

/// What in a rootfs's outputs the template's image key hashes: the tarball's content, or the
/// image's digest (so a moved tag, once resolved, builds a new image).
pub fn key_input(rootfs: &RootfsOutputs) -> &str {
    match rootfs {
        RootfsOutputs::Tarball(f) => &f.content_sha256,
        RootfsOutputs::Image(i) => &i.digest,
    }
}

/// Fill `root` (empty) from the rootfs.
pub fn unpack_rootfs(
    spec: &TemplateSpec,
    rootfs: &RootfsOutputs,
    root: &Path,
) -> Result<(), ResourceError> {
    match rootfs {
        RootfsOutputs::Tarball(f) => {
            unpack::unpack(&f.path, root)
                .map_err(|e| ResourceError::Check(super::error_chain(&e)))?;
        }
        RootfsOutputs::Image(image) => {
            flatten_image(image, root)?;
            write_image_config(spec, image, root)?;
        }
    }
    Ok(())
}

fn flatten_image(image: &ImageOutputs, root: &Path) -> Result<(), ResourceError> {
    let n = image.layers.len();
    for (i, l) in image.layers.iter().enumerate() {
        let compression = media::compression_of(&l.media_type).ok_or_else(|| {
            ResourceError::Check(format!(
                "{}: layer {} has the unsupported media type `{}`",
                image.image,
                i + 1,
                l.media_type
            ))
        })?;
        flatten::apply_layer(&l.file.path, compression, root).map_err(|e| {
            ResourceError::Check(format!(
                "layer {}/{n} (sha256:{}) of {}: {}",
                i + 1,
                l.file.fetched_sha256,
                image.image,
                super::error_chain(&e)
            ))
        })?;
    }
    Ok(())
}

fn write_image_config(
    spec: &TemplateSpec,
    image: &ImageOutputs,
    root: &Path,
) -> Result<(), ResourceError> {
    let c = &image.run_config;
    let argv: Vec<String> = c
        .entrypoint
        .iter()
        .flatten()
        .chain(c.cmd.iter().flatten())
        .cloned()
        .collect();
    if spec.run_image_cmd && argv.is_empty() {
        return Err(ResourceError::Check(format!(
            "run_image_cmd = true, but {} has no Entrypoint or Cmd to run",
            image.image
        )));
    }
    if let Some(dir) = c.working_dir.as_deref().filter(|d| !d.is_empty()) {
        // As a container runtime does: the working directory exists (its path resolved
        // inside the image, like every path fort writes there).
        let probe = super::template::in_image(root, &format!("/{dir}/.probe"))?;
        let p = probe.parent().unwrap_or(root);
        std::fs::create_dir_all(p).map_err(|e| ResourceError::io("cannot create", p, e))?;
    }
    let doc = json!({
        "image": image.image,
        "env": c.env.clone().unwrap_or_default(),
        "working_dir": c.working_dir.clone().filter(|d| !d.is_empty()),
        "user": c.user.clone().filter(|u| !u.is_empty()),
        "entrypoint": c.entrypoint.clone().unwrap_or_default(),
        "cmd": c.cmd.clone().unwrap_or_default(),
        "run_image_cmd": spec.run_image_cmd,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    // Resolved inside the image: its own `etc -> /…` link must not take this write out.
    let dst = super::template::in_image(root, &format!("/{IMAGE_CONFIG}"))?;
    super::template::write_file(&dst, text.as_bytes(), 0o644)
}

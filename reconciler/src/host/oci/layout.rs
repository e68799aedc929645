//! OCI image layout directories (`oci-layout:PATH[:TAG]`, for air-gapped hosts): `index.json`
//! names the images (a tag is the `org.opencontainers.image.ref.name` annotation), blobs are
//! `blobs/sha256/HEX`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{media, OciError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn bad(dir: &Path, why: String) -> OciError {
    OciError::Layout {
        path: dir.to_path_buf(),
        why,
    }
}

/// The descriptor `tag` names in the layout's index (the only one when no tag is given).
pub fn resolve(dir: &Path, tag: Option<&str>) -> Result<media::Descriptor, OciError> {
    if !dir.join("oci-layout").is_file() {
        return Err(bad(
            dir,
            "is not an OCI image layout (it has no `oci-layout` file)".to_string(),
        ));
    }
    let index = std::fs::read(dir.join("index.json"))
        .map_err(|e| bad(dir, format!("has no readable index.json: {e}")))?;
    let media::Parsed::Index(entries) = media::parse(&index, Some(media::OCI_INDEX))
        .map_err(|e| bad(dir, format!("index.json {e}")))?
    else {
        return Err(bad(dir, "index.json is not an index".to_string()));
    };
    let tags: Vec<&str> = entries
        .iter()
        .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
        .collect();
    let found = match tag {
        Some(t) => entries
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t)),
        None if entries.len() == 1 => entries.first(),
        None => {
            return Err(bad(
                dir,
                format!(
                    "holds {} images: name one with oci-layout:PATH:TAG (tags: {})",
                    entries.len(),
                    tags.join(", ")
                ),
            ))
        }
    };
    found.cloned().ok_or_else(|| {
        bad(
            dir,
            format!(
                "has no image tagged `{}` (tags: {})",
                tag.unwrap_or(""),
                if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.join(", ")
                }
            ),
        )
    })
}

pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    dir.join("blobs/sha256").join(hex)
}

/// A small blob (manifest, index) read whole and checked against its digest.
pub fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, OciError> {
    let p = blob_path(dir, digest);
    let meta = std::fs::metadata(&p).map_err(|e| bad(dir, format!("has no blob {digest}: {e}")))?;
    if meta.len() > 4 << 20 {
        return Err(bad(
            dir,
            format!("blob {digest} is too large for a manifest"),
        ));
    }
    let bytes = std::fs::read(&p).map_err(|e| bad(dir, format!("blob {digest}: {e}")))?;
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if got != digest {
        return Err(OciError::Digest {
            what: format!("blob of {}", dir.display()),
            expected: digest.to_string(),
            got,
        });
    }
    Ok(bytes)
}

//! OCI and Docker v2 manifest formats (pure): media types, indexes and manifests, the
//! platform choice, which layer compressions fort unpacks, and the image config's fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What fort asks registries for, best first.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The platform fort runs images for.
pub const PLATFORM: &str = "linux/amd64";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Doc {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// A manifest document: an index of per-platform manifests, or one image's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Index(Vec<Descriptor>),
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("unsupported media type `{0}` (fort reads OCI image indexes and manifests and Docker v2 manifest lists and manifests)")]
    MediaType(String),
    #[error("is not a valid manifest: {0}")]
    Invalid(String),
}

/// Parse a manifest document; `content_type` is the registry's header (may be missing or
/// generic, then the document's own `mediaType`, then its shape decides).
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, FormatError> {
    let doc: Doc =
        serde_json::from_slice(bytes).map_err(|e| FormatError::Invalid(e.to_string()))?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
        .filter(|c| c.starts_with("application/vnd."));
    let media = header.or_else(|| doc.media_type.clone());
    let media = match media {
        Some(m) => m,
        None if doc.manifests.is_some() => OCI_INDEX.to_string(),
        None if doc.config.is_some() => OCI_MANIFEST.to_string(),
        None => {
            return Err(FormatError::Invalid(
                "no mediaType, manifests or config".into(),
            ))
        }
    };
    if doc.schema_version != 2 {
        return Err(FormatError::MediaType(if media.contains("manifest.v1") {
            media
        } else {
            format!("{media} (schemaVersion {})", doc.schema_version)
        }));
    }
    match media.as_str() {
        OCI_INDEX | DOCKER_LIST => Ok(Parsed::Index(doc.manifests.unwrap_or_default())),
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = doc
                .config
                .ok_or_else(|| FormatError::Invalid("a manifest without `config`".into()))?;
            Ok(Parsed::Manifest {
                config,
                layers: doc.layers.unwrap_or_default(),
            })
        }
        other => Err(FormatError::MediaType(other.to_string())),
    }
}

/// The `linux/amd64` entry of an index, or the platforms it has instead.
pub fn pick_platform(entries: &[Descriptor]) -> Result<&Descriptor, Vec<String>> {
    let fits = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    if let Some(d) = entries.iter().find(fits) {
        return Ok(d);
    }
    let mut found: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        // Attestation manifests (BuildKit) are listed as unknown/unknown: not platforms.
        .filter(|p| p.os != "unknown")
        .map(Platform::name)
        .collect();
    found.dedup();
    Err(found)
}

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type fort can unpack, or `None` for one it cannot.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    let rest = media_type
        .strip_prefix("application/vnd.oci.image.layer.v1.")
        .or_else(|| {
            media_type.strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
        })?;
    match rest {
        "tar" => Some(Compression::None),
        "tar+gzip" => Some(Compression::Gzip),
        "tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Docker's layer media types, too.
pub fn compression_of(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        m => layer_compression(m),
    }
}

/// The parts of an image config fort uses (`config` of the OCI image configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_platforms() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:u","size":1,"platform":{"architecture":"unknown","os":"unknown"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:s","size":1,"platform":{"architecture":"s390x","os":"linux"}}]}"#;
        let Parsed::Index(entries) = parse(index, Some(OCI_INDEX)).unwrap() else {
            panic!()
        };
        assert_eq!(
            pick_platform(&entries).unwrap_err(),
            vec!["linux/arm64/v8".to_string(), "linux/s390x".to_string()]
        );
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"x","digest":"sha256:c","size":2},"layers":[]}"#;
        assert!(matches!(
            parse(m, Some("application/json")).unwrap(),
            Parsed::Manifest { .. }
        ));
        let v1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert_eq!(
            parse(v1, Some("application/vnd.docker.distribution.manifest.v1+prettyjws"))
                .unwrap_err()
                .to_string(),
            "unsupported media type `application/vnd.docker.distribution.manifest.v1+prettyjws` (fort reads OCI image indexes and manifests and Docker v2 manifest lists and manifests)"
        );
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+bzip2"),
            None
        );
    }
}

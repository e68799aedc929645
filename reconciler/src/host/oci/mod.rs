//! OCI images as root filesystems: resolve a reference to a digest (plan time: one manifest
//! request, no layers), pull an image (manifests digest-checked in memory; config and layers
//! through the fetch pipeline, so every blob is verified while it streams and cached once under
//! its digest), and flatten layers into a directory with OCI whiteouts (`flatten`).
//!
//! Sources: a registry (v2 / OCI distribution API, `client`) or an OCI image layout directory
//! (`layout`). Credentials come from docker `config.json` files (`auth`) and are never recorded.

pub mod auth;
pub mod client;
pub mod flatten;
pub mod layout;
pub mod media;

use std::path::PathBuf;

use futures_util::StreamExt;

use crate::host::fetch::{FetchError, FetchRequest, Fetched, Fetcher};
use crate::manifest::{AssetSource, Decompress, ImageLocation, ImageSource};
use client::Registry;
use media::{Descriptor, Parsed, RunConfig};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("GET {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("registry {registry} answered 401 Unauthorized for {repository}: {why}")]
    Unauthorized {
        registry: String,
        repository: String,
        why: String,
    },
    #[error("{name}: {what} not found (HTTP 404)")]
    NotFound { what: String, name: String },
    #[error("{image} has no {want} image; the index has: {}", if found.is_empty() { "no platforms".to_string() } else { found.join(", ") })]
    NoPlatform {
        image: String,
        want: &'static str,
        found: Vec<String>,
    },
    #[error("{image}: layer {index} has the unsupported media type `{media_type}` (fort unpacks tar, tar+gzip and tar+zstd layers)")]
    LayerMediaType {
        image: String,
        index: usize,
        media_type: String,
    },
    #[error("{image}: {why}")]
    Manifest { image: String, why: String },
    #[error("digest mismatch for the {what}: expected {expected}, got {got}")]
    Digest {
        what: String,
        expected: String,
        got: String,
    },
    #[error("{what} {why}")]
    Format { what: String, why: String },
    #[error("registry auth file {} {why}", path.display())]
    AuthFile { path: PathBuf, why: String },
    #[error("oci-layout {} {why}", path.display())]
    Layout { path: PathBuf, why: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl OciError {
    /// Worth retrying: connection trouble and server-side errors, never verification errors.
    pub fn is_transient(&self) -> bool {
        match self {
            OciError::Http { source, .. } => !(source.is_builder() || source.is_redirect()),
            OciError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            OciError::Fetch(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Where an image's manifests and blobs come from.
enum Source {
    Registry(Box<Registry>),
    Layout(PathBuf),
}

impl Source {
    async fn open(image: &ImageSource) -> Result<Source, OciError> {
        Ok(match &image.location {
            ImageLocation::Registry {
                registry,
                repository,
            } => Source::Registry(Box::new(
                Registry::connect(registry, repository, image.insecure, image.auth.as_deref())
                    .await?,
            )),
            ImageLocation::Layout { layout } => Source::Layout(layout.clone()),
        })
    }

    /// The digest the image's tag names now.
    async fn digest_of(&self, image: &ImageSource) -> Result<String, OciError> {
        match self {
            Source::Registry(r) => {
                let tag = image.tag.as_deref().unwrap_or("latest");
                match r.head_digest(tag).await? {
                    Some(d) => Ok(d),
                    None => Ok(r.manifest(tag).await?.2),
                }
            }
            Source::Layout(dir) => Ok(layout::resolve(dir, image.tag.as_deref())?.digest),
        }
    }

    /// A manifest or index by digest, checked.
    async fn manifest(&self, digest: &str) -> Result<(Vec<u8>, Option<String>), OciError> {
        match self {
            Source::Registry(r) => {
                let (b, ct, _) = r.manifest(digest).await?;
                Ok((b, ct))
            }
            Source::Layout(dir) => Ok((layout::read_blob(dir, digest)?, None)),
        }
    }

    fn blob(&self, digest: &str) -> (String, Option<String>) {
        match self {
            Source::Registry(r) => (r.blob_url(digest), r.authorization()),
            Source::Layout(dir) => (
                format!("file://{}", layout::blob_path(dir, digest).display()),
                None,
            ),
        }
    }
}

fn parse(image: &str, bytes: &[u8], ct: Option<&str>) -> Result<Parsed, OciError> {
    media::parse(bytes, ct).map_err(|e| OciError::Manifest {
        image: image.to_string(),
        why: e.to_string(),
    })
}

/// The image's platform manifest: the document itself, or the `linux/amd64` entry of an
/// index. Returns its digest, config and layers.
async fn platform_manifest(
    src: &Source,
    shown: &str,
    digest: &str,
) -> Result<(String, Descriptor, Vec<Descriptor>), OciError> {
    let (bytes, ct) = src.manifest(digest).await?;
    match parse(shown, &bytes, ct.as_deref())? {
        Parsed::Manifest { config, layers } => Ok((digest.to_string(), config, layers)),
        Parsed::Index(entries) => {
            let entry = media::pick_platform(&entries).map_err(|found| OciError::NoPlatform {
                image: shown.to_string(),
                want: media::PLATFORM,
                found,
            })?;
            let (bytes, ct) = src.manifest(&entry.digest).await?;
            match parse(shown, &bytes, ct.as_deref())? {
                Parsed::Manifest { config, layers } => Ok((entry.digest.clone(), config, layers)),
                Parsed::Index(_) => Err(OciError::Manifest {
                    image: shown.to_string(),
                    why: format!("the {} entry is another index", media::PLATFORM),
                }),
            }
        }
    }
}

/// Plan time: the digest `image`'s tag names now (an index must have a `linux/amd64` entry).
/// One or two manifest requests; no layer is downloaded.
/// A digest seen once is not fetched again by the same process (`fort watch` resolves
/// every pass: then only a HEAD request per image).
pub async fn resolve(image: &ImageSource) -> Result<String, OciError> {
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let src = Source::open(image).await?;
    let digest = src.digest_of(image).await?;
    let seen = CHECKED.lock().is_ok_and(|c| c.contains(&digest));
    if !seen {
        platform_manifest(&src, &image.name(), &digest).await?;
        if let Ok(mut c) = CHECKED.lock() {
            c.push(digest.clone());
        }
    }
    Ok(digest)
}

/// What a pull cached.
#[derive(Debug)]
pub struct Pulled {
    /// The digest the spec pins (an index or a manifest).
    pub digest: String,
    /// The `linux/amd64` manifest's digest.
    pub manifest: String,
    pub config: Fetched,
    pub run_config: RunConfig,
    /// In order, bottom first, with their media types.
    pub layers: Vec<(Fetched, String)>,
}

/// Layers downloaded at once.
const PARALLEL: usize = 3;

/// Pull `image` (at its pinned or resolved digest) into the fetcher's cache.
pub async fn pull(fetcher: &Fetcher, label: &str, image: &ImageSource) -> Result<Pulled, OciError> {
    let src = Source::open(image).await?;
    let digest = match &image.digest {
        Some(d) => d.clone(),
        None => src.digest_of(image).await?,
    };
    let shown = format!("{}@{digest}", image.name());
    let (manifest, config, layers) = platform_manifest(&src, &shown, &digest).await?;
    // Every layer must be one fort can unpack before anything is downloaded.
    for (i, l) in layers.iter().enumerate() {
        if media::compression_of(&l.media_type).is_none() {
            return Err(OciError::LayerMediaType {
                image: shown,
                index: i + 1,
                media_type: l.media_type.clone(),
            });
        }
    }
    let config_file = blob(fetcher, &src, &format!("{label} config"), &config.digest).await?;
    let text = std::fs::read(&config_file.path).map_err(|e| OciError::Format {
        what: format!("the config of {shown}"),
        why: format!("cannot be read from the cache: {e}"),
    })?;
    let cfg: media::ImageConfig = serde_json::from_slice(&text).map_err(|e| OciError::Format {
        what: format!("the config of {shown}"),
        why: format!("is not an OCI image config: {e}"),
    })?;
    let n = layers.len();
    let mut jobs = Vec::with_capacity(n);
    for (i, l) in layers.iter().enumerate() {
        jobs.push(blob_owned(
            fetcher,
            &src,
            format!("{label} layer {}/{n}", i + 1),
            l.digest.clone(),
        ));
    }
    let fetched: Vec<Result<Fetched, OciError>> = futures_util::stream::iter(jobs)
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut out = Vec::with_capacity(n);
    for (f, l) in fetched.into_iter().zip(&layers) {
        out.push((f?, l.media_type.clone()));
    }
    Ok(Pulled {
        digest,
        manifest,
        config: config_file,
        run_config: cfg.config.unwrap_or_default(),
        layers: out,
    })
}

async fn blob_owned(
    fetcher: &Fetcher,
    src: &Source,
    label: String,
    digest: String,
) -> Result<Fetched, OciError> {
    blob(fetcher, src, &label, &digest).await
}

/// One blob through the fetch pipeline, verified against its digest; a 401 (an expired
/// token) gets one fresh token and one more try.
async fn blob(
    fetcher: &Fetcher,
    src: &Source,
    label: &str,
    digest: &str,
) -> Result<Fetched, OciError> {
    let hex = crate::manifest::image_ref::check_digest(digest)
        .map_err(|why| OciError::Format {
            what: format!("{label}:"),
            why,
        })?
        .trim_start_matches("sha256:")
        .to_string();
    let mut retried = false;
    loop {
        let (url, authorization) = src.blob(digest);
        let source = AssetSource {
            url,
            sha256: Some(hex.clone()),
            sha256_url: None,
            minisign: None,
            decompress: Decompress::None,
        };
        let req = FetchRequest {
            source: &source,
            member: None,
            executable: false,
            label,
            authorization: authorization.as_deref(),
        };
        match fetcher.fetch(&req).await {
            Err(FetchError::Status { status: 401, .. }) if !retried => {
                if let Source::Registry(r) = src {
                    r.reauthenticate().await?;
                }
                retried = true;
            }
            r => return Ok(r?),
        }
    }
}

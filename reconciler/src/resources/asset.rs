//! What the three asset kinds (kernel, rootfs, firecracker) share: fetching into the cache,
//! observing a cache entry, and removing it when no other resource uses it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Ctx, ResourceError};
use crate::address::Address;
use crate::host::fetch::{self, FetchRequest, Fetched};
use crate::manifest::AssetSource;
use crate::plan::Observation;
use crate::state::StateStore;

/// The outputs recorded for one fetched file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedFile {
    pub path: PathBuf,
    pub fetched_sha256: String,
    pub content_sha256: String,
    pub size: u64,
}

impl From<Fetched> for CachedFile {
    fn from(f: Fetched) -> Self {
        CachedFile {
            path: f.path,
            fetched_sha256: f.fetched_sha256,
            content_sha256: f.content_sha256,
            size: f.size,
        }
    }
}

pub async fn fetch(
    ctx: &Ctx,
    label: &Address,
    source: &AssetSource,
    member: Option<&str>,
    executable: bool,
) -> Result<CachedFile, ResourceError> {
    let label = label.to_string();
    let req = FetchRequest {
        source,
        member,
        executable,
        label: &label,
        authorization: None,
    };
    Ok(ctx.fetcher()?.fetch(&req).await?.into())
}

/// Is the cache entry still there and unchanged; for an unpinned local source, is the source
/// still what was fetched?
pub async fn observe(
    file: &CachedFile,
    source: &AssetSource,
) -> Result<Observation, ResourceError> {
    let file = file.clone();
    let unpinned_local = source.sha256.is_none() && source.sha256_url.is_none();
    let local_source = unpinned_local
        .then(|| source.url.strip_prefix("file://").map(PathBuf::from))
        .flatten();
    let run = move || -> Result<Observation, ResourceError> {
        if let Some(problem) = check_entry(&file)? {
            return Ok(problem);
        }
        if let Some(src) = local_source {
            if !src.exists() {
                return Ok(Observation::Drifted {
                    what: format!("source {} is gone", src.display()),
                });
            }
            if fetch::sha256_file(&src)? != file.fetched_sha256 {
                return Ok(Observation::Drifted {
                    what: format!("source {} changed since it was fetched", src.display()),
                });
            }
        }
        Ok(Observation::Ok)
    };
    tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| ResourceError::Check(format!("observer task failed: {e}")))?
}

/// Is a cache entry missing or modified?
fn check_entry(file: &CachedFile) -> Result<Option<Observation>, ResourceError> {
    if !file.path.exists() {
        return Ok(Some(Observation::Missing {
            what: format!("cache entry {} is missing", file.path.display()),
        }));
    }
    let got = fetch::stamp::sha256_stamped(&file.path)?;
    if got != file.content_sha256 {
        return Ok(Some(Observation::Drifted {
            what: format!(
                "cache entry {} was modified (sha256 {}, recorded {})",
                file.path.display(),
                short(&got),
                short(&file.content_sha256)
            ),
        }));
    }
    Ok(None)
}

/// Are these cache entries (an image's blobs) all there and unchanged?
pub async fn observe_entries(files: Vec<CachedFile>) -> Result<Observation, ResourceError> {
    tokio::task::spawn_blocking(move || {
        for f in &files {
            if let Some(problem) = check_entry(f)? {
                return Ok(problem);
            }
        }
        Ok(Observation::Ok)
    })
    .await
    .map_err(|e| ResourceError::Check(format!("observer task failed: {e}")))?
}

/// Is `path` (an image or drive file, `noun` in messages) there with the recorded size?
pub fn observe_sized(noun: &str, path: &Path, size: u64) -> Observation {
    match std::fs::metadata(path) {
        Err(_) => Observation::Missing {
            what: format!("{noun} {} is missing", path.display()),
        },
        Ok(m) if m.len() != size => Observation::Drifted {
            what: format!("{noun} {} is {} bytes, not {size}", path.display(), m.len()),
        },
        Ok(_) => Observation::Ok,
    }
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// Remove cache entries that no other recorded resource still points at (entries are
/// content-addressed, so two resources with the same source share one).
pub fn release(ctx: &Ctx, owner: &Address, files: &[CachedFile]) -> Result<(), ResourceError> {
    let others = ctx.with_store(|s| s.resources())?;
    for f in files {
        let shared = others
            .values()
            .filter(|r| &r.address != owner)
            .any(|r| mentions_path(&r.outputs, &f.path));
        if shared {
            continue;
        }
        remove_if_present(&f.path)?;
        remove_if_present(&sidecar(&f.path))?;
        fetch::stamp::forget(&f.path);
    }
    Ok(())
}

/// After an update: release the previously recorded files that the new outputs no longer use.
pub fn release_replaced(
    ctx: &Ctx,
    owner: &Address,
    old: &[CachedFile],
    new: &[&CachedFile],
) -> Result<(), ResourceError> {
    let stale: Vec<CachedFile> = old
        .iter()
        .filter(|o| new.iter().all(|n| n.path != o.path))
        .cloned()
        .collect();
    release(ctx, owner, &stale)
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn remove_if_present(path: &Path) -> Result<(), ResourceError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ResourceError::io("cannot remove", path, e)),
    }
}

pub(super) fn mentions_path(v: &serde_json::Value, path: &Path) -> bool {
    match v {
        serde_json::Value::String(s) => Path::new(s) == path,
        serde_json::Value::Array(a) => a.iter().any(|x| mentions_path(x, path)),
        serde_json::Value::Object(o) => o.values().any(|x| mentions_path(x, path)),
        _ => false,
    }
}

/// Remove cache entries (with their `.sha256` sidecar and `.verified` stamp) that no recorded
/// resource names — e.g. a download whose apply was killed before it was recorded, of an asset
/// since removed from the manifest. Only after a complete, untargeted apply: then everything
/// desired is recorded.
pub fn collect_garbage(ctx: &Ctx) -> Result<Vec<PathBuf>, ResourceError> {
    let dir = ctx.cache_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(vec![]);
    };
    let records = ctx.with_store(|s| s.resources())?;
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if !p.is_file() {
            continue; // tmp/
        }
        let name = p.to_string_lossy();
        let entry = PathBuf::from(
            name.strip_suffix(".sha256")
                .or_else(|| name.strip_suffix(".verified"))
                .unwrap_or(&name),
        );
        if records.values().any(|r| mentions_path(&r.outputs, &entry)) {
            continue;
        }
        remove_if_present(&p)?;
        removed.push(p);
    }
    Ok(removed)
}

/// Decode recorded outputs of an asset kind.
pub fn outputs<T: serde::de::DeserializeOwned>(
    address: &Address,
    v: &serde_json::Value,
) -> Result<T, ResourceError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        ResourceError::Check(format!("recorded outputs of {address} are unreadable: {e}"))
    })
}

//! Verified asset downloads into the content-addressed cache (`state_dir/cache`).
//!
//! One pass over the bytes as fetched: sha256 and the minisign hash are computed while the
//! body streams in, and a worker thread decompresses (xz/gzip), extracts a tar member if asked,
//! hashes the result and writes it to a temp file in `cache/tmp/`. Only when every check
//! passed is the temp file renamed to `cache/<key>` (with a `<key>.sha256` sidecar holding the
//! content hash written first), so an interrupted or failed download never leaves anything
//! that looks like a valid entry.

mod pipeline;
mod source;
pub mod stamp;

pub use stamp::sha256_file;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{AssetSource, Decompress};
use source::Body;

/// What to fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    pub source: &'a AssetSource,
    /// Extract this file from a tar archive (after decompression), e.g. the binary of a
    /// Firecracker release `.tgz`.
    pub member: Option<&'a str>,
    /// Make the result executable (0755).
    pub executable: bool,
    /// `kernel.lts`: for progress bars and errors.
    pub label: &'a str,
    /// An `Authorization` header for HTTP(S) sources (a registry's token); never recorded.
    pub authorization: Option<&'a str>,
}

/// A valid cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    pub path: PathBuf,
    /// sha256 of the bytes as fetched.
    pub fetched_sha256: String,
    /// sha256 of the file in the cache (after decompression/extraction).
    pub content_sha256: String,
    pub size: u64,
    /// False when an existing valid entry was reused without any download.
    pub downloaded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: unsupported URL scheme (expected https://, http://, file:// or a path)")]
    Scheme { url: String },
    #[error("checksum mismatch for {label}: expected {expected}, got {got} ({url})")]
    Checksum {
        label: String,
        url: String,
        expected: String,
        got: String,
    },
    #[error("checksum file {sums_url} has no entry for `{name}`")]
    NoChecksumEntry { sums_url: String, name: String },
    #[error("checksum file {sums_url} is not in sha256sum format")]
    BadChecksumFile { sums_url: String },
    #[error("minisign signature {sig_url} is unreadable")]
    SignatureFormat {
        sig_url: String,
        #[source]
        source: minisign_verify::Error,
    },
    #[error("minisign public key of {label} is unreadable")]
    PublicKey {
        label: String,
        #[source]
        source: minisign_verify::Error,
    },
    #[error("minisign signature check failed for {label} ({url})")]
    Signature {
        label: String,
        url: String,
        #[source]
        source: minisign_verify::Error,
    },
    #[error("cannot decompress or unpack {label} ({url})")]
    Decode {
        label: String,
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{label}: archive {url} has no member `{member}` (it has: {found})")]
    NoMember {
        label: String,
        url: String,
        member: String,
        found: String,
    },
    #[error("{url}: {what} is larger than {limit} bytes")]
    TooLarge {
        url: String,
        what: &'static str,
        limit: u64,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the download worker of {label} stopped unexpectedly")]
    Worker { label: String },
}

impl FetchError {
    /// Worth retrying: server-side trouble and broken connections, never verification errors.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            // Connection trouble of any kind (refused, reset, timed out, closed before the
            // promised length); not a bad URL or a redirect loop.
            FetchError::Http { source, .. } => !(source.is_builder() || source.is_redirect()),
            _ => false,
        }
    }

    fn io(what: &'static str, path: &Path, source: std::io::Error) -> FetchError {
        FetchError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Downloads into one cache directory.
pub struct Fetcher {
    client: reqwest::Client,
    cache: PathBuf,
    /// Progress bars on stderr (a terminal), one line per download running at once (an
    /// image's layers download concurrently).
    bars: Option<indicatif::MultiProgress>,
}

impl Fetcher {
    /// Prepare `cache_dir` (and `cache_dir/tmp`, emptied: leftovers of a killed run are never
    /// entries). Call it under the state-dir lock.
    pub fn new(cache_dir: PathBuf, progress: bool) -> Result<Fetcher, FetchError> {
        let tmp = cache_dir.join("tmp");
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        std::fs::create_dir_all(&tmp).map_err(|e| FetchError::io("cannot create", &tmp, e))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("fort/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| FetchError::Http {
                url: String::new(),
                source,
            })?;
        Ok(Fetcher {
            client,
            cache: cache_dir,
            bars: progress.then(|| {
                indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr())
            }),
        })
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// Measure, then act: reuse a valid entry, else download, verify and install one.
    pub async fn fetch(&self, req: &FetchRequest<'_>) -> Result<Fetched, FetchError> {
        let src = req.source;
        let expected = self.expected_sha256(req).await?;
        let entry = self
            .cache
            .join(cache_key(&expected, src.decompress, req.member));
        let sidecar = sidecar_of(&entry);
        if let Some(found) = reuse(&entry, &sidecar).await? {
            tracing::debug!(label = req.label, path = %entry.display(), "cache hit");
            return Ok(Fetched {
                path: entry,
                fetched_sha256: expected,
                content_sha256: found.0,
                size: found.1,
                downloaded: false,
            });
        }
        let signature = match &src.minisign {
            Some(m) => {
                let text = self
                    .small_text(&m.signature_url, 64 * 1024, "signature")
                    .await?;
                let sig = minisign_verify::Signature::decode(&text).map_err(|source| {
                    FetchError::SignatureFormat {
                        sig_url: m.signature_url.clone(),
                        source,
                    }
                })?;
                let pk =
                    minisign_verify::PublicKey::from_base64(&m.public_key).map_err(|source| {
                        FetchError::PublicKey {
                            label: req.label.to_string(),
                            source,
                        }
                    })?;
                Some((pk, sig))
            }
            None => None,
        };
        let mut verifier = match &signature {
            Some((pk, sig)) => {
                Some(
                    pk.verify_stream(sig)
                        .map_err(|source| FetchError::Signature {
                            label: req.label.to_string(),
                            url: src.url.clone(),
                            source,
                        })?,
                )
            }
            None => None,
        };

        tracing::info!(label = req.label, url = %src.url, "downloading");
        let body = source::open(&self.client, &src.url, req.authorization).await?;
        let total = body.len();
        let bar = self
            .bars
            .as_ref()
            .map(|m| m.add(progress_bar(req.label, total)));
        let tmp_dir = self.cache.join("tmp");
        let job = pipeline::Job {
            tmp_dir: tmp_dir.clone(),
            decompress: src.decompress,
            member: req.member.map(str::to_string),
            executable: req.executable,
        };
        let (tx, worker) = pipeline::spawn(job);
        let mut hasher = Sha256::new();
        let mut body = body;
        let mut stream_error = None;
        let mut first = true;
        loop {
            let chunk = match body.next_chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    stream_error = Some(e);
                    break;
                }
            };
            hasher.update(&chunk);
            if let Some(v) = verifier.as_mut() {
                v.update(&chunk);
            }
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
            if tx.send(chunk).await.is_err() {
                // The worker stopped early (corrupt data); its error says why.
                break;
            }
            if first {
                first = false;
                crate::crash::hit(crate::crash::Point::FetchPartial);
            }
        }
        drop(tx);
        let output = worker.await.map_err(|_| FetchError::Worker {
            label: req.label.to_string(),
        })?;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        if let Some(e) = stream_error {
            return Err(e);
        }
        let output = output.map_err(|e| match e {
            pipeline::WorkerError::Decode(source) => FetchError::Decode {
                label: req.label.to_string(),
                url: src.url.clone(),
                source,
            },
            pipeline::WorkerError::NoMember { member, found } => FetchError::NoMember {
                label: req.label.to_string(),
                url: src.url.clone(),
                member,
                found,
            },
            pipeline::WorkerError::Io(source) => {
                FetchError::io("cannot write into", &tmp_dir, source)
            }
        })?;
        let got = hex::encode(hasher.finalize());
        if got != expected {
            return Err(FetchError::Checksum {
                label: req.label.to_string(),
                url: src.url.clone(),
                expected,
                got,
            });
        }
        if let Some(v) = verifier.as_mut() {
            v.finalize().map_err(|source| FetchError::Signature {
                label: req.label.to_string(),
                url: src.url.clone(),
                source,
            })?;
        }
        install(output.file, &output.content_sha256, &entry, &sidecar)?;
        Ok(Fetched {
            path: entry,
            fetched_sha256: expected,
            content_sha256: output.content_sha256,
            size: output.size,
            downloaded: true,
        })
    }

    /// The sha256 the fetched bytes must have: declared, from the publisher's checksum file,
    /// or (an unpinned local file) the file's own.
    async fn expected_sha256(&self, req: &FetchRequest<'_>) -> Result<String, FetchError> {
        let src = req.source;
        if let Some(s) = &src.sha256 {
            return Ok(s.to_ascii_lowercase());
        }
        if let Some(sums_url) = &src.sha256_url {
            let text = self
                .small_text(sums_url, 1024 * 1024, "checksum file")
                .await?;
            return source::find_checksum(&text, sums_url, &src.url);
        }
        let path = source::local_path(&src.url)?;
        let p = path.clone();
        tokio::task::spawn_blocking(move || sha256_file(&p))
            .await
            .map_err(|_| FetchError::Worker {
                label: req.label.to_string(),
            })?
    }

    async fn small_text(
        &self,
        url: &str,
        limit: u64,
        what: &'static str,
    ) -> Result<String, FetchError> {
        let mut body = source::open(&self.client, url, None).await?;
        let mut buf = Vec::new();
        while let Some(chunk) = body.next_chunk().await? {
            buf.extend_from_slice(&chunk);
            if buf.len() as u64 > limit {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                    what,
                    limit,
                });
            }
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// `cache/<sha256 as fetched>[.xz|.gz][.member-<hash of member name>]`.
fn cache_key(fetched_sha256: &str, decompress: Decompress, member: Option<&str>) -> String {
    let mut key = fetched_sha256.to_string();
    match decompress {
        Decompress::None => {}
        Decompress::Xz => key.push_str(".xz"),
        Decompress::Gzip => key.push_str(".gz"),
    }
    if let Some(m) = member {
        let h = hex::encode(Sha256::digest(m.as_bytes()));
        key.push_str(".member-");
        key.push_str(&h[..16]);
    }
    key
}

pub fn sidecar_of(entry: &Path) -> PathBuf {
    let mut s = entry.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// An entry is valid when both files exist and the entry still hashes to the sidecar.
async fn reuse(entry: &Path, sidecar: &Path) -> Result<Option<(String, u64)>, FetchError> {
    let (entry, sidecar) = (entry.to_path_buf(), sidecar.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let Ok(want) = std::fs::read_to_string(&sidecar) else {
            return Ok(None);
        };
        let Ok(meta) = std::fs::metadata(&entry) else {
            return Ok(None);
        };
        let got = stamp::sha256_stamped(&entry)?;
        Ok((got == want.trim()).then_some((got, meta.len())))
    })
    .await
    .map_err(|_| FetchError::Worker {
        label: "cache check".to_string(),
    })?
}

fn install(
    file: tempfile::NamedTempFile,
    content_sha256: &str,
    entry: &Path,
    sidecar: &Path,
) -> Result<(), FetchError> {
    let dir = entry.parent().unwrap_or(Path::new("."));
    let mut side = tempfile::NamedTempFile::new_in(dir.join("tmp"))
        .map_err(|e| FetchError::io("cannot create a temp file in", dir, e))?;
    side.write_all(content_sha256.as_bytes())
        .and_then(|()| side.as_file().sync_all())
        .map_err(|e| FetchError::io("cannot write", sidecar, e))?;
    side.persist(sidecar)
        .map_err(|e| FetchError::io("cannot install", sidecar, e.error))?;
    file.persist(entry)
        .map_err(|e| FetchError::io("cannot install", entry, e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn progress_bar(label: &str, total: Option<u64>) -> indicatif::ProgressBar {
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

impl Body {
    fn len(&self) -> Option<u64> {
        self.content_length
    }
}

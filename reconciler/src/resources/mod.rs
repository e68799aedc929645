//! Resource kinds: one module per kind, all behind [`ResourceKind`] with the verbs
//! observe / plan / apply / destroy.
//!
//! `plan` is pure (it only compares data); `observe`, `apply` and `destroy` touch the host
//! through `crate::host`. Every `apply` is idempotent: it checks the host first and only does
//! what is missing, so a retried or resumed apply converges.

mod asset;
pub use asset::collect_garbage as collect_cache_garbage;
pub mod drive;
pub mod firecracker;
pub mod kernel;
pub mod network;
pub mod rootfs;
pub mod template;
mod template_rootfs;
pub mod vm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;

use crate::address::{Address, Kind};
use crate::host::fetch::{FetchError, Fetcher};
use crate::manifest::Resource;
use crate::plan::{self, Change, Effect, Observation, PlanError, PlanOptions};
use crate::state::{Record, SqliteStore, StateError, StateStore};

/// A short, stable name for a state dir: the first 8 hex digits of the sha256 of its path.
pub fn state_id(state_dir: &Path) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    hex::encode(&h[..4])
}

/// What the kinds share while observing and applying.
pub struct Ctx {
    pub state_dir: PathBuf,
    /// Draw progress bars (stderr is a terminal).
    pub progress: bool,
    /// `[fort] uid_range`: the uids confined VMs are given.
    pub uid_range: (u32, u32),
    store: Arc<Mutex<SqliteStore>>,
    fetcher: OnceLock<Fetcher>,
    /// Serialises the first `fetcher()` calls: creating a Fetcher empties `cache/tmp`, which
    /// must not happen under a download that already started.
    fetcher_init: Mutex<()>,
}

impl Ctx {
    pub fn new(state_dir: PathBuf, store: Arc<Mutex<SqliteStore>>, progress: bool) -> Ctx {
        Ctx {
            state_dir,
            progress,
            uid_range: crate::host::confine::DEFAULT_UID_RANGE,
            store,
            fetcher: OnceLock::new(),
            fetcher_init: Mutex::new(()),
        }
    }

    /// The same context with the manifest's `[fort] uid_range` (the default without one).
    pub fn with_uid_range(mut self, range: Option<(u32, u32)>) -> Ctx {
        if let Some(r) = range {
            self.uid_range = r;
        }
        self
    }

    /// A short, stable name for this state dir (a hash of its path), put in the marks fort
    /// leaves on the host (interface aliases) so leftovers are told apart per state dir.
    pub fn state_id(&self) -> String {
        state_id(&self.state_dir)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }

    /// The downloader, created on first use so read-only commands create no directories.
    pub fn fetcher(&self) -> Result<&Fetcher, ResourceError> {
        if let Some(f) = self.fetcher.get() {
            return Ok(f);
        }
        let _init = self
            .fetcher_init
            .lock()
            .map_err(|_| ResourceError::Poisoned)?;
        if let Some(f) = self.fetcher.get() {
            return Ok(f);
        }
        let f = Fetcher::new(self.cache_dir(), self.progress)?;
        Ok(self.fetcher.get_or_init(|| f))
    }

    /// Run something against the state store (short, synchronous calls only).
    pub fn with_store<T>(
        &self,
        f: impl FnOnce(&SqliteStore) -> Result<T, StateError>,
    ) -> Result<T, ResourceError> {
        let guard = self.store.lock().map_err(|_| ResourceError::Poisoned)?;
        Ok(f(&guard)?)
    }

    /// The recorded row of another resource (e.g. a dependency's outputs).
    pub fn record(&self, address: &Address) -> Result<Option<Record>, ResourceError> {
        self.with_store(|s| s.get(address))
    }

    /// Step `point` of the action under way on `address` is done: record the outputs that now
    /// describe the host (what exists, and what the next step is about to create), so a crash
    /// after this leaves a row the next run can act on. The crash point fires first: between
    /// the act and its record is the worst place to die.
    pub fn step<T: serde::Serialize>(
        &self,
        address: &Address,
        point: crate::crash::Point,
        outputs: &T,
    ) -> Result<(), ResourceError> {
        crate::crash::hit(point);
        let v = serde_json::to_value(outputs).map_err(|e| ResourceError::Check(e.to_string()))?;
        self.with_store(|s| s.progress(address, &v, point.name()))
    }

    /// The recorded row of a dependency, which must have been applied already.
    pub fn applied(&self, address: &Address) -> Result<Record, ResourceError> {
        self.record(address)?
            .ok_or_else(|| ResourceError::Check(format!("{address} is not applied")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("applying {0} resources is not supported yet by fort {ver}", ver = crate::VERSION)]
    Unsupported(Kind),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Oci(#[from] crate::host::oci::OciError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Check(String),
    #[error("the state store lock was poisoned by a panic")]
    Poisoned,
}

impl ResourceError {
    /// Worth retrying with backoff (the executor does).
    pub fn is_transient(&self) -> bool {
        match self {
            ResourceError::Fetch(e) => e.is_transient(),
            ResourceError::Oci(e) => e.is_transient(),
            ResourceError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> ResourceError {
        ResourceError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The verbs every kind implements.
#[async_trait]
pub trait ResourceKind: Send + Sync {
    fn kind(&self) -> Kind;

    /// How a change of the top-level spec field `field` is carried out.
    fn field_effect(&self, _field: &str) -> Effect {
        Effect::Replace
    }

    /// Whether destroying it loses user data (drives): such changes are marked `!`, and
    /// protected ones need `--allow-data-loss`.
    fn holds_data(&self) -> bool {
        false
    }

    /// Pure: the change (if any) that brings the recorded resource to the desired one.
    /// `notes` collects remarks that are not actions.
    fn plan(
        &self,
        desired: Option<&Resource>,
        recorded: Option<&Record>,
        observed: Option<&Observation>,
        opts: &PlanOptions,
        _notes: &mut Vec<String>,
    ) -> Result<Option<Change>, PlanError> {
        plan::standard(self, desired, recorded, observed, opts)
    }

    /// Host checks before creating `desired` (e.g. a name or address range the host already
    /// uses): `Some(why)` makes the plan refuse it.
    async fn preflight(
        &self,
        _ctx: &Ctx,
        _desired: &Resource,
    ) -> Result<Option<String>, ResourceError> {
        Ok(None)
    }

    /// Compare the host with the record.
    async fn observe(&self, ctx: &Ctx, record: &Record) -> Result<Observation, ResourceError>;

    /// Create or update the resource so the host matches `desired`; returns its outputs.
    async fn apply(
        &self,
        ctx: &Ctx,
        desired: &Resource,
        recorded: Option<&Record>,
    ) -> Result<serde_json::Value, ResourceError>;

    /// Remove what the resource made. Idempotent: gone already is success.
    async fn destroy(&self, ctx: &Ctx, recorded: &Record) -> Result<(), ResourceError>;
}

/// The implementation for a kind.
pub fn kind(kind: Kind) -> &'static dyn ResourceKind {
    match kind {
        Kind::Firecracker => &firecracker::Firecracker,
        Kind::Kernel => &kernel::Kernel,
        Kind::Rootfs => &rootfs::Rootfs,
        Kind::Template => &template::Template,
        Kind::Network => &network::Network,
        Kind::Drive => &drive::Drive,
        Kind::Vm => &vm::Vm,
    }
}

/// Observe every recorded resource that the manifest still wants (others are going to be
/// destroyed anyway), concurrently. An observation that fails is reported as drift so that
/// apply looks again rather than trusting the record.
pub async fn observe_all(
    ctx: &Ctx,
    desired: &BTreeMap<Address, Resource>,
    recorded: &BTreeMap<Address, Record>,
) -> BTreeMap<Address, Observation> {
    let futures = recorded
        .values()
        .filter(|r| desired.contains_key(&r.address))
        // A first action that recorded nothing has nothing on the host to look at.
        .filter(|r| r.made_anything())
        .map(|r| async move {
            let o = match kind(r.kind).observe(ctx, r).await {
                Ok(o) => o,
                Err(e) => Observation::Drifted {
                    what: format!("cannot observe: {}", error_chain(&e)),
                },
            };
            (r.address.clone(), o)
        });
    futures_util::future::join_all(futures)
        .await
        .into_iter()
        .collect()
}

/// Run blocking host work (QMP, process starts, file copies) off the async runtime; its
/// error becomes a check failure carrying the whole cause chain.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ResourceError>
where
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ResourceError::Check(format!("a background task failed: {e}")))?
        .map_err(|e| ResourceError::Check(error_chain(&e)))
}

/// `err: cause: cause…` on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

//! What most commands start from: the manifest, the state directory, the store.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Cli, CliError};
use crate::manifest::{self, HostSelection, Manifest};
use crate::resources::Ctx;
use crate::state::SqliteStore;

/// The manifest path: `-f`, else `./fort.toml`, else the current directory's `*.toml`.
pub fn manifest_path(cli: &Cli) -> PathBuf {
    match &cli.file {
        Some(p) => p.clone(),
        None if Path::new("fort.toml").exists() => PathBuf::from("fort.toml"),
        None => PathBuf::from("."),
    }
}

/// The manifest, as selected for this host (`--host`, else the machine's hostname).
pub fn load_manifest(cli: &Cli) -> Result<Manifest, CliError> {
    let (path, selection) = (manifest_path(cli), host_selection(cli)?);
    let m = manifest::load_for(&path, &selection)?;
    // The sandboxes fort made (docs/sandboxes.md) are desired like the manifest's VMs.
    let dir = sandbox_dir(&state_dir(cli, Some(&m)));
    if !manifest::has_sandboxes(&dir) {
        return Ok(m);
    }
    let m = manifest::merge_sandboxes(&path, &selection, &dir)?;
    for d in &m.sandbox_problems {
        tracing::warn!("{d} (this sandbox is left as it is until its file is fixed or removed)");
    }
    Ok(m)
}

/// Where the sandbox files are.
pub fn sandbox_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("sandboxes")
}

/// The manifest at git revision `rev` of the repository holding `-f` (the same path inside
/// it), as selected for this host.
pub fn load_manifest_at(cli: &Cli, rev: &str) -> Result<Manifest, CliError> {
    let path = manifest_path(cli);
    let repo = crate::gitread::Repo::discover(&path)?;
    let rev = repo.resolve(rev)?;
    let rel = repo.relative(&path)?;
    Ok(repo.load(&rev, &rel, &host_selection(cli)?)?)
}

/// `--host NAME`, else this machine's hostname: the host whose resources are desired here.
pub fn host_selection(cli: &Cli) -> Result<HostSelection, CliError> {
    Ok(HostSelection::Host(match &cli.host {
        Some(h) if h.is_empty() => {
            return Err(CliError::Usage(
                "--host needs a NAME (only `fort mcp --host` takes none)".to_string(),
            ))
        }
        Some(h) => h.clone(),
        None => hostname()?,
    }))
}

/// The kernel's hostname (what `hostname` prints), from /proc.
pub fn hostname() -> Result<String, CliError> {
    const PATH: &str = "/proc/sys/kernel/hostname";
    let text = std::fs::read_to_string(PATH).map_err(|source| CliError::Io {
        what: "cannot read this machine's hostname (pass --host NAME) from",
        path: PathBuf::from(PATH),
        source,
    })?;
    Ok(text.trim().to_string())
}

/// `--state-dir`, else the manifest's `[fort] state_dir`, else the default for this user.
pub fn state_dir(cli: &Cli, manifest: Option<&Manifest>) -> PathBuf {
    if let Some(d) = &cli.state_dir {
        return absolute(d);
    }
    if let Some(d) = manifest.and_then(|m| m.state_dir.clone()) {
        return d;
    }
    default_state_dir()
}

pub fn default_state_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/fort");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("fort");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/fort")
}

pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A context over a store (read-only stores for plan and the read commands), with the
/// manifest's settings.
pub fn ctx(
    state_dir: &Path,
    store: SqliteStore,
    progress: bool,
    manifest: Option<&Manifest>,
) -> Arc<Ctx> {
    Arc::new(
        Ctx::new(
            state_dir.to_path_buf(),
            Arc::new(Mutex::new(store)),
            progress,
        )
        .with_uid_range(manifest.and_then(|m| m.uid_range)),
    )
}

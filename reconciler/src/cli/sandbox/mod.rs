//! The sandbox service behind `fort mcp --host` and `fort serve` (docs/sandboxes.md): create,
//! list, extend and destroy sandboxes (each a file in `state_dir/sandboxes/` the watch loop
//! applies), relay agent tools to them, and reap the ones whose time is up.

pub mod mcp;
mod relay;
pub mod tools;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::args::{Cli, Command};
use super::watch::Passes;
use super::{session, CliError};
use crate::address::{Address, Kind};
use crate::host::sandboxes as files;
use crate::manifest::{self, Manifest, Source};
use crate::sandbox::{self as pure, SandboxError};
use crate::state::{SqliteStore, StateStore, Status};

/// A tool call that failed: `Params` is the caller's mistake (a JSON-RPC error), `Failed` a
/// result the model can read (`isError`).
#[derive(Debug)]
pub enum ToolError {
    Params(String),
    Failed(String),
}

impl From<SandboxError> for ToolError {
    fn from(e: SandboxError) -> Self {
        ToolError::Failed(e.to_string())
    }
}

impl From<CliError> for ToolError {
    fn from(e: CliError) -> Self {
        ToolError::Failed(crate::resources::error_chain(&e))
    }
}

/// What every request shares.
pub struct Core {
    file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    host: Option<String>,
    pub wake: tokio::sync::mpsc::UnboundedSender<()>,
    pub passes: Arc<Passes>,
    /// Held while a create picks a name, checks the limits and writes its file, so two
    /// creates never take the same name or the last free place twice.
    admit: tokio::sync::Mutex<()>,
    agents: tokio::sync::Mutex<HashMap<String, Arc<crate::host::agent::Client>>>,
}

/// A CLI with the global flags of `cli` only: what the session helpers read.
fn bare_cli(file: Option<PathBuf>, state_dir: Option<PathBuf>, host: Option<String>) -> Cli {
    Cli {
        file,
        state_dir,
        host,
        json: false,
        verbose: 0,
        command: Command::Schema,
    }
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// The last `n` lines of a console log, for a create that failed.
fn console_tail(path: &str, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(64 << 10)..]).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Core {
    pub fn new(
        cli: &Cli,
        wake: tokio::sync::mpsc::UnboundedSender<()>,
        passes: Arc<Passes>,
    ) -> Core {
        Core {
            file: cli.file.clone().map(|f| session::absolute(&f)),
            state_dir: cli.state_dir.clone().map(|d| session::absolute(&d)),
            host: cli.host.clone(),
            wake,
            passes,
            admit: tokio::sync::Mutex::new(()),
            agents: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn cli(&self) -> Cli {
        bare_cli(self.file.clone(), self.state_dir.clone(), self.host.clone())
    }

    fn load(&self) -> Result<(Manifest, PathBuf), ToolError> {
        let cli = self.cli();
        let m = session::load_manifest(&cli)?;
        let dir = session::sandbox_dir(&session::state_dir(&cli, Some(&m)));
        Ok((m, dir))
    }

    fn state_dir(&self, m: &Manifest) -> PathBuf {
        session::state_dir(&self.cli(), Some(m))
    }

    /// `sandbox_create`: write the file, have the loop apply it, answer once the agent does.
    pub async fn create(
        &self,
        template: &str,
        ttl: Option<&str>,
        name: Option<&str>,
    ) -> Result<Value, ToolError> {
        let t0 = Instant::now();
        let (vm, expires, dir, state_dir) = {
            let _admit = self.admit.lock().await;
            let (m, dir) = self.load()?;
            let shape = pure::shape(&m, template)?;
            let secs = pure::ttl(template, shape, ttl)?;
            pure::check_room(&m, template, shape)?;
            let vm = match name {
                Some(n) => {
                    pure::check_name(&m, shape, n)?;
                    n.to_string()
                }
                None => {
                    let taken: BTreeSet<String> =
                        m.resources.keys().map(|a| a.name.clone()).collect();
                    pure::pick_name(template, &taken, random_u16)
                }
            };
            let now = files::now();
            let text = pure::file_text(&vm, template, shape, now, now + secs);
            let cli = self.cli();
            let new = Source {
                path: dir.join(format!("{vm}.toml")),
                dir: dir.clone(),
                text: text.clone(),
                sandbox: true,
            };
            let m2 = manifest::merge_with_new_sandbox(
                &session::manifest_path(&cli),
                &session::host_selection(&cli)?,
                &dir,
                new,
            )
            .map_err(|e| ToolError::Failed(format!("sandbox.{template}: {e}")))?;
            let state_dir = self.state_dir(&m2);
            check_memory(&m2, &state_dir, &vm)?;
            files::write(&dir, &vm, &text).map_err(|e| {
                ToolError::Failed(format!(
                    "cannot write the sandbox file in {}: {e}",
                    dir.display()
                ))
            })?;
            tracing::info!(
                "sandbox {vm}: created from sandbox.{template} (ttl {}); applying",
                pure::human(secs)
            );
            (vm, now + secs, dir, state_dir)
        };
        self.passes.wait_next(&self.wake).await;
        let addr = Address::new(Kind::Vm, &vm);
        let rec = SqliteStore::open_readonly(&state_dir)
            .and_then(|s| s.get(&addr))
            .map_err(|e| ToolError::Failed(crate::resources::error_chain(&e)))?;
        let started = rec
            .as_ref()
            .filter(|r| r.status == Status::Ready)
            .filter(|r| r.outputs.get("started").is_some_and(|s| !s.is_null()));
        let Some(r) = started else {
            let why = rec
                .as_ref()
                .and_then(|r| r.error.clone())
                .unwrap_or_else(|| "the pass did not create it (fort's log says why)".to_string());
            let tail = rec
                .as_ref()
                .and_then(|r| r.outputs.get("console_log").and_then(Value::as_str))
                .map(|p| console_tail(p, 20))
                .unwrap_or_default();
            let detail = format!("create failed: {why}; removed");
            if let Ok(s) = SqliteStore::open(&state_dir) {
                let _ = s.note(&addr, None, "sandbox", &detail);
            }
            let _ = files::remove(&dir, &vm);
            tracing::warn!("sandbox {vm}: {detail}");
            // Answered once what it left (drive, run dir, uid) is cleaned up too.
            self.passes.wait_next(&self.wake).await;
            let mut msg = format!("sandbox {vm} did not start: {why}");
            if !tail.is_empty() {
                msg.push_str(&format!("\nlast lines of its console:\n{tail}"));
            }
            return Err(ToolError::Failed(msg));
        };
        if let Ok(s) = SqliteStore::open(&state_dir) {
            let _ = s.note(
                &addr,
                None,
                "sandbox",
                &format!(
                    "created from sandbox.{template}; expires {}",
                    rfc3339(expires)
                ),
            );
        }
        let _ = files::touch(&dir, &vm);
        let ready_ms = t0.elapsed().as_millis() as u64;
        Ok(json!({
            "id": vm,
            "template": template,
            "ip": r.outputs.pointer("/network/ip"),
            "ready_ms": ready_ms,
            "boot_ms": r.outputs.get("boot_ms"),
            "expires": rfc3339(expires),
            "remaining_s": expires.saturating_sub(files::now()),
        }))
    }

    /// `sandbox_list`: every sandbox with its state and remaining time.
    pub fn list(&self) -> Result<Value, ToolError> {
        let (m, dir) = self.load()?;
        let store = SqliteStore::open_readonly(&self.state_dir(&m)).ok();
        let now = files::now();
        let mut out = Vec::new();
        for i in m.instances.values() {
            let rec = store
                .as_ref()
                .and_then(|s| s.get(&Address::new(Kind::Vm, &i.vm)).ok().flatten());
            let state = match &rec {
                None => "creating",
                Some(r) if r.status == Status::Failed => "failed",
                Some(r) if r.outputs.get("started").is_some_and(|s| !s.is_null()) => "running",
                Some(_) => "creating",
            };
            out.push(json!({
                "id": i.vm,
                "template": i.sandbox,
                "state": state,
                "ip": rec.as_ref().and_then(|r| r.outputs.pointer("/network/ip").cloned()),
                "created": rfc3339(i.created),
                "expires": rfc3339(i.expires),
                "remaining_s": i.expires.saturating_sub(now),
                "idle_timeout_s": i.idle_timeout,
                "last_activity": files::last_activity(&dir, &i.vm).map(rfc3339),
            }));
        }
        for a in m.held.iter().filter(|a| a.kind == Kind::Vm) {
            if let ToolError::Failed(why) = not_found(&m, &a.name) {
                out.push(json!({"id": a.name, "state": "invalid file", "problem": why}));
            }
        }
        // Gone from its file (expired, destroyed) but not yet from the host: still listed,
        // so an empty list means nothing is left.
        if let Some(recorded) = store.as_ref().and_then(|s| s.resources().ok()) {
            for a in crate::watch::sandbox_owned(&recorded) {
                if a.kind == Kind::Vm && !m.instances.contains_key(&a.name) {
                    out.push(json!({"id": a.name, "state": "destroying", "remaining_s": 0}));
                }
            }
        }
        for d in &m.sandbox_problems {
            tracing::warn!("{d}");
        }
        Ok(json!({ "sandboxes": out }))
    }

    /// `sandbox_extend`: the sandbox now expires `ttl` from now (at most its `max_ttl`).
    pub fn extend(&self, id: &str, ttl: &str) -> Result<Value, ToolError> {
        let (m, dir) = self.load()?;
        let i = m.instances.get(id).ok_or_else(|| not_found(&m, id))?;
        let shape = pure::shape(&m, &i.sandbox)?;
        let secs = pure::ttl(&i.sandbox, shape, Some(ttl))?;
        let expires = files::now() + secs;
        let text = files::read(&dir, id)
            .map_err(|e| ToolError::Failed(format!("cannot read sandbox {id}'s file: {e}")))?;
        files::write(&dir, id, &pure::with_expiry(&text, expires))
            .map_err(|e| ToolError::Failed(format!("cannot write sandbox {id}'s file: {e}")))?;
        let addr = Address::new(Kind::Vm, id);
        if let Ok(s) = SqliteStore::open(&self.state_dir(&m)) {
            let _ = s.note(
                &addr,
                None,
                "sandbox",
                &format!("extended: expires {}", rfc3339(expires)),
            );
        }
        tracing::info!("sandbox {id}: extended to {}", rfc3339(expires));
        Ok(json!({"id": id, "expires": rfc3339(expires), "remaining_s": secs}))
    }

    /// `sandbox_destroy`: remove the file (history says why), have the loop destroy the rest.
    pub async fn destroy(&self, id: &str) -> Result<Value, ToolError> {
        let (m, dir) = self.load()?;
        if !m.instances.contains_key(id) {
            return Err(not_found(&m, id));
        }
        let state_dir = self.state_dir(&m);
        let addr = Address::new(Kind::Vm, id);
        if let Ok(s) = SqliteStore::open(&state_dir) {
            let _ = s.note(
                &addr,
                None,
                "sandbox",
                "destroyed: sandbox_destroy was called",
            );
        }
        files::remove(&dir, id)
            .map_err(|e| ToolError::Failed(format!("cannot remove sandbox {id}'s file: {e}")))?;
        self.agents.lock().await.remove(id);
        tracing::info!("sandbox {id}: destroy requested");
        self.passes.wait_next(&self.wake).await;
        let left = SqliteStore::open_readonly(&state_dir)
            .and_then(|s| s.get(&addr))
            .ok()
            .flatten()
            .is_some();
        if left {
            return Err(ToolError::Failed(format!(
                "sandbox {id}'s file is removed but its VM is not destroyed yet (fort's log says why); the next pass tries again"
            )));
        }
        Ok(json!({"id": id, "destroyed": true}))
    }
}

/// The error for an id that is not a sandbox here: unknown, or its file does not validate.
pub(super) fn not_found(m: &Manifest, id: &str) -> ToolError {
    if m.held.contains(&Address::new(Kind::Vm, id)) {
        let why: Vec<String> = m
            .sandbox_problems
            .iter()
            .filter(|d| d.file.file_stem().is_some_and(|s| s == id))
            .map(ToString::to_string)
            .collect();
        return ToolError::Failed(format!(
            "sandbox {id}'s file does not validate, so it is left as it is until the file is fixed or removed: {}",
            why.join("; ")
        ));
    }
    SandboxError::Unknown(id.to_string()).into()
}

/// Is there memory for one more VM? The plan's capacity check over the manifest with it, as
/// if every sandbox not running yet were started with it.
fn check_memory(m: &Manifest, state_dir: &std::path::Path, vm: &str) -> Result<(), ToolError> {
    use crate::plan::{capacity, Change, Op};
    let recorded = SqliteStore::open_readonly(state_dir)
        .and_then(|s| s.resources())
        .unwrap_or_default();
    let running = |a: &Address| {
        recorded
            .get(a)
            .is_some_and(|r| r.outputs.get("started").is_some_and(|s| !s.is_null()))
    };
    let changes: Vec<Change> = m
        .instances
        .keys()
        .map(|n| Address::new(Kind::Vm, n))
        .filter(|a| a.name == vm || !running(a))
        .map(|address| Change {
            address,
            op: Op::Create,
            reasons: vec![],
            data_loss: false,
            protected: false,
            fields: vec![],
            details: vec![],
        })
        .collect();
    let (memory_total, memory_available) = crate::host::meminfo();
    let host = capacity::Host {
        memory_total,
        memory_available,
        ..Default::default()
    };
    capacity::check(&changes, &m.resources, &host)
        .map_err(|e| ToolError::Failed(format!("no room on this host for sandbox {vm}: {e}")))
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        // Never fails on Linux ≥ 3.17; the time is a good enough fallback for a name.
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return n as u16;
    }
    u16::from_le_bytes(b)
}

/// Remove the files of sandboxes whose time is up, each with the reason in its history, so
/// the pass that follows destroys them. Returns when the next one is due (unix seconds).
pub fn reap(cli: &Cli) -> Option<u64> {
    // The manifest only for `[fort] state_dir`: reaping reads the files' `[instance]` tables,
    // also when the manifest comes from git (`fort watch --git`) or does not load.
    let state_dir = match &cli.state_dir {
        Some(_) => session::state_dir(cli, None),
        None => session::state_dir(cli, session::load_manifest(cli).ok().as_ref()),
    };
    let dir = session::sandbox_dir(&state_dir);
    if !manifest::has_sandboxes(&dir) {
        return None;
    }
    files::remove_temporaries(&dir);
    let now = files::now();
    let mut left = Vec::new();
    for i in &manifest::sandbox_instances(&dir) {
        let last = files::last_activity(&dir, &i.vm);
        let Some(reason) = pure::expired(i, now, last) else {
            left.push(i.clone());
            continue;
        };
        let addr = Address::new(Kind::Vm, &i.vm);
        let detail = format!("expired: {reason}; destroying");
        match SqliteStore::open(&state_dir).and_then(|s| s.note(&addr, None, "sandbox", &detail)) {
            Ok(()) => {}
            Err(e) => {
                // Never destroyed without the reason written down: try again next pass.
                tracing::error!(
                    "sandbox {}: {detail}, but its history cannot be written: {}",
                    i.vm,
                    crate::resources::error_chain(&e)
                );
                left.push(i.clone());
                continue;
            }
        }
        match files::remove(&dir, &i.vm) {
            Ok(_) => tracing::info!("sandbox {}: {detail}", i.vm),
            Err(e) => tracing::error!("sandbox {}: cannot remove its file: {e}", i.vm),
        }
    }
    pure::next_due(left.iter(), &|n| files::last_activity(&dir, n))
}

/// How long until `due` (unix seconds), at least a second.
pub fn reap_due_in(due: Option<u64>) -> Option<Duration> {
    let due = due?;
    Some(Duration::from_secs(due.saturating_sub(files::now()).max(1)))
}

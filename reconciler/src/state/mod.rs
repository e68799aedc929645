//! Recorded state: what fort created, with which spec and outputs, and the history of it.
//!
//! The store is SQLite in WAL mode (`state_dir/state.db`, see `sqlite.rs`); every action's
//! result is committed as soon as the action finishes, so a killed apply loses nothing.

pub mod lazy_json;
pub mod leases;
pub mod lock;
pub mod migrations;
pub mod sqlite;
pub mod uids;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::address::{Address, Kind};

pub use lazy_json::LazyJson;
pub use lock::{LockError, StateLock};
pub use sqlite::SqliteStore;

/// The lifecycle status of a recorded resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The last action on it succeeded; its outputs describe the host.
    Ready,
    /// The last action on it failed; the next plan redoes it. Its outputs describe what the
    /// failed action left on the host (usually nothing new: actions clean up after themselves).
    Failed,
    /// An action on it started and has not finished: recorded before the action touches the
    /// host, so a fort killed mid-action leaves a row saying what it was doing (`step`) and what
    /// it had made so far (`outputs`). Seen by a later run, it means "interrupted".
    Pending,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ready => "ready",
            Status::Failed => "failed",
            Status::Pending => "pending",
        }
    }
}

/// One row of the `resources` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub address: Address,
    pub kind: Kind,
    /// `Spec::hash` of the spec it was applied with (compared before the specs themselves);
    /// empty for a resource that was never applied successfully (see [`Record::applied_once`]).
    pub spec_hash: String,
    /// The canonical spec the resource was last applied with (parsed on first use); JSON
    /// `null` for a resource whose first action has not succeeded yet.
    pub spec: LazyJson,
    /// What the resource produced: paths, hashes, IP/MAC, PID… (an object).
    pub outputs: serde_json::Value,
    /// The addresses it referenced when applied (so destroy order works without the manifest).
    pub deps: Vec<Address>,
    pub status: Status,
    /// The error of the last failed action, if `status` is `Failed`.
    pub error: Option<String>,
    /// The last step an unfinished or failed action completed (`vm.spawned`, …), if any.
    pub step: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl Record {
    /// The row of `resource` applied successfully with `outputs`.
    pub fn applied(
        resource: &crate::manifest::Resource,
        outputs: serde_json::Value,
        created_at: i64,
        updated_at: i64,
    ) -> Record {
        Record {
            address: resource.address.clone(),
            kind: resource.address.kind,
            spec_hash: resource.spec_hash().to_string(),
            spec: resource.spec_json().into(),
            outputs,
            deps: resource.deps.clone(),
            status: Status::Ready,
            error: None,
            step: None,
            created_at,
            updated_at,
        }
    }

    /// The row written before the first action on `resource` touches the host: no spec yet
    /// (nothing was applied), empty outputs, status `pending`.
    pub fn intent(resource: &crate::manifest::Resource, now: i64) -> Record {
        Record {
            address: resource.address.clone(),
            kind: resource.address.kind,
            spec_hash: String::new(),
            spec: serde_json::Value::Null.into(),
            outputs: serde_json::json!({}),
            deps: resource.deps.clone(),
            status: Status::Pending,
            error: None,
            step: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Has an action on it ever succeeded? (A row without a spec was written as the intent of
    /// a create that has not finished, or that failed.)
    pub fn applied_once(&self) -> bool {
        !self.spec_hash.is_empty()
    }

    /// Whether the row can stand for anything on the host: a resource applied once, or one
    /// whose unfinished first action recorded a step.
    pub fn made_anything(&self) -> bool {
        self.applied_once() || self.outputs.as_object().is_some_and(|o| !o.is_empty())
    }

    /// Recorded before the action finished: `pending` (interrupted) or `failed`.
    pub fn unfinished(&self) -> bool {
        self.status != Status::Ready
    }
}

/// One row of the `history` table: a transition of one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub address: Address,
    pub run_id: Option<i64>,
    /// Unix milliseconds.
    pub at: i64,
    /// `create`, `update`, `restart`, `replace`, `destroy`, `fail`, …
    pub action: String,
    /// The status before and after (`None` = not recorded).
    pub from_status: Option<Status>,
    pub to_status: Option<Status>,
    /// A human sentence: the reasons from the plan, or the error.
    pub detail: String,
}

/// One row of the `runs` table: one `fort apply`/`destroy`/`watch` pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// `$USER` (or the uid) of whoever ran it.
    pub user: String,
    pub pid: u32,
    /// The command line, e.g. `fort apply --yes`.
    pub command: String,
    /// The plan JSON it executed.
    pub plan: serde_json::Value,
    /// `None` while running; then `ok`, `failed`, `interrupted`.
    pub result: Option<String>,
    /// The git commit it applied (`fort apply --git`, `fort watch --git`).
    pub commit: Option<CommitInfo>,
}

/// A git commit as runs and `fort status` name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// The full hex id.
    pub id: String,
    /// `Name <email>`.
    pub author: String,
    /// The author date, Unix seconds.
    pub date: i64,
    /// The first line of the message.
    pub subject: String,
}

pub type RunId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open state database {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path} has schema version {found}, newer than this fort supports ({supported}); upgrade fort, the database was left untouched")]
    TooNew {
        path: std::path::PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("cannot migrate state database {path} from schema version {from} to {to}")]
    Migrate {
        path: std::path::PathBuf,
        from: i64,
        to: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("corrupt row for {address} in state database: {what}")]
    Corrupt { address: String, what: String },
    #[error("network.{network} ({cidr}) has no free address left for {owner}")]
    Exhausted {
        network: String,
        cidr: String,
        owner: String,
    },
    #[error("{owner} asks for {ip}, which network.{network} already leased to {holder}")]
    Taken {
        network: String,
        owner: String,
        ip: std::net::Ipv4Addr,
        holder: String,
    },
    #[error("no free uid left for {owner} in uid_range {first}-{last}: every uid in it is held by another VM or used on this host (set a larger `[fort] uid_range`)")]
    NoUid {
        owner: String,
        first: u32,
        last: u32,
    },
    #[error("cannot create state directory {path}")]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The recorded-state operations fort needs. Implemented by [`SqliteStore`].
pub trait StateStore {
    /// Every recorded resource, by address.
    fn resources(&self) -> Result<BTreeMap<Address, Record>, StateError>;
    fn get(&self, address: &Address) -> Result<Option<Record>, StateError>;
    /// Insert or replace a resource row and append a history entry, in one transaction.
    fn put(
        &self,
        record: &Record,
        run: Option<RunId>,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError>;
    /// Delete a resource row and append a history entry, in one transaction.
    fn remove(
        &self,
        address: &Address,
        run: Option<RunId>,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError>;
    /// Record that an action on `intent.address` is starting, before it touches the host: an
    /// existing row becomes `pending` (spec and outputs stay: they still describe the host);
    /// a new one is inserted as `intent` is. No history entry (the action's result adds one).
    fn intend(&self, intent: &Record) -> Result<(), StateError>;
    /// Replace the outputs of a row whose action is under way and name the step it completed
    /// (no history entry: steps are many and the row says where the action is).
    fn progress(
        &self,
        address: &Address,
        outputs: &serde_json::Value,
        step: &str,
    ) -> Result<(), StateError>;
    /// Set a row's status (with the error for `Failed`; `None` clears it) and append a history
    /// entry, in one transaction. Spec and outputs stay.
    fn set_status(
        &self,
        address: &Address,
        status: Status,
        error: Option<&str>,
        run: Option<RunId>,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError>;
    /// Append a history entry without changing the resource row.
    fn note(
        &self,
        address: &Address,
        run: Option<RunId>,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError>;
    /// The resources whose last history entry is a failure, with the error: what a plan says
    /// of a create that failed and left no row.
    fn last_failures(&self) -> Result<BTreeMap<Address, String>, StateError>;
    /// The history of one resource, oldest first (also after it was destroyed).
    fn history(&self, address: &Address) -> Result<Vec<HistoryEntry>, StateError>;
    fn begin_run(&self, command: &str, plan: &serde_json::Value) -> Result<RunId, StateError>;
    fn finish_run(&self, run: RunId, result: &str) -> Result<(), StateError>;
    /// Record the git commit a run applies.
    fn set_run_commit(&self, run: RunId, commit: &CommitInfo) -> Result<(), StateError>;
    /// What following a git branch has seen so far (JSON, owned by `crate::gitops`).
    fn follow(&self) -> Result<Option<serde_json::Value>, StateError>;
    fn set_follow(&self, follow: &serde_json::Value) -> Result<(), StateError>;
    /// Most recent first.
    fn runs(&self, limit: usize) -> Result<Vec<Run>, StateError>;
    /// A digest of every resource row (address, spec hash, status, outputs, updated_at): equal
    /// digests mean nothing was recorded in between (used to refuse stale saved plans).
    fn digest(&self) -> Result<String, StateError>;
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

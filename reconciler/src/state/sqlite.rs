//! The SQLite implementation of [`super::StateStore`]: `state_dir/state.db` in WAL mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use sha2::{Digest, Sha256};

use super::migrations::{self, SCHEMA_VERSION};
use super::{now_ms, HistoryEntry, LazyJson, Record, Run, RunId, StateError, StateStore, Status};
use crate::address::Address;

pub struct SqliteStore {
    pub(super) conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Open (creating the directory and database if needed) and migrate. Refuses, without
    /// writing anything, a database from a newer fort.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StateError> {
        create_private_dir(state_dir)?;
        let path = state_dir.join("state.db");
        let conn = Connection::open(&path).map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Self::prepare(conn, path, true)?;
        // Root's only (SQLite gives its WAL files the database's mode): the state dir is
        // traversable by VMs' uids.
        crate::host::confine::files::private_files(state_dir).map_err(|e| {
            StateError::CreateDir {
                path: state_dir.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        Ok(store)
    }

    /// Open for reading. A state directory without a database reads as empty state, and
    /// nothing is created: `fort plan` on a fresh host leaves no trace.
    pub fn open_readonly(state_dir: &Path) -> Result<SqliteStore, StateError> {
        let path = state_dir.join("state.db");
        if !path.exists() {
            let conn = Connection::open_in_memory().map_err(|source| StateError::Open {
                path: path.clone(),
                source,
            })?;
            return Self::prepare(conn, path, true);
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        Self::prepare(conn, path, false)
    }

    fn prepare(
        mut conn: Connection,
        path: PathBuf,
        writable: bool,
    ) -> Result<SqliteStore, StateError> {
        let open_err = |source| StateError::Open {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // Check the version before anything that could write (journal mode, migrations).
        let found = migrations::current_version(&conn).map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if writable {
            // WAL lets `fort plan` read beside an apply; FULL makes each committed action
            // survive power loss, which matters more than speed for a few rows per action.
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(open_err)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(open_err)?;
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(open_err)?;
            migrations::migrate(&mut conn).map_err(|source| StateError::Migrate {
                path: path.clone(),
                from: found,
                to: SCHEMA_VERSION,
                source,
            })?;
        } else if found < SCHEMA_VERSION {
            return Err(StateError::Migrate {
                path,
                from: found,
                to: SCHEMA_VERSION,
                source: rusqlite::Error::InvalidQuery,
            });
        }
        Ok(SqliteStore { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `PRAGMA journal_mode` (for tests and `fort doctor`).
    pub fn journal_mode(&self) -> Result<String, StateError> {
        Ok(self
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))?)
    }

    fn record_from_row(row: &Row<'_>) -> rusqlite::Result<RawRecord> {
        Ok(RawRecord {
            address: row.get(0)?,
            kind: row.get(1)?,
            spec_hash: row.get(2)?,
            spec: row.get(3)?,
            outputs: row.get(4)?,
            deps: row.get(5)?,
            status: row.get(6)?,
            error: row.get(7)?,
            created_at: row.get(8)?,
            updated_at: row.get(9)?,
            step: row.get(10)?,
        })
    }

    fn history_entry(
        &self,
        address: &Address,
        run: Option<RunId>,
        action: &str,
        from: Option<Status>,
        to: Option<Status>,
        detail: &str,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO history(address, run_id, at, action, from_status, to_status, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                address.to_string(),
                run,
                now_ms(),
                action,
                from.map(Status::as_str),
                to.map(Status::as_str),
                detail
            ],
        )?;
        Ok(())
    }

    fn status_of(&self, address: &Address) -> Result<Option<Status>, StateError> {
        let s: Option<String> = self
            .conn
            .query_row(
                "SELECT status FROM resources WHERE address = ?1",
                [address.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        s.map(|s| parse_status(&address.to_string(), &s))
            .transpose()
    }
}

const COLUMNS: &str =
    "address, kind, spec_hash, spec, outputs, deps, status, error, created_at, updated_at, step";

struct RawRecord {
    address: String,
    kind: String,
    spec_hash: String,
    spec: String,
    outputs: String,
    deps: String,
    status: String,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
    step: Option<String>,
}

impl RawRecord {
    fn decode(self) -> Result<Record, StateError> {
        let corrupt = |what: String| StateError::Corrupt {
            address: self.address.clone(),
            what,
        };
        let address: Address = self.address.parse().map_err(|e| corrupt(format!("{e}")))?;
        let kind = self.kind.parse().map_err(|e| corrupt(format!("{e}")))?;
        let json = |s: &str, col: &str| -> Result<serde_json::Value, StateError> {
            serde_json::from_str(s).map_err(|e| corrupt(format!("{col} is not JSON: {e}")))
        };
        let spec =
            LazyJson::parse(self.spec).map_err(|e| corrupt(format!("spec is not JSON: {e}")))?;
        let outputs = json(&self.outputs, "outputs")?;
        let deps: Vec<Address> =
            serde_json::from_str(&self.deps).map_err(|e| corrupt(format!("deps: {e}")))?;
        Ok(Record {
            status: parse_status(&self.address, &self.status)?,
            address,
            kind,
            spec_hash: self.spec_hash,
            spec,
            outputs,
            deps,
            error: self.error,
            step: self.step,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn parse_status(address: &str, s: &str) -> Result<Status, StateError> {
    match s {
        "ready" => Ok(Status::Ready),
        "failed" => Ok(Status::Failed),
        "pending" => Ok(Status::Pending),
        other => Err(StateError::Corrupt {
            address: address.to_string(),
            what: format!("unknown status `{other}`"),
        }),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()))
}

impl StateStore for SqliteStore {
    fn resources(&self) -> Result<BTreeMap<Address, Record>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM resources"))?;
        let rows = stmt.query_map([], Self::record_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            let rec = row?.decode()?;
            out.push((rec.address.clone(), rec));
        }
        // Built in bulk (one sort, then a linear fill) rather than by 10,000 tree inserts.
        Ok(BTreeMap::from_iter(out))
    }

    fn get(&self, address: &Address) -> Result<Option<Record>, StateError> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM resources WHERE address = ?1"),
                [address.to_string()],
                Self::record_from_row,
            )
            .optional()?;
        raw.map(RawRecord::decode).transpose()
    }

    fn put(
        &self,
        rec: &Record,
        run: Option<RunId>,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        let before = self.status_of(&rec.address)?;
        self.conn.execute(
            "INSERT INTO resources(address, kind, spec_hash, spec, outputs, deps, status, error, created_at, updated_at, step)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(address) DO UPDATE SET
                 kind = excluded.kind, spec_hash = excluded.spec_hash, spec = excluded.spec,
                 outputs = excluded.outputs, deps = excluded.deps, status = excluded.status,
                 error = excluded.error, updated_at = excluded.updated_at, step = excluded.step",
            params![
                rec.address.to_string(),
                rec.kind.as_str(),
                rec.spec_hash,
                rec.spec.to_json_string(),
                rec.outputs.to_string(),
                serde_json::to_string(&rec.deps).unwrap_or_else(|_| "[]".to_string()),
                rec.status.as_str(),
                rec.error,
                rec.created_at,
                rec.updated_at,
                rec.step
            ],
        )?;
        self.history_entry(&rec.address, run, action, before, Some(rec.status), detail)?;
        tx.commit()?;
        Ok(())
    }

    fn remove(
        &self,
        address: &Address,
        run: Option<RunId>,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        let before = self.status_of(address)?;
        self.conn.execute(
            "DELETE FROM resources WHERE address = ?1",
            [address.to_string()],
        )?;
        self.history_entry(address, run, action, before, None, detail)?;
        tx.commit()?;
        Ok(())
    }

    fn intend(&self, intent: &Record) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        let n = self.conn.execute(
            "UPDATE resources SET status = 'pending', step = NULL, updated_at = ?1 WHERE address = ?2",
            params![now_ms(), intent.address.to_string()],
        )?;
        if n == 0 {
            self.conn.execute(
                &format!("INSERT INTO resources({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![
                    intent.address.to_string(),
                    intent.kind.as_str(),
                    intent.spec_hash,
                    intent.spec.to_json_string(),
                    intent.outputs.to_string(),
                    serde_json::to_string(&intent.deps).unwrap_or_else(|_| "[]".to_string()),
                    Status::Pending.as_str(),
                    intent.error,
                    intent.created_at,
                    intent.updated_at,
                    intent.step
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn progress(
        &self,
        address: &Address,
        outputs: &serde_json::Value,
        step: &str,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE resources SET outputs = ?1, step = ?2, updated_at = ?3 WHERE address = ?4",
            params![outputs.to_string(), step, now_ms(), address.to_string()],
        )?;
        Ok(())
    }

    fn set_status(
        &self,
        address: &Address,
        status: Status,
        error: Option<&str>,
        run: Option<RunId>,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        let before = self.status_of(address)?;
        self.conn.execute(
            "UPDATE resources SET status = ?1, error = ?2, updated_at = ?3 WHERE address = ?4",
            params![status.as_str(), error, now_ms(), address.to_string()],
        )?;
        self.history_entry(address, run, action, before, Some(status), detail)?;
        tx.commit()?;
        Ok(())
    }

    fn note(
        &self,
        address: &Address,
        run: Option<RunId>,
        action: &str,
        detail: &str,
    ) -> Result<(), StateError> {
        let status = self.status_of(address)?;
        self.history_entry(address, run, action, status, status, detail)
    }

    fn last_failures(&self) -> Result<BTreeMap<Address, String>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT h.address, h.detail FROM history h
             JOIN (SELECT address, MAX(id) AS id FROM history GROUP BY address) m ON h.id = m.id
             WHERE h.action = 'fail'",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (a, detail) = row?;
            let Ok(address) = a.parse::<Address>() else {
                continue;
            };
            // `create failed: ERROR`
            let error = detail
                .split_once(" failed: ")
                .map_or(detail.as_str(), |x| x.1);
            out.insert(address, error.to_string());
        }
        Ok(out)
    }

    fn history(&self, address: &Address) -> Result<Vec<HistoryEntry>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, address, run_id, at, action, from_status, to_status, detail
             FROM history WHERE address = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([address.to_string()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, String>(7)?,
            ))
        })?;
        let a = address.to_string();
        let mut out = Vec::new();
        for row in rows {
            let (id, run_id, at, action, from, to, detail) = row?;
            out.push(HistoryEntry {
                id,
                address: address.clone(),
                run_id,
                at,
                action,
                from_status: from.map(|s| parse_status(&a, &s)).transpose()?,
                to_status: to.map(|s| parse_status(&a, &s)).transpose()?,
                detail,
            });
        }
        Ok(out)
    }

    fn begin_run(&self, command: &str, plan: &serde_json::Value) -> Result<RunId, StateError> {
        self.conn.execute(
            "INSERT INTO runs(started_at, user, pid, command, plan) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                now_ms(),
                user(),
                std::process::id(),
                command,
                plan.to_string()
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    fn finish_run(&self, run: RunId, result: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE runs SET finished_at = ?1, result = ?2 WHERE id = ?3",
            params![now_ms(), result, run],
        )?;
        Ok(())
    }

    fn set_run_commit(&self, run: RunId, c: &super::CommitInfo) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE runs SET commit_id = ?1, commit_author = ?2, commit_date = ?3, commit_subject = ?4 WHERE id = ?5",
            params![c.id, c.author, c.date, c.subject, run],
        )?;
        Ok(())
    }

    fn follow(&self) -> Result<Option<serde_json::Value>, StateError> {
        let v: Option<String> = self
            .conn
            .query_row("SELECT value FROM gitops WHERE key = 'follow'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    fn set_follow(&self, follow: &serde_json::Value) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO gitops(key, value, updated_at) VALUES('follow', ?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![follow.to_string(), now_ms()],
        )?;
        Ok(())
    }

    fn runs(&self, limit: usize) -> Result<Vec<Run>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, started_at, finished_at, user, pid, command, plan, result,
                    commit_id, commit_author, commit_date, commit_subject
             FROM runs ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<String>>(7)?,
                (
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<i64>>(10)?,
                    r.get::<_, Option<String>>(11)?,
                ),
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, started_at, finished_at, user, pid, command, plan, result, c) = row?;
            let commit = match c {
                (Some(id), author, date, subject) => Some(super::CommitInfo {
                    id,
                    author: author.unwrap_or_default(),
                    date: date.unwrap_or(0),
                    subject: subject.unwrap_or_default(),
                }),
                _ => None,
            };
            out.push(Run {
                id,
                started_at,
                finished_at,
                user,
                pid,
                command,
                plan: serde_json::from_str(&plan).unwrap_or(serde_json::Value::Null),
                result,
                commit,
            });
        }
        Ok(out)
    }

    fn digest(&self) -> Result<String, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT address, spec_hash, status, outputs, updated_at FROM resources ORDER BY address",
        )?;
        let mut rows = stmt.query([])?;
        let mut h = Sha256::new();
        while let Some(r) = rows.next()? {
            for i in 0..4 {
                let s: String = r.get(i)?;
                h.update(s.as_bytes());
                h.update([0]);
            }
            let t: i64 = r.get(4)?;
            h.update(t.to_le_bytes());
        }
        Ok(hex::encode(h.finalize()))
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;

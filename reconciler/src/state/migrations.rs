//! State database schema versions and the migrations between them.
//!
//! A database is never deleted and recreated on a version change (that would orphan drives,
//! TAPs and processes): it is migrated forward one version at a time, or refused untouched
//! when it comes from a newer fort.

use rusqlite::{Connection, OptionalExtension};

/// The schema version this fort writes.
pub const SCHEMA_VERSION: i64 = 5;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: everything.
    "CREATE TABLE IF NOT EXISTS meta (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );
     CREATE TABLE runs (
         id          INTEGER PRIMARY KEY AUTOINCREMENT,
         started_at  INTEGER NOT NULL,
         finished_at INTEGER,
         user        TEXT NOT NULL,
         pid         INTEGER NOT NULL,
         command     TEXT NOT NULL,
         plan        TEXT NOT NULL,
         result      TEXT
     );
     CREATE TABLE resources (
         address    TEXT PRIMARY KEY,
         kind       TEXT NOT NULL,
         spec_hash  TEXT NOT NULL,
         spec       TEXT NOT NULL,
         outputs    TEXT NOT NULL,
         deps       TEXT NOT NULL,
         status     TEXT NOT NULL,
         error      TEXT,
         created_at INTEGER NOT NULL,
         updated_at INTEGER NOT NULL
     );
     CREATE TABLE history (
         id          INTEGER PRIMARY KEY AUTOINCREMENT,
         address     TEXT NOT NULL,
         run_id      INTEGER REFERENCES runs(id),
         at          INTEGER NOT NULL,
         action      TEXT NOT NULL,
         from_status TEXT,
         to_status   TEXT,
         detail      TEXT NOT NULL
     );
     CREATE INDEX history_address ON history(address, id);",
    // 1 → 2: addresses leased from networks (VM attachments), stable until released.
    "CREATE TABLE leases (
         network    TEXT NOT NULL,
         owner      TEXT NOT NULL,
         ip         TEXT NOT NULL,
         mac        TEXT NOT NULL UNIQUE,
         created_at INTEGER NOT NULL,
         PRIMARY KEY (network, owner),
         UNIQUE (network, ip)
     );",
    // 2 → 3: the last step an unfinished action completed (status `pending`), so the next run
    // knows where an interrupted apply stopped.
    "ALTER TABLE resources ADD COLUMN step TEXT;",
    // 3 → 4: the uid (and gid, the same number) each VM's processes run as, stable until the
    // VM is destroyed.
    "CREATE TABLE uids (
         owner      TEXT PRIMARY KEY,
         uid        INTEGER NOT NULL UNIQUE,
         created_at INTEGER NOT NULL
     );",
    // 4 → 5: following a git branch: the commit each run applied, and what the follower has
    // seen (converged, trying, skipped commits, fetch failures) as one JSON document.
    "ALTER TABLE runs ADD COLUMN commit_id TEXT;
     ALTER TABLE runs ADD COLUMN commit_author TEXT;
     ALTER TABLE runs ADD COLUMN commit_date INTEGER;
     ALTER TABLE runs ADD COLUMN commit_subject TEXT;
     CREATE TABLE gitops (
         key        TEXT PRIMARY KEY,
         value      TEXT NOT NULL,
         updated_at INTEGER NOT NULL
     );",
];

/// The version recorded in `meta`, or 0 for a database without fort's tables. Reads only.
pub fn current_version(conn: &Connection) -> rusqlite::Result<i64> {
    let has_meta: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !has_meta {
        return Ok(0);
    }
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Apply every pending migration, each in its own transaction. Returns the version before.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<i64> {
    let from = current_version(conn)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES('schema_version', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(i as i64 + 1).to_string()],
        )?;
        tx.commit()?;
    }
    conn.execute(
        "INSERT INTO meta(key, value) VALUES('fort_version', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [crate::VERSION],
    )?;
    Ok(from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn migrations_match_the_version() {
        assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    }

    #[test]
    fn fresh_database_migrates_to_current() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(current_version(&c).unwrap(), 0);
        assert_eq!(migrate(&mut c).unwrap(), 0);
        assert_eq!(current_version(&c).unwrap(), SCHEMA_VERSION);
        // Idempotent.
        assert_eq!(migrate(&mut c).unwrap(), SCHEMA_VERSION);
    }
}

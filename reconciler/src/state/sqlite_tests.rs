//! SQLite store tests on real database files.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::address::Kind;

fn rec(addr: &str, status: Status, t: i64) -> Record {
    let address: Address = addr.parse().unwrap();
    Record {
        kind: address.kind,
        address,
        spec_hash: format!("hash-{t}"),
        spec: serde_json::json!({"url": "file:///k"}).into(),
        outputs: serde_json::json!({"path": "/c/k"}),
        deps: vec!["rootfs.r".parse().unwrap()],
        status,
        error: None,
        step: None,
        created_at: t,
        updated_at: t,
    }
}

#[test]
fn round_trip_history_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(s.journal_mode().unwrap(), "wal");
    let empty = s.digest().unwrap();
    let run = s
        .begin_run("fort apply", &serde_json::json!({"changes": []}))
        .unwrap();
    s.put(
        &rec("kernel.k", Status::Ready, 10),
        Some(run),
        "create",
        "not yet created",
    )
    .unwrap();
    let d1 = s.digest().unwrap();
    assert_ne!(d1, empty);
    assert_eq!(s.digest().unwrap(), d1, "digest is stable");
    let got = s.get(&"kernel.k".parse().unwrap()).unwrap().unwrap();
    assert_eq!(got, rec("kernel.k", Status::Ready, 10));
    assert_eq!(got.kind, Kind::Kernel);

    // An update keeps created_at.
    s.put(
        &rec("kernel.k", Status::Ready, 20),
        Some(run),
        "update",
        "url changed",
    )
    .unwrap();
    let got = s.get(&"kernel.k".parse().unwrap()).unwrap().unwrap();
    assert_eq!((got.created_at, got.updated_at), (10, 20));
    assert_ne!(s.digest().unwrap(), d1);

    s.note(
        &"kernel.k".parse().unwrap(),
        Some(run),
        "fail",
        "update failed: boom",
    )
    .unwrap();
    s.remove(
        &"kernel.k".parse().unwrap(),
        Some(run),
        "destroy",
        "destroy requested",
    )
    .unwrap();
    assert!(s.get(&"kernel.k".parse().unwrap()).unwrap().is_none());
    assert_eq!(s.digest().unwrap(), empty);
    s.finish_run(run, "ok").unwrap();

    let h = s.history(&"kernel.k".parse().unwrap()).unwrap();
    let summary: Vec<(String, Option<Status>, Option<Status>, String)> = h
        .into_iter()
        .map(|e| (e.action, e.from_status, e.to_status, e.detail))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "create".into(),
                None,
                Some(Status::Ready),
                "not yet created".into()
            ),
            (
                "update".into(),
                Some(Status::Ready),
                Some(Status::Ready),
                "url changed".into()
            ),
            (
                "fail".into(),
                Some(Status::Ready),
                Some(Status::Ready),
                "update failed: boom".into()
            ),
            (
                "destroy".into(),
                Some(Status::Ready),
                None,
                "destroy requested".into()
            ),
        ]
    );
    let runs = s.runs(10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].result.as_deref(), Some("ok"));
    assert_eq!(runs[0].pid, std::process::id());
    assert_eq!(runs[0].command, "fort apply");
}

#[test]
fn reopen_keeps_data_and_runs_are_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        s.put(&rec("rootfs.r", Status::Failed, 5), None, "create", "x")
            .unwrap();
        s.begin_run("one", &serde_json::Value::Null).unwrap();
        s.begin_run("two", &serde_json::Value::Null).unwrap();
    }
    let s = SqliteStore::open_readonly(dir.path()).unwrap();
    let all = s.resources().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[&"rootfs.r".parse().unwrap()].status, Status::Failed);
    let names: Vec<String> = s.runs(10).unwrap().into_iter().map(|r| r.command).collect();
    assert_eq!(names, ["two", "one"]);
}

#[test]
fn readonly_on_a_fresh_dir_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let s = SqliteStore::open_readonly(&state).unwrap();
    assert!(s.resources().unwrap().is_empty());
    assert!(!state.exists());
}

#[test]
fn newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO meta VALUES('schema_version', '99');",
        )
        .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    for result in [
        SqliteStore::open(dir.path()),
        SqliteStore::open_readonly(dir.path()),
    ] {
        assert_eq!(
            result.unwrap_err().to_string(),
            format!(
                "state database {} has schema version 99, newer than this fort supports (5); upgrade fort, the database was left untouched",
                path.display()
            )
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    assert!(!dir.path().join("state.db-wal").exists());
}

#[test]
fn not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(
        &path,
        b"this is not sqlite, just text that is long enough to matter\n".repeat(100),
    )
    .unwrap();
    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot open state database {}", path.display())
    );
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(cause, "file is not a database");
}

/// A store holding `kernel.k` with `column` overwritten by `value` behind fort's back.
fn store_with_corrupt(dir: &std::path::Path, column: &str, value: &str) -> SqliteStore {
    let s = SqliteStore::open(dir).unwrap();
    s.put(&rec("kernel.k", Status::Ready, 1), None, "create", "x")
        .unwrap();
    s.conn
        .execute(
            &format!("UPDATE resources SET {column} = ?1 WHERE address = 'kernel.k'"),
            [value],
        )
        .unwrap();
    s
}

#[test]
fn corrupt_rows_name_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_corrupt(dir.path(), "outputs", "not json");
    let err = s.resources().unwrap_err().to_string();
    assert!(
        err.starts_with("corrupt row for kernel.k in state database: outputs is not JSON"),
        "{err}"
    );
}

#[test]
fn a_corrupt_spec_fails_when_state_is_read_not_later() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_corrupt(dir.path(), "spec", "{\"url\": ");
    let want = "corrupt row for kernel.k in state database: spec is not JSON: EOF while parsing a value at line 1 column 8";
    assert_eq!(s.resources().unwrap_err().to_string(), want);
    assert_eq!(
        s.get(&"kernel.k".parse().unwrap()).unwrap_err().to_string(),
        want
    );
}

#[test]
fn a_version_1_database_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        s.put(&rec("kernel.k", Status::Ready, 10), None, "create", "x")
            .unwrap();
        // Back to what fort 0.1 with schema 1 wrote.
        s.conn
            .execute_batch(
                "DROP TABLE gitops; ALTER TABLE runs DROP COLUMN commit_id;
                 ALTER TABLE runs DROP COLUMN commit_author; ALTER TABLE runs DROP COLUMN commit_date;
                 ALTER TABLE runs DROP COLUMN commit_subject;
                 DROP TABLE uids; DROP TABLE leases; ALTER TABLE resources DROP COLUMN step;
                 UPDATE meta SET value = '1' WHERE key = 'schema_version';",
            )
            .unwrap();
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        super::migrations::current_version(&s.conn).unwrap(),
        super::migrations::SCHEMA_VERSION
    );
    assert!(s.get(&"kernel.k".parse().unwrap()).unwrap().is_some());
    let lease = s
        .lease("lan", "10.0.0.0/24".parse().unwrap(), "vm.a", None, None)
        .unwrap();
    assert_eq!(lease.ip, "10.0.0.2".parse::<std::net::Ipv4Addr>().unwrap());
}

#[test]
fn a_version_4_database_keeps_its_runs_and_runs_record_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        s.begin_run("fort apply --yes", &serde_json::json!({}))
            .unwrap();
        s.conn
            .execute_batch(
                "DROP TABLE gitops; ALTER TABLE runs DROP COLUMN commit_id;
                 ALTER TABLE runs DROP COLUMN commit_author; ALTER TABLE runs DROP COLUMN commit_date;
                 ALTER TABLE runs DROP COLUMN commit_subject;
                 UPDATE meta SET value = '4' WHERE key = 'schema_version';",
            )
            .unwrap();
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    let runs = s.runs(10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].command.as_str(), &runs[0].commit),
        ("fort apply --yes", &None)
    );
    let c = crate::state::CommitInfo {
        id: "ab".repeat(20),
        author: "A <a@example.org>".into(),
        date: 1_764_744_000,
        subject: "add vm.web".into(),
    };
    let run = s.begin_run("fort watch", &serde_json::json!({})).unwrap();
    s.set_run_commit(run, &c).unwrap();
    assert_eq!(s.runs(1).unwrap()[0].commit.as_ref(), Some(&c));
    assert_eq!(s.follow().unwrap(), None);
    s.set_follow(&serde_json::json!({"branch": "main"}))
        .unwrap();
    s.set_follow(&serde_json::json!({"branch": "prod"}))
        .unwrap();
    assert_eq!(
        s.follow().unwrap(),
        Some(serde_json::json!({"branch": "prod"}))
    );
}

#[test]
fn intent_progress_and_failure_of_an_unfinished_action() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let mut r = rec("vm.a", Status::Pending, 5);
    r.spec_hash = String::new();
    r.spec = serde_json::Value::Null.into();
    r.outputs = serde_json::json!({});
    s.put(&r, None, "create", "intent").unwrap();
    let got = s.get(&r.address).unwrap().unwrap();
    assert_eq!(got.status, Status::Pending);
    assert!(!got.applied_once());
    assert_eq!(got.step, None);

    s.progress(&r.address, &serde_json::json!({"pid": 7}), "vm.spawned")
        .unwrap();
    let got = s.get(&r.address).unwrap().unwrap();
    assert_eq!(got.outputs, serde_json::json!({"pid": 7}));
    assert_eq!(got.step.as_deref(), Some("vm.spawned"));
    assert_eq!(got.status, Status::Pending);

    s.set_status(
        &r.address,
        Status::Failed,
        Some("the guest agent did not answer"),
        None,
        "fail",
        "create failed",
    )
    .unwrap();
    let got = s.get(&r.address).unwrap().unwrap();
    assert_eq!(got.status, Status::Failed);
    assert_eq!(got.error.as_deref(), Some("the guest agent did not answer"));
    assert_eq!(got.outputs, serde_json::json!({"pid": 7}), "outputs stay");
    let h = s.history(&r.address).unwrap();
    let last = h.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.from_status, last.to_status),
        ("fail", Some(Status::Pending), Some(Status::Failed))
    );
}

//! `fort fleet status` over a directory of host reports and a real git repository: each
//! host's commit and state, `behind` when it is not on the branch's newest commit.

#![allow(clippy::unwrap_used)]

mod common;

use common::gitrepo::git;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use fort::fleet::{self, Commit, Report};

#[test]
fn fleet_status_shows_every_host_and_who_is_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["config", "user.name", "Ada"]);
    git(&repo, &["config", "user.email", "ada@example.org"]);
    let mut ids = vec![];
    for n in 1..=2 {
        std::fs::write(repo.join("fort.toml"), format!("# {n}\n")).unwrap();
        git(&repo, &["add", "fort.toml"]);
        git(&repo, &["commit", "-q", "-m", &format!("change {n}")]);
        ids.push(git(&repo, &["rev-parse", "HEAD"]));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let reports = tmp.path().join("reports");
    let report = |host: &str, commit: &str| Report {
        fort_report: fleet::VERSION,
        host: host.into(),
        updated: now - 7200,
        converged: Some(Commit {
            id: commit.into(),
            subject: String::new(),
        }),
        trying: None,
        error: None,
        resources: 4,
        problems: vec![],
    };
    fleet::write(&reports, &report("h1", &ids[1])).unwrap();
    let mut h2 = report("h2", &ids[0]);
    h2.problems = vec!["vm.a: crashed".into()];
    fleet::write(&reports, &h2).unwrap();

    let fort = env!("CARGO_BIN_EXE_fort");
    let out = Command::new(fort)
        .args(["fleet", "status", "--reports"])
        .arg(&reports)
        .arg("-C")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!(
        "HOST  COMMIT        STATE      RESOURCES  PROBLEMS       REPORTED\n\
         h1    {}  converged  4          -              2h ago\n\
         h2    {}  behind     4          vm.a: crashed  2h ago\n",
        &ids[1][..12],
        &ids[0][..12]
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);

    // A branch the repository does not have, and a directory that is not there.
    let out = Command::new(fort)
        .args(["fleet", "status", "--reports"])
        .arg(&reports)
        .arg("-C")
        .arg(&repo)
        .args(["--branch", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revision `nope` not found in"), "{err}");
    let out = Command::new(fort)
        .args(["fleet", "status", "--reports"])
        .arg(tmp.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the reports in"), "{err}");
}

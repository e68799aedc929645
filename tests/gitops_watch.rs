//! `fort apply --git` and `fort watch --git` against real repositories: a bare repository on
//! disk (file://) and one served over smart HTTP on 127.0.0.1 (git's `http-backend`),
//! commits made and pushed with the git CLI as a user would. Manifests use cheap resources
//! (kernels from files in the repository), so no VM is started.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fort::{Run, Workspace, FORT};
use common::git_http::GitHttp;
use common::gitrepo::{git, Repo};
use common::watch_proc::WatchProcess;

const HEADER: &str = "[fort]\nversion = 1\n\n";
const KERNEL: &str = "[kernel.k]\nurl = \"vmlinux\"\n";
const ROOTFS: &str = "[rootfs.r]\nurl = \"rootfs.tar\"\n";

fn manifest(body: &str) -> String {
    format!("{HEADER}{body}")
}

/// fort on the workspace's state dir, without -f (the manifest comes from git).
fn fort(ws: &Workspace, args: &[&str]) -> Command {
    let mut c = Command::new(FORT);
    c.arg("--state-dir")
        .arg(ws.state_dir())
        .args(args)
        .current_dir(ws.path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("FORT_MANIFEST")
        .stdin(Stdio::null());
    c
}

fn run(ws: &Workspace, args: &[&str]) -> Run {
    Run::from(fort(ws, args).output().unwrap())
}

fn status_json(ws: &Workspace) -> serde_json::Value {
    let r = run(ws, &["status", "--json"]);
    r.ok();
    serde_json::from_str(&r.stdout).unwrap()
}

/// `fort status --json` once `ready` holds (a watch records a commit's state just after it
/// logs the pass); the last one read after a bound for a hang.
fn status_when(ws: &Workspace, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status_json(ws);
        if ready(&s) || Instant::now() > end {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn recorded(ws: &Workspace) -> String {
    run(ws, &["state", "list"]).stdout
}

/// The commit recorded with each run, oldest first.
fn run_commits(ws: &Workspace) -> Vec<(String, String, String)> {
    let c = rusqlite::Connection::open(ws.state_dir().join("state.db")).unwrap();
    let mut s = c
        .prepare("SELECT commit_id, commit_author, commit_subject FROM runs WHERE commit_id IS NOT NULL ORDER BY id")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

type Watch = WatchProcess;

impl WatchProcess {
    fn start(ws: &Workspace, name: &str, args: &[&str]) -> Watch {
        let mut a = vec!["watch"];
        a.extend_from_slice(args);
        WatchProcess::spawn(fort(ws, &a), ws.path().join(name))
    }
}

fn short(id: &str) -> &str {
    &id[..12]
}

#[test]
fn apply_git_once_records_the_commit_and_status_shows_it() {
    let ws = Workspace::new();
    let repo = Repo::new(&ws.path().join("repo"));
    let id = repo.commit(
        &[
            ("deploy/fort.toml", Some(&manifest(KERNEL))),
            ("deploy/vmlinux", Some("kernel bytes")),
        ],
        "first host config",
    );
    let url = repo.url();
    let r = run(&ws, &["apply", "--git", &url, "--path", "deploy", "--yes"]);
    r.ok();
    assert!(
        r.stderr.contains(&format!(
            "Applying commit {} \"first host config\" (A U Thor <author@example.org>) of {url} branch main",
            short(&id)
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("Apply complete: 1 created"),
        "{}",
        r.stdout
    );
    assert!(recorded(&ws).contains("kernel.k "));
    // The asset came from the checkout: state_dir/git/checkouts/<commit>/deploy/vmlinux.
    let checkout = ws.state_dir().join("git/checkouts").join(&id);
    assert_eq!(
        std::fs::read_to_string(checkout.join("deploy/vmlinux")).unwrap(),
        "kernel bytes"
    );
    assert_eq!(
        run_commits(&ws),
        [(
            id.clone(),
            "A U Thor <author@example.org>".to_string(),
            "first host config".to_string()
        )]
    );
    let s = status_json(&ws);
    assert_eq!(s["git"]["converged"]["id"], id.as_str());
    assert_eq!(s["git"]["converged"]["subject"], "first host config");
    assert_eq!(s["git"]["branch"], "main");
    assert_eq!(s["git"]["path"], "deploy");
    assert!(s["git"]["trying"].is_null() && s["git"]["problem"].is_null());
    let text = run(&ws, &["status"]).stdout;
    assert!(
        text.starts_with(&format!(
            "Following {url} branch main (path deploy)\n  converged  {} \"first host config\" (A U Thor <author@example.org>, ",
            short(&id)
        )),
        "{text}"
    );

    // Nothing new: a second pass has no changes and stays converged.
    let r = run(&ws, &["apply", "--git", &url, "--path", "deploy", "--yes"]);
    r.ok();
    assert!(r.stdout.contains("No changes."), "{}", r.stdout);
    // -f and --git together are refused.
    let r = run(&ws, &["-f", "x.toml", "apply", "--git", &url, "--yes"]);
    r.code(1);
    assert!(
        r.stderr.contains("--git reads the manifest from the repository (--path); -f/FORT_MANIFEST cannot be given with it"),
        "{}",
        r.stderr
    );
}

#[test]
fn watch_over_http_follows_commits_skips_a_bad_one_and_converges_to_the_next() {
    let ws = Workspace::new();
    let repo = Repo::new(&ws.path().join("repo"));
    let first = repo.commit(
        &[
            ("fort.toml", Some(&manifest(KERNEL))),
            ("vmlinux", Some("kernel bytes")),
            ("rootfs.tar", Some(&"\0".repeat(10240))),
        ],
        "kernel",
    );
    let http = GitHttp::start(&repo.root);
    let url = http.url("remote.git");
    let w = Watch::start(&ws, "watch.log", &["--git", &url, "--interval", "1s"]);
    w.wait_for(
        &format!(
            "start: commit {} \"kernel\" (A U Thor <author@example.org>): applying",
            short(&first)
        ),
        1,
    );
    w.wait_for("start: applied 1 change(s): 1 done", 1);
    assert_eq!(
        status_when(&ws, |s| s["git"]["converged"]["id"] == first.as_str())["git"]["converged"]
            ["id"],
        first.as_str()
    );

    // A commit whose manifest does not parse: reported with its id and file:line, skipped.
    let bad = repo.commit(
        &[("fort.toml", Some(&format!("{}[vm.x\n", manifest(KERNEL))))],
        "broken",
    );
    let log = w.wait_for(&format!("commit {} does not validate: fort.toml:6:6: unclosed table, expected `]`; skipped, nothing was changed", short(&bad)), 1);
    assert!(!log.contains("panicked"), "{log}");
    let s = status_when(&ws, |s| s["git"]["problem"]["commit"]["id"] == bad.as_str());
    assert_eq!(s["git"]["converged"]["id"], first.as_str(), "{s}");
    assert_eq!(s["git"]["problem"]["commit"]["id"], bad.as_str());
    assert_eq!(s["git"]["problem"]["kind"], "invalid");
    assert_eq!(
        s["git"]["problem"]["reason"],
        format!("commit {} does not validate: fort.toml:6:6: unclosed table, expected `]`; skipped, nothing was changed", short(&bad)).as_str()
    );
    let text = run(&ws, &["status"]).stdout;
    assert!(
        text.contains(&format!("  skipped    {} \"broken\"", short(&bad)))
            && text.contains("(invalid since "),
        "{text}"
    );
    assert!(recorded(&ws).contains("kernel.k "));

    // The next good commit converges, and the problem is history.
    let good = repo.commit(
        &[("fort.toml", Some(&manifest(&format!("{KERNEL}{ROOTFS}"))))],
        "add rootfs",
    );
    w.wait_for(&format!("commit {} \"add rootfs\"", short(&good)), 1);
    w.wait_for(": applied 1 change(s): 1 done", 2);
    let s = status_when(&ws, |s| s["git"]["converged"]["id"] == good.as_str());
    assert_eq!(s["git"]["converged"]["id"], good.as_str(), "{s}");
    assert!(s["git"]["problem"].is_null(), "{s}");
    assert!(recorded(&ws).contains("rootfs.r "));
    let commits: Vec<String> = run_commits(&ws).into_iter().map(|c| c.0).collect();
    assert_eq!(commits, [first.clone(), good.clone()]);

    // --max-destroy applies as today: dropping the rootfs is refused and reported.
    let drop = repo.commit(&[("fort.toml", Some(&manifest(KERNEL)))], "drop rootfs");
    w.wait_for("refused: the plan would destroy 1 resource(s) (rootfs.r), more than --max-destroy 0; nothing was applied", 1);
    let s = status_when(&ws, |s| s["git"]["problem"]["kind"] == "refused");
    assert_eq!(s["git"]["problem"]["kind"], "refused", "{s}");
    assert_eq!(s["git"]["problem"]["commit"]["id"], drop.as_str());
    assert_eq!(s["git"]["converged"]["id"], good.as_str());
    assert!(recorded(&ws).contains("rootfs.r "));
    assert!(
        http.requests.load(std::sync::atomic::Ordering::SeqCst) > 4,
        "fetches went over HTTP"
    );
}

#[test]
fn sighup_fetches_now() {
    let ws = Workspace::new();
    let repo = Repo::new(&ws.path().join("repo"));
    repo.commit(
        &[
            ("fort.toml", Some(&manifest(KERNEL))),
            ("vmlinux", Some("k")),
            ("rootfs.tar", Some("r")),
        ],
        "one",
    );
    let url = repo.url();
    let w = Watch::start(&ws, "watch.log", &["--git", &url, "--interval", "10m"]);
    w.wait_for("start: applied 1 change(s): 1 done", 1);
    let two = repo.commit(
        &[("fort.toml", Some(&manifest(&format!("{KERNEL}{ROOTFS}"))))],
        "two",
    );
    w.signal(libc::SIGHUP);
    w.wait_for(&format!("SIGHUP: commit {} \"two\"", short(&two)), 1);
    w.wait_for("SIGHUP: applied 1 change(s): 1 done", 1);
    w.signal(libc::SIGTERM);
    let mut w = w;
    assert_eq!(w.child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_missing_branch_and_a_missing_manifest_path_are_exact_errors() {
    let ws = Workspace::new();
    let repo = Repo::new(&ws.path().join("repo"));
    let id = repo.commit(
        &[
            ("fort.toml", Some(&manifest(KERNEL))),
            ("vmlinux", Some("k")),
        ],
        "root manifest",
    );
    let url = repo.url();
    let r = run(&ws, &["apply", "--git", &url, "--branch", "prod", "--yes"]);
    r.code(1);
    assert!(
        r.stderr.contains(&format!(
            "error: branch 'prod' does not exist at {url} (it has: main) (failing since "
        )),
        "{}",
        r.stderr
    );
    assert!(!recorded(&ws).contains("kernel.k"));

    let r = run(
        &ws,
        &["apply", "--git", &url, "--path", "hosts/h1", "--yes"],
    );
    r.code(1);
    assert!(
        r.stderr.contains(&format!(
            "error: commit {} has no hosts/h1 (the manifest path given with --path); skipped, nothing was changed",
            short(&id)
        )),
        "{}",
        r.stderr
    );
    let s = status_json(&ws);
    assert_eq!(s["git"]["problem"]["kind"], "missing-path", "{s}");
    assert!(s["git"]["converged"].is_null());
    assert!(!recorded(&ws).contains("kernel.k"));
}

#[test]
fn an_unreachable_remote_is_retried_the_host_keeps_running_and_status_says_since_when() {
    let ws = Workspace::new();
    let repo = Repo::new(&ws.path().join("repo"));
    let id = repo.commit(
        &[
            ("fort.toml", Some(&manifest(KERNEL))),
            ("vmlinux", Some("k")),
        ],
        "one",
    );
    let url = repo.url();
    let w = Watch::start(&ws, "watch.log", &["--git", &url, "--interval", "1s"]);
    w.wait_for("start: applied 1 change(s): 1 done", 1);
    let away = repo.root.join("away.git");
    std::fs::rename(repo.bare(), &away).unwrap();
    let log = w.wait_for(&format!("cannot fetch {url}: "), 1);
    assert!(
        log.contains("attempt(s); retrying with backoff; the host keeps its last good state)"),
        "{log}"
    );
    // Drift is still healed at the converged commit while the remote is away.
    let s = status_when(&ws, |s| !s["git"]["fetch_failure"].is_null());
    let f = &s["git"]["fetch_failure"];
    assert!(f["since"].as_i64().unwrap() > 0, "{s}");
    assert!(
        f["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("cannot fetch {url}: ")),
        "{s}"
    );
    assert_eq!(s["git"]["converged"]["id"], id.as_str());
    let text = run(&ws, &["status"]).stdout;
    assert!(text.contains("  fetch      failing since "), "{text}");
    assert!(w.child.id() > 0);
    w.wait_for(&format!("cannot fetch {url}: "), 2);
    assert!(
        run(&ws, &["status", "--json"]).code == 0,
        "the watch keeps running and status works"
    );

    // Back: the next (backed-off) fetch works and the failure is cleared.
    std::fs::rename(&away, repo.bare()).unwrap();
    let two = repo.commit(
        &[(
            "fort.toml",
            Some(&manifest(&format!(
                "{KERNEL}[kernel.k2]\nurl = \"vmlinux\"\n"
            ))),
        )],
        "two",
    );
    w.wait_for(&format!("commit {} \"two\"", short(&two)), 1);
    w.wait_for(": applied 1 change(s): 1 done", 2);
    let s = status_when(&ws, |s| s["git"]["converged"]["id"] == two.as_str());
    assert!(s["git"]["fetch_failure"].is_null(), "{s}");
    assert_eq!(s["git"]["converged"]["id"], two.as_str());
}

#[test]
fn a_force_push_is_refused_unless_allowed() {
    let ws = Workspace::new();
    let repo = Repo::new(&ws.path().join("repo"));
    let a = repo.commit(
        &[
            ("fort.toml", Some(&manifest(KERNEL))),
            ("vmlinux", Some("k")),
        ],
        "a",
    );
    let b = repo.commit(
        &[
            ("fort.toml", Some(&manifest(&format!("{KERNEL}{ROOTFS}")))),
            ("rootfs.tar", Some("r")),
        ],
        "b",
    );
    let url = repo.url();
    run(&ws, &["apply", "--git", &url, "--yes"]).ok();
    assert_eq!(status_json(&ws)["git"]["converged"]["id"], b.as_str());

    // Rewrite history: main goes back to a, plus a new commit c.
    git(&repo.work(), &["reset", "-q", "--hard", &a]);
    let c = repo.commit(
        &[
            (
                "fort.toml",
                Some(&manifest(&format!("{KERNEL}{ROOTFS}# rewritten\n"))),
            ),
            ("rootfs.tar", Some("r")),
        ],
        "c",
    );
    let r = run(&ws, &["apply", "--git", &url, "--yes"]);
    r.code(1);
    let want = format!(
        "error: branch main of {url} moved from {} to {}, which does not contain it (history was rewritten, e.g. by a force-push); refused, the host stays at its last good commit; pass --allow-force-push to follow rewritten history",
        short(&b),
        short(&c)
    );
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    let s = status_json(&ws);
    assert_eq!(s["git"]["problem"]["kind"], "force-push", "{s}");
    assert_eq!(s["git"]["converged"]["id"], b.as_str());
    // Refused again on the next pass (not forgotten).
    run(&ws, &["apply", "--git", &url, "--yes"]).code(1);

    let r = run(
        &ws,
        &["apply", "--git", &url, "--yes", "--allow-force-push"],
    );
    r.ok();
    let s = status_json(&ws);
    assert_eq!(s["git"]["converged"]["id"], c.as_str(), "{s}");
    assert!(s["git"]["problem"].is_null());
    // From c on, a fast-forward is applied without the flag.
    let d = repo.commit(&[("fort.toml", Some(&manifest(KERNEL)))], "d");
    run(&ws, &["apply", "--git", &url, "--yes"]).ok();
    assert_eq!(status_json(&ws)["git"]["converged"]["id"], d.as_str());
}

/// Poll until `f` holds (a bound for a hang).
#[track_caller]
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn kill9(child: &mut Child) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

#[test]
fn kill_9_while_checking_out_then_the_next_pass_converges() {
    let ws = Workspace::new();
    let repo = Repo::new(&ws.path().join("repo"));
    // Many files: the checkout (each file written and fsynced) takes a moment to kill it in.
    let mut files: Vec<(String, String)> = (0..3000)
        .map(|i| {
            (
                format!("files/{:02}/f{i}.txt", i % 50),
                format!("file {i}\n"),
            )
        })
        .collect();
    files.push(("fort.toml".into(), manifest(KERNEL)));
    files.push(("vmlinux".into(), "k".into()));
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    let id = repo.commit(&refs, "big tree");
    let url = repo.url();
    let checkouts = ws.state_dir().join("git/checkouts");
    let mut child = fort(&ws, &["apply", "--git", &url, "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until("a checkout in progress", || {
        std::fs::read_dir(&checkouts).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        })
    });
    kill9(&mut child);
    assert!(
        !checkouts.join(&id).exists(),
        "a killed checkout never has its commit's name"
    );

    let r = run(&ws, &["apply", "--git", &url, "--yes"]);
    r.ok();
    assert_eq!(status_json(&ws)["git"]["converged"]["id"], id.as_str());
    let names: Vec<String> = std::fs::read_dir(&checkouts)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        std::slice::from_ref(&id),
        "the half checkout was removed"
    );
    let n = std::fs::read_dir(checkouts.join(&id).join("files/07"))
        .unwrap()
        .count();
    assert_eq!(n, 60, "the checkout is complete");
}

#[test]
fn kill_9_while_applying_then_the_next_pass_converges_to_the_latest_commit() {
    let ws = Workspace::new();
    let repo = Repo::new(&ws.path().join("repo"));
    // A large local asset (outside the repository): copying and hashing it takes a moment.
    let big = ws.path().join("big.img");
    {
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(256 << 20).unwrap();
    }
    let body = format!("{KERNEL}[kernel.big]\nurl = \"file://{}\"\n", big.display());
    repo.commit(
        &[
            ("fort.toml", Some(&manifest(KERNEL))),
            ("vmlinux", Some("k")),
        ],
        "small",
    );
    let url = repo.url();
    run(&ws, &["apply", "--git", &url, "--yes"]).ok();
    let id = repo.commit(&[("fort.toml", Some(&manifest(&body)))], "big");
    let w = Watch::start(&ws, "watch.log", &["--git", &url, "--interval", "1s"]);
    w.wait_for("start: + kernel.big", 1);
    let mut w = w;
    kill9(&mut w.child);
    let s = status_json(&ws);
    assert_eq!(s["git"]["trying"]["id"], id.as_str(), "{s}");
    let latest = repo.commit(
        &[(
            "fort.toml",
            Some(&manifest(&format!(
                "{body}[kernel.k3]\nurl = \"vmlinux\"\n"
            ))),
        )],
        "latest",
    );
    let w2 = Watch::start(&ws, "watch2.log", &["--git", &url, "--interval", "1s"]);
    w2.wait_for(&format!("start: commit {} \"latest\"", short(&latest)), 1);
    w2.wait_for("start: applied ", 1);
    let s = status_when(&ws, |s| s["git"]["converged"]["id"] == latest.as_str());
    assert_eq!(s["git"]["converged"]["id"], latest.as_str(), "{s}");
    assert!(s["git"]["trying"].is_null(), "{s}");
    let listed = recorded(&ws);
    assert!(
        listed.contains("kernel.big ") && listed.contains("kernel.k3 "),
        "{listed}"
    );
}

/// `--allowed-signers`: a commit SSH-signed by a listed key applies, an unsigned one is
/// refused with the reason in `fort status`; `--host` picks this host's resources from the
/// commit; `--report-dir` writes the host's report that `fort fleet status` reads.
#[test]
fn signed_commits_apply_unsigned_ones_are_refused_and_the_host_reports_it() {
    let ws = Workspace::new();
    let repo = Repo::new(&ws.path().join("repo"));
    let key = ws.path().join("ada");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ada", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client) signs commits for git");
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let signers = ws.path().join("allowed_signers");
    std::fs::write(&signers, format!("author@example.org {public}")).unwrap();
    git(&repo.work(), &["config", "gpg.format", "ssh"]);
    git(
        &repo.work(),
        &[
            "config",
            "user.signingkey",
            key.with_extension("pub").to_str().unwrap(),
        ],
    );
    git(&repo.work(), &["config", "commit.gpgsign", "true"]);
    let body = "[kernel.k]\nurl = \"vmlinux\"\nhosts = [\"h1\"]\n\n[kernel.j]\nurl = \"vmlinux\"\nhosts = [\"h2\"]\n";
    let signed = repo.commit(
        &[
            ("fort.toml", Some(&manifest(body))),
            ("vmlinux", Some("k1")),
        ],
        "signed",
    );
    let url = repo.url();
    let reports = ws.path().join("reports");
    let apply = |ws: &Workspace| {
        run(
            ws,
            &[
                "--host",
                "h1",
                "apply",
                "--git",
                &url,
                "--allowed-signers",
                signers.to_str().unwrap(),
                "--report-dir",
                reports.to_str().unwrap(),
                "--yes",
            ],
        )
    };
    let r = apply(&ws);
    r.ok();
    let list = recorded(&ws);
    assert!(
        list.contains("kernel.k ") && !list.contains("kernel.j"),
        "{list}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reports.join("h1.json")).unwrap()).unwrap();
    assert_eq!(report["converged"]["id"], signed.as_str());
    assert_eq!(report["resources"], 1);
    assert!(report["error"].is_null(), "{report}");

    git(&repo.work(), &["config", "commit.gpgsign", "false"]);
    let unsigned = repo.commit(&[("vmlinux", Some("k2"))], "unsigned");
    let r = apply(&ws);
    r.code(1);
    let why = format!("commit {} is not signed; not applied", &unsigned[..12]);
    assert!(r.stderr.contains(&why), "{}", r.stderr);
    let s = status_json(&ws);
    assert_eq!(s["git"]["converged"]["id"], signed.as_str());
    assert_eq!(s["git"]["problem"]["kind"], "unverified");
    assert!(
        s["git"]["problem"]["reason"]
            .as_str()
            .unwrap()
            .contains(&why),
        "{s}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reports.join("h1.json")).unwrap()).unwrap();
    assert_eq!(report["converged"]["id"], signed.as_str());
    assert_eq!(report["trying"]["id"], unsigned.as_str());
    assert!(report["error"].as_str().unwrap().contains(&why), "{report}");
    let fleet = run(
        &ws,
        &[
            "fleet",
            "status",
            "--reports",
            reports.to_str().unwrap(),
            "-C",
            repo.bare().to_str().unwrap(),
        ],
    );
    fleet.ok();
    let row = fleet.stdout.lines().nth(1).unwrap_or_default().to_string();
    assert!(
        row.starts_with(&format!(
            "h1    {}  stuck: {} ",
            &signed[..12],
            &unsigned[..12]
        )) && row.contains(&why),
        "{}",
        fleet.stdout
    );
    // The kernel still has the signed commit's content.
    assert_eq!(
        std::fs::read_to_string(ws.state_dir().join("git/current/vmlinux")).unwrap_or_default(),
        "k1"
    );
}

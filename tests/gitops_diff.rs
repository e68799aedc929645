//! `fort diff` and host selection against real git repositories: made with the git CLI in a
//! temp dir (as a user would), read by the `fort` binary through gix. No state dir, no host.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

const FORT: &str = env!("CARGO_BIN_EXE_fort");

struct Repo {
    dir: tempfile::TempDir,
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Repo {
    fn new() -> Repo {
        let r = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// git with no user or system configuration, fixed identities.
    fn git_in(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .stdin(Stdio::null())
            .output()
            .expect("git is installed (/usr/local/bin/git)");
        check(&format!("git {args:?}"), &out);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn git(&self, args: &[&str]) -> String {
        Self::git_in(self.path(), args)
    }

    fn write(&self, file: &str, text: &str) {
        let p = self.path().join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.path().join(file)).unwrap();
    }

    fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
        self.short("HEAD")
    }

    fn short(&self, rev: &str) -> String {
        self.git(&["rev-parse", "--short=7", rev])
    }

    fn fort(&self, args: &[&str]) -> Run {
        fort_in(self.path(), args)
    }
}

fn fort_in(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(FORT)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("FORT_MANIFEST")
        .env_remove("FORT_HOST")
        .env_remove("FORT_STATE_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self, want: i32) -> &Run {
        assert_eq!(
            self.code, want,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

const SHARED: &str = "[fort]\nversion = 1\n\n[kernel.k]\nurl = \"/k\"\n\n[rootfs.r]\nurl = \"/r.tar\"\n\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n";

fn web(host: &str, memory: &str) -> String {
    format!("[vm.web]\nhosts = [\"{host}\"]\nkernel = \"k\"\nmemory = \"{memory}\"\nroot = {{ template = \"t\", size = \"1GiB\" }}\n")
}

/// A fleet repository: shared assets, one VM that moves between hosts.
fn fleet() -> (Repo, String, String) {
    let r = Repo::new();
    r.write("fleet/shared.toml", SHARED);
    r.write("fleet/web.toml", &web("h1", "512MiB"));
    r.write(
        "fleet/db.toml",
        "[fort]\nhosts = [\"h2\"]\n\n[drive.data]\nsize = \"2GiB\"\n",
    );
    let a = r.commit("web on h1");
    r.write("fleet/web.toml", &web("h2", "1GiB"));
    let b = r.commit("web moves to h2");
    (r, a, b)
}

#[test]
fn diff_of_two_commits_per_host() {
    let (r, a, b) = fleet();
    let run = r.fort(&["diff", "HEAD~1..HEAD", "-f", "fleet"]);
    run.code(0);
    assert_eq!(
        run.stdout,
        format!(
            "HEAD~1 ({a}) → HEAD ({b}), manifest fleet\n\n\
             Host h1:\n\n\
             \x20 - drive.web-root !\n      reason: removed\n      ! the data on it will be lost\n\n\
             \x20 - vm.web\n      reason: removed\n\n\
             Plan: 0 to create, 0 to update, 0 to restart, 0 to replace, 2 to destroy.\n\n\
             Host h2:\n\n\
             \x20 + drive.web-root\n      reason: added\n\n\
             \x20 + vm.web\n      reason: added\n\n\
             Plan: 2 to create, 0 to update, 0 to restart, 0 to replace, 0 to destroy.\n"
        )
    );
    // One host, and the exit code for CI.
    let h2 = r.fort(&[
        "diff",
        "main~1..main",
        "-f",
        "fleet",
        "--host",
        "h2",
        "--detailed-exitcode",
    ]);
    h2.code(2);
    assert!(
        h2.stdout.contains("Host h2:\n\n  + drive.web-root\n"),
        "{}",
        h2.stdout
    );
    assert!(!h2.stdout.contains("Host h1"), "{}", h2.stdout);
    // Nothing changes between a commit and itself.
    let same = r.fort(&["diff", "HEAD..HEAD", "-f", "fleet", "--detailed-exitcode"]);
    same.code(0);
    assert_eq!(
        same.stdout,
        // At HEAD no list names h1 any more: only h2 is compared.
        format!("HEAD ({b}) → HEAD ({b}), manifest fleet\n\nHost h2:\n\nNo changes.\n")
    );
}

#[test]
fn json_and_markdown() {
    let (r, a, b) = fleet();
    let full = |rev: &str| r.git(&["rev-parse", rev]);
    let run = r.fort(&[
        "diff",
        "HEAD~1..HEAD",
        "-f",
        "fleet",
        "--host",
        "h1",
        "--json",
    ]);
    run.code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["format_version"], 1);
    assert_eq!(
        v["from"],
        serde_json::json!({"rev": "HEAD~1", "commit": full("HEAD~1")})
    );
    assert_eq!(
        v["to"],
        serde_json::json!({"rev": "HEAD", "commit": full("HEAD")})
    );
    assert_eq!(v["path"], "fleet");
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
    let h1 = &v["hosts"][0];
    assert_eq!(h1["host"], "h1");
    let ops: Vec<(String, String, bool)> = h1["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["address"].as_str().unwrap().to_string(),
                c["op"].as_str().unwrap().to_string(),
                c["data_loss"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("drive.web-root".to_string(), "destroy".to_string(), true),
            ("vm.web".to_string(), "destroy".to_string(), false)
        ]
    );
    assert_eq!(h1["summary"]["destroy"], 2);
    // --format json is the same object.
    let same = r.fort(&[
        "diff",
        "HEAD~1..HEAD",
        "-f",
        "fleet",
        "--host",
        "h1",
        "--format",
        "json",
    ]);
    assert_eq!(same.stdout, run.stdout);

    let md = r.fort(&[
        "diff",
        "HEAD~1..HEAD",
        "-f",
        "fleet",
        "--format",
        "markdown",
    ]);
    md.code(0);
    assert!(
        md.stdout.starts_with(&format!(
            "### fort diff: `HEAD~1` (`{a}`) → `HEAD` (`{b}`), manifest `fleet`\n\n\
             | host | create | update | restart | replace | destroy | data loss |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | `h1` | 0 | 0 | 0 | 0 | 2 | **1 !** |\n\
             | `h2` | 2 | 0 | 0 | 0 | 0 | 0 |\n\n\
             <details><summary><b>h1</b>: Plan: 0 to create, 0 to update, 0 to restart, 0 to replace, 2 to destroy.</summary>\n\n```text\n"
        )),
        "{}",
        md.stdout
    );
    assert!(md.stdout.ends_with("```\n\n</details>\n"), "{}", md.stdout);
}

#[test]
fn in_place_restart_and_tags_in_a_bare_clone() {
    let r = Repo::new();
    r.write("fort.toml", &format!("{SHARED}\n{}", web("h1", "512MiB")));
    r.commit("one");
    r.git(&["tag", "-a", "v1", "-m", "v1"]);
    r.write(
        "fort.toml",
        &format!("{SHARED}\n{}state = \"stopped\"\n", web("h1", "1GiB")),
    );
    r.commit("two");
    let bare = tempfile::tempdir().unwrap();
    let bare_path = bare.path().join("fleet.git");
    Repo::git_in(
        bare.path(),
        &[
            "clone",
            "-q",
            "--bare",
            r.path().to_str().unwrap(),
            "fleet.git",
        ],
    );
    let run = fort_in(
        bare.path(),
        &["diff", "-C", bare_path.to_str().unwrap(), "v1..main"],
    );
    run.code(0);
    assert!(
        run.stdout.contains(
            "Host h1:\n\n  ~restart vm.web\n      ~ memory: 512MiB → 1GiB  (needs restart)\n      ~ state: \"running\" → \"stopped\"\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.ends_with(
            "Plan: 0 to create, 0 to update, 1 to restart, 0 to replace, 0 to destroy.\n"
        ),
        "{}",
        run.stdout
    );
    // A bare repository has no work tree to compare a single REV with.
    let one = fort_in(
        bare.path(),
        &["diff", "-C", bare_path.to_str().unwrap(), "v1"],
    );
    one.code(1);
    assert_eq!(
        one.stderr,
        format!(
            "error: {} is a bare repository: it has no work tree to compare with; give REV_A..REV_B\n",
            bare_path.display()
        )
    );
}

#[test]
fn a_single_rev_compares_with_the_work_tree() {
    let r = Repo::new();
    r.write("fort.toml", SHARED);
    let a = r.commit("assets");
    r.write("extra.toml", "[drive.scratch]\nsize = \"1GiB\"\n");
    // Uncommitted: seen from the work tree, not from HEAD; the manifest is the directory's
    // fort.toml when there is one (so extra.toml is not part of it).
    let run = r.fort(&["diff", "HEAD"]);
    run.code(0);
    assert_eq!(
        run.stdout,
        format!("HEAD ({a}) → working tree, manifest fort.toml\n\nNo changes.\n")
    );
    // -f . is the directory: at HEAD its only *.toml is fort.toml, in the work tree both.
    let dir = r.fort(&["diff", "HEAD", "-f", "."]);
    dir.code(0);
    assert_eq!(
        dir.stdout,
        format!("HEAD ({a}) → working tree, manifest .\n\n  + drive.scratch\n      reason: added\n\nPlan: 1 to create, 0 to update, 0 to restart, 0 to replace, 0 to destroy.\n")
    );
    r.remove("extra.toml");
    r.write(
        "fort.toml",
        &format!("{SHARED}\n[drive.scratch]\nsize = \"1GiB\"\n"),
    );
    let run = r.fort(&["diff", "HEAD", "--detailed-exitcode"]);
    run.code(2);
    assert!(
        run.stdout
            .contains("  + drive.scratch\n      reason: added\n"),
        "{}",
        run.stdout
    );
    // From a subdirectory, the repository is discovered upwards.
    std::fs::create_dir_all(r.path().join("sub")).unwrap();
    let up = fort_in(
        &r.path().join("sub"),
        &["diff", "HEAD", "-f", "../fort.toml"],
    );
    up.code(0);
    assert!(up.stdout.contains("  + drive.scratch\n"), "{}", up.stdout);
}

#[test]
fn bad_revisions_paths_and_manifests_are_exact_errors() {
    let (r, a, b) = fleet();
    let nope = r.fort(&["diff", "nope..HEAD", "-f", "fleet"]);
    nope.code(1);
    // The repository is named as gix found it (the work tree, absolute).
    let root = std::fs::canonicalize(r.path()).unwrap();
    assert!(
        [r.path().to_path_buf(), root].iter().any(|p| nope.stderr
            == format!("error: revision `nope` not found in {}/\n", p.display())
            || nope.stderr == format!("error: revision `nope` not found in {}\n", p.display())),
        "{}",
        nope.stderr
    );
    assert_eq!(nope.stdout, "");

    // The manifest path exists at one side only.
    r.write("hosts/h3/fort.toml", SHARED);
    r.commit("h3 joins");
    let missing = r.fort(&["diff", "HEAD~1..HEAD", "-f", "hosts/h3"]);
    missing.code(1);
    assert_eq!(
        missing.stderr,
        format!("error: hosts/h3 does not exist at revision `HEAD~1` ({b})\n")
    );

    // An invalid manifest at one revision: every problem at REV:file:line:column.
    r.write(
        "fleet/web.toml",
        "[vm.web]\nhosts = [\"h1\"]\nkernel = \"k\"\nmemory = \"lots\"\nroot = { template = \"t\", size = \"1GiB\" }\n",
    );
    r.commit("typo");
    let bad = r.fort(&["diff", &format!("{a}..main"), "-f", "fleet"]);
    bad.code(1);
    assert_eq!(
        bad.stderr,
        "error: main:fleet/web.toml:4:10: vm.web: memory: invalid size `lots`: expected a number with a binary unit (B, KiB, MiB, GiB, TiB), e.g. \"512MiB\", or a number of bytes\nhint: fix the manifest at that revision; nothing was changed on the host\n"
    );

    // A VM for h1 using a network only on h2: both places named, at that revision.
    r.write(
        "fleet/web.toml",
        &format!("{}network = \"lan\"\n", web("h1", "512MiB")),
    );
    r.write(
        "fleet/net.toml",
        "[network.lan]\nhosts = [\"h2\"]\ncidr = \"10.9.0.0/24\"\n",
    );
    r.commit("network only on h2");
    let cross = r.fort(&["diff", "HEAD~2..HEAD", "-f", "fleet", "--host", "h1"]);
    cross.code(1);
    assert_eq!(
        cross.stderr,
        "error: HEAD:fleet/web.toml:6:11: vm.web is for host h1 but uses network.lan, which is not: network.lan at HEAD:fleet/net.toml:1:1 is for h2\nhint: fix the manifest at that revision; nothing was changed on the host\n"
    );
}

#[test]
fn validate_selects_the_host_and_checks_them_all() {
    let (r, _, _) = fleet();
    // The work tree, not a revision: web back on h1.
    r.write("fleet/web.toml", &web("h1", "512MiB"));
    let run = r.fort(&["validate", "-f", "fleet", "--host", "h1"]);
    run.code(0);
    assert_eq!(
        run.stdout,
        "The manifest is valid for host h1: 5 resources (1 kernel, 1 rootfs, 1 template, 1 drive, 1 vm) in 3 files.\n"
    );
    let all = r.fort(&["validate", "-f", "fleet", "--all-hosts"]);
    all.code(0);
    assert_eq!(
        all.stdout,
        "The manifest is valid for host h1: 5 resources (1 kernel, 1 rootfs, 1 template, 1 drive, 1 vm) in 3 files.\n\
         The manifest is valid for host h2: 4 resources (1 kernel, 1 rootfs, 1 template, 1 drive) in 3 files.\n"
    );
    let json = r.fort(&["validate", "-f", "fleet", "--host", "h2", "--json"]);
    json.code(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["host"], "h2");
    assert_eq!(
        v["resources"],
        serde_json::json!(["kernel.k", "rootfs.r", "template.t", "drive.data"])
    );
    r.write(
        "fleet/web.toml",
        &format!("{}network = \"lan\"\n", web("h1", "512MiB")),
    );
    r.write(
        "fleet/net.toml",
        "[network.lan]\nhosts = [\"h2\"]\ncidr = \"10.9.0.0/24\"\n",
    );
    let bad = r.fort(&["validate", "-f", "fleet", "--all-hosts"]);
    bad.code(1);
    assert_eq!(
        bad.stderr,
        "error: fleet/web.toml:6:11: host h1: vm.web is for host h1 but uses network.lan, which is not: network.lan at fleet/net.toml:1:1 is for h2\nhint: fix the manifest; nothing was changed on the host\n"
    );
}

#[test]
fn plan_rev_plans_a_revision_against_this_hosts_state() {
    let (r, _, _) = fleet();
    let state = r.path().join("state");
    let state = state.to_str().unwrap();
    // At HEAD~1 web is h1's; the work tree (HEAD) has it on h2.
    let at = r.fort(&[
        "plan",
        "--rev",
        "HEAD~1",
        "-f",
        "fleet",
        "--host",
        "h1",
        "--state-dir",
        state,
        "--detailed-exitcode",
    ]);
    at.code(2);
    assert!(at.stdout.contains("  + vm.web\n"), "{}", at.stdout);
    assert!(
        at.stdout.ends_with(
            "Plan: 5 to create, 0 to update, 0 to restart, 0 to replace, 0 to destroy.\n"
        ),
        "{}",
        at.stdout
    );
    let now = r.fort(&["plan", "-f", "fleet", "--host", "h1", "--state-dir", state]);
    now.code(0);
    assert!(!now.stdout.contains("vm.web"), "{}", now.stdout);
    assert!(
        !Path::new(state).exists(),
        "plan must not create the state dir"
    );
    let nope = r.fort(&[
        "plan",
        "--rev",
        "nope",
        "-f",
        "fleet",
        "--host",
        "h1",
        "--state-dir",
        state,
    ]);
    nope.code(1);
    assert!(
        nope.stderr
            .starts_with("error: revision `nope` not found in "),
        "{}",
        nope.stderr
    );
}

#[test]
fn three_dots_compare_from_the_merge_base() {
    let r = Repo::new();
    r.write("fort.toml", &format!("{SHARED}\n{}", web("h1", "512MiB")));
    r.commit("base");
    r.git(&["checkout", "-q", "-b", "feature"]);
    r.write("fort.toml", &format!("{SHARED}\n{}", web("h1", "1GiB")));
    r.commit("feature: more memory");
    r.git(&["checkout", "-q", "main"]);
    r.write(
        "fort.toml",
        &format!(
            "{SHARED}\n{}\n[drive.logs]\nsize = \"1GiB\"\n",
            web("h1", "512MiB")
        ),
    );
    r.commit("main: a drive");
    let base = r.git(&["merge-base", "main", "feature"]);
    // What the pull request changes: only the feature's commit.
    let pr = r.fort(&["diff", "main...feature", "--json"]);
    pr.code(0);
    let v: serde_json::Value = serde_json::from_str(&pr.stdout).unwrap();
    assert_eq!(v["from"]["commit"], base);
    assert_eq!(v["from"]["rev"], &base[..7]);
    let addresses = |v: &serde_json::Value| -> Vec<String> {
        v["hosts"][0]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c["op"].as_str().unwrap(),
                    c["address"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(addresses(&v), ["restart vm.web"]);
    // Two dots compare the tips: main's new drive is "removed" too.
    let tips = r.fort(&["diff", "main..feature", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&tips.stdout).unwrap();
    assert_eq!(addresses(&v), ["destroy drive.logs", "restart vm.web"]);
}

/// Host selection on a real apply: what moves to another host leaves this one.
#[test]
fn apply_on_a_host_destroys_what_moved_away() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.bin"), b"kernel a").unwrap();
    std::fs::write(d.join("b.bin"), b"kernel b").unwrap();
    let manifest = |a_host: &str| {
        format!(
            "[fort]\nversion = 1\n\n[kernel.a]\nurl = \"a.bin\"\ndecompress = \"none\"\nhosts = [\"{a_host}\"]\n\n[kernel.b]\nurl = \"b.bin\"\ndecompress = \"none\"\n"
        )
    };
    std::fs::write(d.join("fort.toml"), manifest("h1")).unwrap();
    let (s1, s2) = (d.join("s1"), d.join("s2"));
    let on = |host: &str, state: &Path, args: &[&str]| {
        let mut all = vec!["--host", host, "--state-dir", state.to_str().unwrap()];
        all.extend_from_slice(args);
        fort_in(d, &all)
    };
    on("h1", &s1, &["apply", "--yes"]).code(0);
    on("h2", &s2, &["apply", "--yes"]).code(0);
    let list = |host: &str, state: &Path| on(host, state, &["state", "list"]).stdout;
    assert!(list("h1", &s1).contains("kernel.a"), "{}", list("h1", &s1));
    assert!(!list("h2", &s2).contains("kernel.a"), "{}", list("h2", &s2));
    // kernel.a moves to h2.
    std::fs::write(d.join("fort.toml"), manifest("h2")).unwrap();
    let plan = on("h1", &s1, &["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout
            .contains("  - kernel.a\n      reason: no longer in the manifest\n"),
        "{}",
        plan.stdout
    );
    on("h1", &s1, &["apply", "--yes"]).code(0);
    on("h2", &s2, &["apply", "--yes"]).code(0);
    assert!(!list("h1", &s1).contains("kernel.a"), "{}", list("h1", &s1));
    assert!(list("h2", &s2).contains("kernel.a"), "{}", list("h2", &s2));
    for (h, s) in [("h1", &s1), ("h2", &s2)] {
        on(h, s, &["plan", "--detailed-exitcode"]).code(0);
    }
}

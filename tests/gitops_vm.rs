//! Issue 17 end to end: two hosts (two state dirs, each fort in its own network namespace)
//! follow one repository with `fort apply --git --host h1|h2`; a busybox VM under QEMU/TCG
//! moves from h1 to h2 with a commit, an invalid commit is reported by both and changes
//! nothing, a revert converges, and a force-push back to the first commit (allowed with
//! `--allow-force-push`) moves the VM back.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::fort::{Run, Workspace, FORT};
use common::gitrepo::{git, Repo};
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::vms::{assets, processes_mentioning, ConsoleOnFailure, ONE_AT_A_TIME, QEMU_KERNEL};

/// A simulated host: a thread in its own network namespace running every fort command of
/// that host (a child process inherits the thread's namespace), with its own state dir.
struct Host {
    name: &'static str,
    ws: Workspace,
    jobs: mpsc::Sender<(Vec<String>, mpsc::Sender<Run>)>,
}

impl Host {
    fn start(name: &'static str) -> Host {
        let ws = Workspace::new();
        let (jobs, rx) = mpsc::channel::<(Vec<String>, mpsc::Sender<Run>)>();
        std::thread::spawn(move || {
            in_netns(move || {
                for (args, reply) in rx {
                    let out = Command::new(FORT)
                        .args(&args)
                        .env("NO_COLOR", "1")
                        .env_remove("RUST_LOG")
                        .env_remove("FORT_MANIFEST")
                        .stdin(Stdio::null())
                        .output()
                        .unwrap();
                    let _ = reply.send(Run::from(out));
                }
            })
        });
        Host { name, ws, jobs }
    }

    fn fort(&self, args: &[&str]) -> Run {
        let mut all = vec![
            "--state-dir".to_string(),
            self.ws.state_dir().display().to_string(),
            "--host".to_string(),
            self.name.to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let (tx, rx) = mpsc::channel();
        self.jobs.send((all, tx)).unwrap();
        rx.recv().unwrap()
    }

    fn apply(&self, url: &str, extra: &[&str]) -> Run {
        let mut args = vec!["apply", "--git", url, "--yes"];
        args.extend_from_slice(extra);
        self.fort(&args)
    }

    fn qemus(&self) -> usize {
        processes_mentioning(&format!("{}/run/", self.ws.state_dir().display()))
            .iter()
            .filter(|c| c.contains("qemu-system"))
            .count()
    }

    fn status(&self) -> serde_json::Value {
        let r = self.fort(&["status", "--json"]);
        r.ok();
        serde_json::from_str(&r.stdout).unwrap()
    }
}

fn manifest(vm_host: &str) -> String {
    let dir = assets();
    format!(
        r#"[fort]
version = 1

[kernel.k]
url = "file://{k}"
initrd = {{ url = "file://{i}" }}

[rootfs.bb]
url = "file://{r}"

[template.base]
rootfs = "bb"
size = "64MiB"

[network.lan]
cidr = "10.83.0.0/24"

[vm.a]
hosts = ["{vm_host}"]
vmm = "qemu"
kernel = "k"
root = {{ template = "base", size = "128MiB" }}
memory = "192MiB"
network = "lan"
"#,
        k = dir.join(QEMU_KERNEL).display(),
        i = dir.join("initrd.cpio.gz").display(),
        r = dir.join("rootfs.tar.gz").display(),
    )
}

#[test]
fn a_vm_follows_its_host_selector_across_commits_on_two_hosts() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("FORT_GUEST_AGENT", static_agent());
    let (h1, h2) = (Host::start("h1"), Host::start("h2"));
    let _c1 = ConsoleOnFailure(h1.ws.state_dir().join("run"));
    let _c2 = ConsoleOnFailure(h2.ws.state_dir().join("run"));
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    let url = repo.url();

    // On h1 only.
    let first = repo.commit(&[("fort.toml", Some(&manifest("h1")))], "vm.a on h1");
    h1.apply(&url, &[]).ok();
    h2.apply(&url, &[]).ok();
    assert_eq!((h1.qemus(), h2.qemus()), (1, 0));
    let r = h1.fort(&["exec", "vm.a", "--", "echo", "on h1"]);
    assert_eq!(r.ok().stdout, "on h1\n");
    assert!(!h2.fort(&["state", "list"]).stdout.contains("vm.a"));
    for h in [&h1, &h2] {
        assert_eq!(h.status()["git"]["converged"]["id"], first.as_str());
    }

    // Moved to h2: it leaves h1 (VM, drive) and appears on h2.
    let moved = repo.commit(&[("fort.toml", Some(&manifest("h2")))], "vm.a to h2");
    let r = h1.apply(&url, &[]);
    assert!(r.ok().stdout.contains("- vm.a"), "{}", r.stdout);
    h2.apply(&url, &[]).ok();
    assert_eq!((h1.qemus(), h2.qemus()), (0, 1));
    assert!(!h1.fort(&["state", "list"]).stdout.contains("vm.a"));
    let r = h2.fort(&["exec", "vm.a", "--", "echo", "on h2"]);
    assert_eq!(r.ok().stdout, "on h2\n");
    let pid = processes_mentioning(&format!("{}/run/", h2.ws.state_dir().display()));

    // An invalid commit (in the network both hosts have): both report it (commit and file:line) and keep what they run.
    let bad = repo.commit(
        &[(
            "fort.toml",
            Some(&manifest("h2").replace("10.83.0.0/24", "10.83.0.0/99")),
        )],
        "typo",
    );
    for h in [&h1, &h2] {
        let r = h.apply(&url, &[]);
        r.code(1);
        let want = format!(
            "commit {} does not validate: fort.toml:16:8: network.lan: invalid cidr",
            &bad[..12]
        );
        assert!(r.stderr.contains(&want), "{}: {}", h.name, r.stderr);
        let s = h.status();
        assert_eq!(s["git"]["converged"]["id"], moved.as_str());
        assert_eq!(s["git"]["problem"]["kind"], "invalid");
        assert_eq!(s["git"]["problem"]["commit"]["id"], bad.as_str());
    }
    assert_eq!((h1.qemus(), h2.qemus()), (0, 1));
    assert_eq!(
        processes_mentioning(&format!("{}/run/", h2.ws.state_dir().display())),
        pid,
        "h2's VM runs on in the same QEMU"
    );

    // A revert converges both; status shows the revert's id.
    git(&repo.work(), &["revert", "--no-edit", "HEAD"]);
    git(&repo.work(), &["push", "-q", "origin", "main"]);
    let revert = git(&repo.work(), &["rev-parse", "HEAD"]);
    for h in [&h1, &h2] {
        let r = h.apply(&url, &[]);
        assert!(
            r.ok().stdout.contains("No changes."),
            "{}: {}",
            h.name,
            r.stdout
        );
        let s = h.status();
        assert_eq!(s["git"]["converged"]["id"], revert.as_str());
        assert!(s["git"]["problem"].is_null(), "{}: {s}", h.name);
    }

    // A force-push back to the first commit: refused without the flag, applied with it, as
    // any other commit: the VM moves back to h1.
    git(&repo.work(), &["reset", "-q", "--hard", &first]);
    git(&repo.work(), &["push", "-q", "-f", "origin", "main"]);
    let r = h1.apply(&url, &[]);
    r.code(1);
    assert!(r.stderr.contains("--allow-force-push"), "{}", r.stderr);
    assert_eq!((h1.qemus(), h2.qemus()), (0, 1));
    for h in [&h1, &h2] {
        h.apply(&url, &["--allow-force-push"]).ok();
        assert_eq!(h.status()["git"]["converged"]["id"], first.as_str());
    }
    assert_eq!((h1.qemus(), h2.qemus()), (1, 0));
    for h in [&h1, &h2] {
        h.fort(&["destroy", "--yes"]).ok();
        assert_eq!(h.qemus(), 0, "{}", h.name);
    }
}

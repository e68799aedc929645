//! The crash matrix. A debug `fort` SIGKILLs itself where `FORT_CRASH_AT` says; this walks
//! every point of `fort::crash::Point::ALL` (the list is generated from the code, and the
//! `match` in `trigger` has no wildcard, so a new point without a case does not compile) for a
//! manifest with every kind and a real VM under QEMU/TCG. After each crash of `fort apply` the
//! next apply converges, the plan is empty, and nothing leaks — no process of the state dir
//! beyond the VM's own, no fort-marked interface or nftables table beyond the networks', no
//! lease, drive, temp file or run dir that no record owns — and the protected drive is
//! unchanged. Then the same for `fort destroy` crashed at each of its points: destroy again,
//! nothing left. One booted VM is shared by the cases that do not restart it.
//!
//! QEMU only, whatever `FORT_TEST_VMM` says: its checks count QEMU's vhost-device-vsock
//! helper among the VM's processes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use common::assets::tgz;
use common::fort::{sha256_hex, Workspace};
use common::leaks::{
    cgroups, ext4_bytes, fort_links, fort_tables, ip_forward, leases, names, processes_of, set,
    uids,
};
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::server::{Reply, Server};
use common::vms::{assets, ConsoleOnFailure, ONE_AT_A_TIME, QEMU_KERNEL};
use fort::crash::Point;

/// How a case reaches its point.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// `fort apply --yes --replace ADDR`.
    Replace(&'static str),
    /// A new overlay file in the template: a new image is built.
    EditTemplate,
    /// drive.scratch grows by 16 MiB.
    GrowDrive,
    /// vm.a's memory changes: it restarts.
    RestartVm,
    /// Someone switched `net.ipv4.ip_forward` off: the networks switch it on again.
    ForwardingOff,
    /// A leftover temp file exists when the apply starts.
    Leftover,
    /// `fort destroy` (with a leftover temp file when asked).
    Destroy { leftover: bool },
    /// vm.a goes to `state = "paused"` (or `"suspended"`); once that converged, back to
    /// running.
    State(&'static str),
    /// vm.a is suspended, then resumed from its snapshot (the crash is in the resume).
    Resume,
}

/// The case for each point. No wildcard: a new point needs a case here.
fn trigger(p: Point) -> Trigger {
    match p {
        Point::ActionIntent => Trigger::Replace("drive.scratch"),
        Point::FetchPartial => Trigger::Replace("rootfs.bb"),
        Point::TemplateUnpacked | Point::TemplateMke2fs => Trigger::EditTemplate,
        Point::NetworkIntent | Point::NetworkBridge | Point::NetworkNft => {
            Trigger::Replace("network.spare")
        }
        Point::NetworkForward => Trigger::ForwardingOff,
        Point::DriveIntent | Point::DriveCloned => Trigger::Replace("drive.scratch"),
        Point::DriveFormatted => Trigger::Replace("drive.empty"),
        Point::DriveResizing => Trigger::GrowDrive,
        Point::VmIntent
        | Point::VmAttached
        | Point::VmPorts
        | Point::VmConfined
        | Point::VmHelper
        | Point::VmSpawned => Trigger::Replace("vm.a"),
        Point::VmStopped => Trigger::RestartVm,
        Point::VmPaused => Trigger::State("paused"),
        Point::VmSnapshotIntent | Point::VmSnapshotWritten => Trigger::State("suspended"),
        Point::VmResuming => Trigger::Resume,
        Point::ReplaceDestroyed => Trigger::Replace("firecracker.fc"),
        Point::ActionDone => Trigger::Replace("kernel.deb"),
        Point::OrphansRemoved => Trigger::Leftover,
        Point::VmDestroyStopped
        | Point::VmDetached
        | Point::VmUnconfined
        | Point::NetworkUnfiltered => Trigger::Destroy { leftover: false },
    }
}

/// Points `fort destroy` reaches too: crashed there, destroy again leaves nothing.
const DESTROY_ALSO: &[Point] = &[
    Point::ActionIntent,
    Point::ActionDone,
    Point::OrphansRemoved,
];

struct Matrix {
    ws: Workspace,
    srv: Server,
    assets: PathBuf,
    agent: PathBuf,
    /// Bumped to make the template build a new image.
    overlay: u32,
    scratch_mib: u32,
    memory_mib: u32,
    data_sha: Option<String>,
    /// vm.a's `state`.
    vm_state: &'static str,
}

impl Matrix {
    fn write(&self) {
        let d = &self.assets;
        self.ws.write_manifest(&format!(
            r#"[firecracker.fc]
url = "{url}/fc.tgz"
sha256 = "{fc}"
member = "release/firecracker"

[kernel.deb]
url = "file://{k}"
initrd = {{ url = "file://{i}" }}

[rootfs.bb]
url = "{url}/rootfs.tar.gz"
sha256 = "{rootfs}"

[template.t]
rootfs = "bb"
size = "128MiB"
[template.t.files]
"/etc/crash-matrix" = "{overlay}\n"

[network.lan]
cidr = "10.79.0.0/24"
nat = true
isolated = true
dns = ["192.0.2.53"]

[network.spare]
cidr = "10.79.1.0/24"

[drive.data]
size = "32MiB"
protect = true

[drive.scratch]
template = "t"
size = "{scratch}MiB"

[drive.empty]
size = "32MiB"

[vm.a]
vmm = "qemu"
kernel = "deb"
root = {{ template = "t", size = "256MiB" }}
drives = ["data"]
memory = "{memory}MiB"
network = "lan"
ports = ["18080:80"]
state = "{vm_state}"
"#,
            url = self.srv.url("").trim_end_matches('/'),
            fc = sha256_hex(&fc_tgz()),
            k = d.join(QEMU_KERNEL).display(),
            i = d.join("initrd.cpio.gz").display(),
            rootfs = sha256_hex(&std::fs::read(d.join("rootfs.tar.gz")).unwrap()),
            overlay = self.overlay,
            scratch = self.scratch_mib,
            memory = self.memory_mib,
            vm_state = self.vm_state,
        ));
    }

    fn fort(&self, args: &[&str], crash: Option<Point>) -> std::process::Output {
        let mut c = self.ws.command(args);
        c.env("FORT_GUEST_AGENT", &self.agent)
            .env("FORT_BOOT_TIMEOUT", "240");
        if let Some(p) = crash {
            c.env("FORT_CRASH_AT", p.name());
        }
        c.output().unwrap()
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.fort(args, None);
        assert!(
            out.status.success(),
            "fort {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `args` with the crash armed: fort must have died of SIGKILL at `p`.
    #[track_caller]
    fn crash(&self, args: &[&str], p: Point) {
        let out = self.fort(args, Some(p));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "fort {args:?} was to die at {} but exited with {:?}:\n{}\n{stderr}",
            p.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(&format!("FORT_CRASH_AT={}: killing myself", p.name())),
            "{stderr}"
        );
    }

    fn state(&self) -> PathBuf {
        self.ws.state_dir()
    }

    fn temp_leftover(&self) {
        let tmp = self.state().join("images/tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("crash-matrix-leftover"), b"x").unwrap();
    }
}

/// A fake Firecracker release: the kind only fetches it and runs `--version`.
fn fc_tgz() -> Vec<u8> {
    tgz(&[(
        "release/firecracker",
        b"#!/bin/sh\necho Firecracker v1.12.0\n",
        0o755,
    )])
}

/// Converged: the plan is empty, every row is ready, and the host holds exactly what the
/// records say.
#[track_caller]
fn assert_converged(m: &Matrix, case: &str) {
    let plan = m.fort(&["plan", "--detailed-exitcode"], None);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{case}: the plan after converging is not empty:\n{}",
        String::from_utf8_lossy(&plan.stdout)
    );
    let state = m.state();
    let list: serde_json::Value =
        serde_json::from_str(&m.ok(&["state", "list", "--json"])).unwrap();
    let rows = list.as_array().unwrap();
    assert!(
        rows.iter().all(|r| r["status"] == "ready"),
        "{case}: {rows:?}"
    );
    assert!(
        !state.join("snapshots/a/suspend").exists()
            && !state.join("snapshots/a/.suspend.tmp").exists(),
        "{case}: a snapshot of the running vm.a is left"
    );
    let vm = rows.iter().find(|r| r["address"] == "vm.a").unwrap();
    let started = &vm["outputs"]["started"];
    let own = BTreeSet::from([
        started["vmm"]["pid"].as_u64().unwrap() as u32,
        started["helper"]["pid"].as_u64().unwrap() as u32,
    ]);
    assert_eq!(processes_of(&state), own, "{case}: processes");
    assert_eq!(
        fort_links(),
        set(&["fort-a", "fort-lan", "fort-spare"]),
        "{case}: interfaces"
    );
    // The networks' tables, and vm.a's published-ports table (named with the state id).
    let tables: BTreeSet<String> = fort_tables()
        .into_iter()
        .map(|t| {
            if t.starts_with("fort-ports-a-") {
                "fort-ports-a".to_string()
            } else {
                t
            }
        })
        .collect();
    assert_eq!(
        tables,
        set(&["fort-lan", "fort-ports-a", "fort-spare"]),
        "{case}: tables"
    );
    assert_eq!(leases(&state), ["vm.a"], "{case}: leases");
    // `FORT_CONFINE=0` (to compare with unconfined VMs) leaves no uid rows.
    let confined = std::env::var_os("FORT_CONFINE").is_none_or(|v| v != "0");
    let want: &[&str] = if confined { &["vm.a"] } else { &[] };
    assert_eq!(uids(&state), want, "{case}: uids");
    let cg = cgroups(&state);
    assert!(cg.iter().all(|n| n == "vm-a"), "{case}: cgroups {cg:?}");
    assert_eq!(
        names(&state.join("drives")),
        set(&["a-root.ext4", "data.ext4", "empty.ext4", "scratch.ext4"]),
        "{case}: drives"
    );
    assert_eq!(names(&state.join("run")), set(&["a"]), "{case}: run dirs");
    assert!(
        names(&state.join("images/tmp")).is_empty(),
        "{case}: images/tmp"
    );
    assert!(
        names(&state.join("cache/tmp")).is_empty(),
        "{case}: cache/tmp"
    );
    // Every image is one a record names (old ones are collected).
    let text = list.to_string();
    for img in names(&state.join("images"))
        .iter()
        .filter(|n| n.ends_with(".ext4"))
    {
        assert!(
            text.contains(img.as_str()),
            "{case}: images/{img} is not referenced"
        );
    }
    // So is every cache entry (its sidecar and stamp included).
    for f in names(&state.join("cache")).iter().filter(|n| *n != "tmp") {
        let entry = f.trim_end_matches(".sha256").trim_end_matches(".verified");
        assert!(text.contains(entry), "{case}: cache/{f} is not referenced");
    }
    let data = sha256_hex(&std::fs::read(state.join("drives/data.ext4")).unwrap());
    assert_eq!(
        Some(&data),
        m.data_sha.as_ref(),
        "{case}: drive.data changed"
    );
    assert_eq!(ip_forward(), "1", "{case}: ip_forward");
}

/// Destroyed: nothing of fort's is left on the host, nothing in state.
#[track_caller]
fn assert_nothing_left(m: &Matrix, case: &str) {
    let state = m.state();
    assert_eq!(
        m.ok(&["state", "list"]),
        "No resources recorded.\n",
        "{case}"
    );
    assert_eq!(processes_of(&state), BTreeSet::new(), "{case}: processes");
    assert_eq!(fort_links(), BTreeSet::new(), "{case}: interfaces");
    assert_eq!(fort_tables(), BTreeSet::new(), "{case}: tables");
    assert!(leases(&state).is_empty(), "{case}: leases");
    assert!(uids(&state).is_empty(), "{case}: uids");
    assert!(cgroups(&state).is_empty(), "{case}: cgroups");
    assert!(names(&state.join("drives")).is_empty(), "{case}: drives");
    assert!(names(&state.join("run")).is_empty(), "{case}: run dirs");
    assert!(
        names(&state.join("images/tmp")).is_empty(),
        "{case}: images/tmp"
    );
    let images: Vec<String> = names(&state.join("images"))
        .into_iter()
        .filter(|n| n != "tmp")
        .collect();
    assert!(images.is_empty(), "{case}: images {images:?}");
    let cache: Vec<String> = names(&state.join("cache"))
        .into_iter()
        .filter(|n| n != "tmp")
        .collect();
    assert!(cache.is_empty(), "{case}: cache {cache:?}");
    assert_eq!(ip_forward(), "0", "{case}: ip_forward is back off");
}

#[test]
fn every_crash_point_converges_and_leaks_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    let dir = assets();
    in_netns(move || {
        // Only loopback and the networks fort creates exist in this namespace.
        assert_eq!(
            std::fs::read_to_string("/proc/thread-self/net/route")
                .unwrap()
                .lines()
                .count(),
            1,
            "the test namespace has routes"
        );
        let srv = Server::start();
        srv.route("/fc.tgz", Reply::ok(fc_tgz()));
        srv.route(
            "/rootfs.tar.gz",
            Reply::ok(std::fs::read(dir.join("rootfs.tar.gz")).unwrap()),
        );
        let mut m = Matrix {
            ws: Workspace::new(),
            srv,
            assets: dir,
            agent,
            overlay: 0,
            scratch_mib: 256,
            memory_mib: 192,
            data_sha: None,
            vm_state: "running",
        };
        let _console = ConsoleOnFailure(m.state().join("run"));
        m.write();
        m.ok(&["apply", "--yes"]);
        m.data_sha = Some(sha256_hex(
            &std::fs::read(m.state().join("drives/data.ext4")).unwrap(),
        ));
        assert_converged(&m, "first apply");

        let started = std::time::Instant::now();
        let mut destroys = Vec::new();
        // FORT_CRASH_MATRIX=a,b runs only those points (to look into one).
        let only: Option<Vec<String>> = std::env::var("FORT_CRASH_MATRIX")
            .ok()
            .map(|s| s.split(',').map(String::from).collect());
        for &p in Point::ALL {
            if only
                .as_ref()
                .is_some_and(|o| !o.iter().any(|n| n == p.name()))
            {
                continue;
            }
            let t = trigger(p);
            let case = format!("apply crashed at {}", p.name());
            let args: Vec<String> = match t {
                Trigger::Destroy { .. } => {
                    destroys.push((p, t));
                    continue;
                }
                Trigger::Replace(a) => {
                    vec!["apply".into(), "--yes".into(), "--replace".into(), a.into()]
                }
                Trigger::EditTemplate => {
                    m.overlay += 1;
                    m.write();
                    vec!["apply".into(), "--yes".into()]
                }
                Trigger::GrowDrive => {
                    m.scratch_mib += 16;
                    m.write();
                    vec!["apply".into(), "--yes".into()]
                }
                Trigger::RestartVm => {
                    m.memory_mib = if m.memory_mib == 192 { 200 } else { 192 };
                    m.write();
                    vec!["apply".into(), "--yes".into()]
                }
                Trigger::ForwardingOff => {
                    std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
                    vec!["apply".into(), "--yes".into()]
                }
                Trigger::Leftover => {
                    m.temp_leftover();
                    vec!["apply".into(), "--yes".into()]
                }
                Trigger::State(s) => {
                    m.vm_state = s;
                    m.write();
                    vec!["apply".into(), "--yes".into()]
                }
                Trigger::Resume => {
                    m.vm_state = "suspended";
                    m.write();
                    m.ok(&["apply", "--yes"]);
                    m.vm_state = "running";
                    m.write();
                    vec!["apply".into(), "--yes".into()]
                }
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let t0 = std::time::Instant::now();
            m.crash(&args, p);
            m.ok(&["apply", "--yes"]);
            if let Trigger::State(s) = t {
                // Converged to the state it was killed on the way to: nothing more to do, no
                // unfinished snapshot left; then back to running for the common checks.
                let plan = m.fort(&["plan", "--detailed-exitcode"], None);
                assert_eq!(
                    plan.status.code(),
                    Some(0),
                    "{case}: the plan after converging to {s} is not empty:\n{}",
                    String::from_utf8_lossy(&plan.stdout)
                );
                let snaps = m.state().join("snapshots/a");
                assert!(
                    !snaps.join(".suspend.tmp").exists(),
                    "{case}: a temporary snapshot is left"
                );
                assert_eq!(
                    snaps.join("suspend/snapshot.json").exists(),
                    s == "suspended",
                    "{case}"
                );
                m.vm_state = "running";
                m.write();
                m.ok(&["apply", "--yes"]);
            }
            assert_converged(&m, &case);
            if p == Point::DriveResizing {
                // The killed resize is finished: the filesystem fills the longer file.
                let path = m.state().join("drives/scratch.ext4");
                assert_eq!(
                    ext4_bytes(&path),
                    std::fs::metadata(&path).unwrap().len(),
                    "{case}: the filesystem of drive.scratch was not grown"
                );
            }
            eprintln!(
                "crash matrix: {case}: converged in {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            if DESTROY_ALSO.contains(&p) {
                destroys.push((
                    p,
                    Trigger::Destroy {
                        leftover: p == Point::OrphansRemoved,
                    },
                ));
            }
        }
        eprintln!(
            "crash matrix: apply cases took {:.0}s",
            started.elapsed().as_secs_f64()
        );

        let started = std::time::Instant::now();
        let n = destroys.len();
        for (i, (p, t)) in destroys.into_iter().enumerate() {
            let case = format!("destroy crashed at {}", p.name());
            if matches!(t, Trigger::Destroy { leftover: true }) {
                m.temp_leftover();
            }
            m.crash(&["destroy", "--yes", "--allow-data-loss"], p);
            m.ok(&["destroy", "--yes", "--allow-data-loss"]);
            assert_nothing_left(&m, &case);
            eprintln!("crash matrix: {case}: nothing left");
            if i + 1 < n {
                m.ok(&["apply", "--yes"]);
                m.data_sha = Some(sha256_hex(
                    &std::fs::read(m.state().join("drives/data.ext4")).unwrap(),
                ));
            }
        }
        eprintln!(
            "crash matrix: destroy cases took {:.0}s",
            started.elapsed().as_secs_f64()
        );
        if n == 0 {
            // A run of some points only: leave nothing running.
            m.ok(&["destroy", "--yes", "--allow-data-loss"]);
            assert_nothing_left(&m, "final destroy");
        }
    });
}

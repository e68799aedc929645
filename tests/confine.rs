//! Confined VMMs, with a real VM under QEMU/TCG: QEMU and its vhost-device-vsock run as the
//! VM's own uid under seccomp, in the VM's cgroup with its CPU, memory and pids limits; a
//! guest spinning its vCPU stays within its CPU quota; the TAP, run dir and drives belong to
//! the uid; destroy removes the cgroup and releases the uid.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fort::Workspace;
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::vms::{assets, ConsoleOnFailure, ONE_AT_A_TIME};

fn manifest(dir: &Path) -> String {
    format!(
        "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n\
         [rootfs.bb]\nurl = \"file://{r}\"\n\n\
         [template.t]\nrootfs = \"bb\"\nsize = \"128MiB\"\n\n\
         [network.lan]\ncidr = \"10.81.0.0/24\"\n\n\
         [drive.data]\nsize = \"16MiB\"\n\n\
         [vm.a]\nvmm = \"qemu\"\nkernel = \"deb\"\nvcpus = 1\n\
         root = {{ template = \"t\", size = \"256MiB\" }}\ndrives = [\"data\"]\nmemory = \"192MiB\"\nnetwork = \"lan\"\n",
        k = dir.join("vmlinuz").display(),
        i = dir.join("initrd.cpio.gz").display(),
        r = dir.join("rootfs.tar.gz").display(),
    )
}

fn status_field(pid: u64, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn a_confined_vm_runs_as_its_uid_in_its_cgroup_and_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    let dir = assets();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        ws.write_manifest(&manifest(&dir));
        ws.run(&["apply", "--yes"]).ok();

        let show: serde_json::Value =
            serde_json::from_str(&ws.run(&["state", "show", "vm.a", "--json"]).ok().stdout)
                .unwrap();
        let out = &show["outputs"];
        let uid = out["uid"].as_u64().unwrap();
        assert!(uid >= 2_000_000_000, "{out}");

        // 1. Both processes: the VM's uid and gid (not root), seccomp filtering, no new privs.
        let qemu = out["started"]["vmm"]["pid"].as_u64().unwrap();
        let vhost = out["started"]["helper"]["pid"].as_u64().unwrap();
        for pid in [qemu, vhost] {
            let ids = format!("{uid}\t{uid}\t{uid}\t{uid}");
            assert_eq!(status_field(pid, "Uid"), ids, "PID {pid}");
            assert_eq!(status_field(pid, "Gid"), ids, "PID {pid}");
            assert_eq!(status_field(pid, "Groups"), "", "PID {pid}");
            assert_eq!(status_field(pid, "Seccomp"), "2", "PID {pid}");
            assert_eq!(status_field(pid, "NoNewPrivs"), "1", "PID {pid}");
        }
        let cmdline = read(&PathBuf::from(format!("/proc/{qemu}/cmdline"))).replace('\0', " ");
        assert!(
            cmdline.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ) && cmdline.contains("-netdev tap,id=net0,fd="),
            "{cmdline}"
        );

        // 2. Its files: run dir and drives its own, the database not readable by it.
        let run = ws.state_dir().join("run/a");
        let meta = std::fs::metadata(&run).unwrap();
        assert_eq!((meta.uid() as u64, meta.mode() & 0o777), (uid, 0o700));
        for d in ["drives/a-root.ext4", "drives/data.ext4"] {
            let m = std::fs::metadata(ws.state_dir().join(d)).unwrap();
            assert_eq!(
                (m.uid() as u64, m.gid() as u64, m.mode() & 0o777),
                (uid, uid, 0o600),
                "{d}"
            );
        }
        for f in ["state.db", "lock"] {
            let m = std::fs::metadata(ws.state_dir().join(f)).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "{f}");
        }
        assert_eq!(
            std::fs::metadata(ws.state_dir()).unwrap().mode() & 0o777,
            0o711
        );
        let tap = out["network"]["tap"].as_str().unwrap();
        // (sysfs shows the test's original namespace, netlink this one.)
        let link = std::process::Command::new("ip")
            .args(["-d", "link", "show", tap])
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains(&format!("user {uid} group {uid}")), "{link}");

        // 3. Its cgroup, with the limits of 1 vCPU and 192 MiB (+ 256 MiB for the VMM), and
        // both processes in it.
        let dirs: Vec<PathBuf> = out["cgroup"]["dirs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| PathBuf::from(d.as_str().unwrap()))
            .collect();
        assert!(!dirs.is_empty(), "{out}");
        let version = out["cgroup"]["version"].as_u64().unwrap();
        let path = out["cgroup"]["path"].as_str().unwrap();
        assert!(
            path.starts_with("fort/") && path.ends_with("/vm-a"),
            "{path}"
        );
        let file = |name: &str| {
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("no {name} in {dirs:?}"))
        };
        if version == 1 {
            assert_eq!(read(&file("cpu.cfs_period_us")), "100000");
            assert_eq!(read(&file("cpu.cfs_quota_us")), "100000");
            assert_eq!(
                read(&file("memory.limit_in_bytes")),
                (448u64 << 20).to_string()
            );
        } else {
            assert_eq!(read(&file("cpu.max")), "100000 100000");
            assert_eq!(read(&file("memory.max")), (448u64 << 20).to_string());
        }
        assert_eq!(read(&file("pids.max")), "512");
        for d in &dirs {
            let procs = read(&d.join("cgroup.procs"));
            for pid in [qemu, vhost] {
                assert!(
                    procs.lines().any(|l| l == pid.to_string()),
                    "{pid} not in {}: {procs}",
                    d.display()
                );
            }
        }

        // 4. A guest spinning its vCPU stays within the quota (1 CPU), measured from the
        // cgroup's accounting while it spins.
        let usage = || -> u64 {
            let p = file(if version == 1 {
                "cpuacct.usage"
            } else {
                "cpu.stat"
            });
            let s = read(&p);
            if version == 1 {
                s.parse().unwrap()
            } else {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    * 1000
            }
        };
        let mut spin = ws
            .command(&[
                "exec",
                "vm.a",
                "--",
                "sh",
                "-c",
                "yes > /dev/null & a=$!; yes > /dev/null & b=$!; sleep 12; kill $a $b",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let (u0, t0) = (usage(), Instant::now());
        std::thread::sleep(Duration::from_secs(5));
        let (u1, elapsed) = (usage(), t0.elapsed());
        spin.wait().unwrap();
        let used = (u1 - u0) as f64 / 1e9;
        let allowed = 1.0 * elapsed.as_secs_f64();
        eprintln!(
            "cpu: {used:.2}s used in {:.2}s (quota {allowed:.2}s)",
            elapsed.as_secs_f64()
        );
        assert!(used > 0.2 * allowed, "the guest hardly ran: {used:.2}s");
        assert!(
            used <= allowed * 1.1,
            "{used:.2}s used, quota {allowed:.2}s"
        );
        if version == 1 {
            let stat = read(&file("cpu.stat"));
            eprintln!("cpu.stat: {}", stat.replace('\n', ", "));
        }
        // The VMM's memory beyond the guest's (what VMM_OVERHEAD_BYTES must cover), for
        // docs/vms.md: the cgroup's peak against what the guest uses.
        let peak = file(if version == 1 {
            "memory.max_usage_in_bytes"
        } else {
            "memory.peak"
        });
        let guest = ws
            .run(&["exec", "vm.a", "--", "cat", "/proc/meminfo"])
            .ok()
            .stdout
            .clone();
        let kib = |k: &str| -> u64 {
            guest
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .unwrap()
        };
        let guest_used = (kib("MemTotal:") - kib("MemFree:")) << 10;
        // Guest RAM is QEMU's shared memfd (RssShmem); QEMU's own is RssAnon + RssFile.
        let rss = ["VmRSS", "RssAnon", "RssFile", "RssShmem"]
            .map(|f| format!("{f} {}", status_field(qemu, f)));
        eprintln!(
            "memory: cgroup peak {} MiB, guest uses {} MiB; QEMU {}; vhost-device-vsock VmRSS {}",
            read(&peak).parse::<u64>().unwrap() >> 20,
            guest_used >> 20,
            rss.join(", "),
            status_field(vhost, "VmRSS")
        );

        // 5. Destroy: the cgroup dirs gone, the uid released, the drives root's again.
        ws.run(&["destroy", "--yes"]).ok();
        for d in &dirs {
            assert!(!d.exists(), "{} is left", d.display());
        }
        let db = rusqlite::Connection::open(ws.state_dir().join("state.db")).unwrap();
        let n: i64 = db
            .query_row("SELECT count(*) FROM uids", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "a uid row is left");
    });
}

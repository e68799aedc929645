//! Orphan classification tables: what was seen × what is recorded → exactly these leftovers.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::host::vmm::Started;
use crate::state::Status;

fn rec(addr: &str, outputs: serde_json::Value) -> (Address, Record) {
    let address: Address = addr.parse().unwrap();
    (
        address.clone(),
        Record {
            kind: address.kind,
            address,
            spec_hash: "h".into(),
            spec: serde_json::json!({}).into(),
            outputs,
            deps: vec![],
            status: Status::Ready,
            error: None,
            step: None,
            created_at: 1,
            updated_at: 1,
        },
    )
}

fn proc(pid: u32, name: &str, cmdline: &str) -> ProcInfo {
    ProcInfo {
        proc: Proc {
            pid,
            start_time: 100 + u64::from(pid),
        },
        name: name.into(),
        cmdline: cmdline.into(),
    }
}

fn vm_outputs(vmm_pid: u32, helper_pid: u32, tap: &str) -> serde_json::Value {
    let p = |pid: u32| Proc {
        pid,
        start_time: 100 + u64::from(pid),
    };
    serde_json::json!({
        "vmm": "qemu",
        "run_dir": "/s/run/a",
        "vsock_uds": "/s/run/a/vsock.sock",
        "console_log": "/s/run/a/console.log",
        "cid": 9,
        "tap": {"network": "lan", "tap": tap},
        "started": Started { vmm: p(vmm_pid), helper: Some(p(helper_pid)) },
        "network": null,
        "boot_ms": null,
    })
}

fn lines(orphans: &[Orphan]) -> Vec<String> {
    orphans
        .iter()
        .map(|o| format!("{} ({}): {}", o.describe(), o.action(), o.reason))
        .collect()
}

#[test]
fn leftovers_are_what_no_record_owns_and_only_what_fort_made() {
    let dir = Path::new("/s");
    let recorded: BTreeMap<Address, Record> = [
        rec("vm.a", vm_outputs(10, 11, "fort-a")),
        rec("vm.pool-2", serde_json::json!({})),
        rec("network.lan", serde_json::json!({"bridge": "fort-lan"})),
        rec(
            "drive.data",
            serde_json::json!({"path": "/s/drives/data.ext4"}),
        ),
    ]
    .into_iter()
    .collect();
    let seen = Seen {
        processes: vec![
            // vm.a's own processes.
            proc(
                10,
                "qemu-system-x86_64",
                "qemu-system-x86_64 -chardev socket,id=vsock,path=/s/run/a/vhost.sock",
            ),
            proc(
                11,
                "vhost-device-vsock",
                "vhost-device-vsock --socket /s/run/a/vhost.sock",
            ),
            // A QEMU an interrupted apply started for a recorded VM, and one of a VM nobody
            // records.
            proc(
                20,
                "qemu-system-x86_64",
                "qemu-system-x86_64 -serial file:/s/run/pool-2/console.log",
            ),
            proc(
                21,
                "vhost-device-vsock",
                "vhost-device-vsock --socket /s/run/gone/vhost.sock",
            ),
            // Someone reading a console log is not fort's to stop.
            proc(30, "tail", "tail -f /s/run/a/console.log"),
        ],
        links: vec![
            SeenLink {
                name: "fort-a".into(),
                kind: Some("tun".into()),
                alias: Some("fort:vm.a@abcd".into()),
            },
            SeenLink {
                name: "fort-lan".into(),
                kind: Some("bridge".into()),
                alias: Some("fort:network.lan@abcd".into()),
            },
            SeenLink {
                name: "fort-old".into(),
                kind: Some("bridge".into()),
                alias: Some("fort:network.old@abcd".into()),
            },
            SeenLink {
                name: "fort-b".into(),
                kind: Some("tun".into()),
                alias: Some("fort:vm.b@abcd".into()),
            },
            // Another state dir's, an older fort's (no mark) and a foreign interface.
            SeenLink {
                name: "fort-x".into(),
                kind: Some("tun".into()),
                alias: Some("fort:vm.x@ffff".into()),
            },
            SeenLink {
                name: "fort-y".into(),
                kind: Some("tun".into()),
                alias: Some("fort:vm.y".into()),
            },
            SeenLink {
                name: "eth0".into(),
                kind: None,
                alias: None,
            },
        ],
        tables: vec!["fort-old".into(), "fort-lan".into()],
        port_tables: vec![],
        leases: vec![
            Lease {
                network: "lan".into(),
                owner: "vm.a".into(),
                ip: "10.0.0.2".parse().unwrap(),
                mac: "m".into(),
            },
            Lease {
                network: "lan".into(),
                owner: "vm.b".into(),
                ip: "10.0.0.3".parse().unwrap(),
                mac: "n".into(),
            },
        ],
        run_dirs: vec![PathBuf::from("/s/run/a"), PathBuf::from("/s/run/gone")],
        files: vec![
            PathBuf::from("/s/cache/tmp/.tmpXYZ"),
            PathBuf::from("/s/images/tmp/0123"),
            PathBuf::from("/s/drives/data.ext4"),
            PathBuf::from("/s/drives/lost.ext4"),
            PathBuf::from("/s/drives/data.ext4.part"),
        ],
        ..Seen::default()
    };
    assert_eq!(
        lines(&classify(dir, "abcd", &seen, &recorded)),
        [
            "qemu-system-x86_64 (PID 20) of vm.pool-2 (stopped): it runs from run/pool-2/ but vm.pool-2's record does not own it (started by an interrupted apply)",
            "vhost-device-vsock (PID 21) of vm.gone (stopped): it runs from run/gone/ but vm.gone is not recorded",
            "bridge fort-old (deleted): it carries this state dir's mark for network.old, which no record owns",
            "tun fort-b (deleted): it carries this state dir's mark for vm.b, which no record owns",
            "nftables table ip fort-old (deleted): it belongs to the leftover bridge fort-old",
            "lease 10.0.0.3 of network.lan held for vm.b (released): vm.b is not recorded",
            "run dir /s/run/gone (removed): no VM of that name is recorded",
            "temp file /s/cache/tmp/.tmpXYZ (removed): an interrupted download, image build or drive creation left it",
            "temp file /s/images/tmp/0123 (removed): an interrupted download, image build or drive creation left it",
            "drive file /s/drives/lost.ext4 (kept): no drive is recorded with it; it may hold data, so fort keeps it (declare the drive again to adopt it, or delete the file)",
            "temp file /s/drives/data.ext4.part (removed): an interrupted download, image build or drive creation left it",
        ]
    );
    // With everything recorded, nothing is left over.
    let none = Seen {
        processes: seen.processes[..2].to_vec(),
        links: seen.links[..2].to_vec(),
        tables: vec!["fort-lan".into()],
        port_tables: vec![],
        leases: seen.leases[..1].to_vec(),
        run_dirs: seen.run_dirs[..1].to_vec(),
        files: vec![PathBuf::from("/s/drives/data.ext4")],
        ..Seen::default()
    };
    assert_eq!(
        lines(&classify(dir, "abcd", &none, &recorded)),
        Vec::<String>::new()
    );
}

#[test]
fn a_port_table_is_a_leftover_unless_its_vm_records_it_and_only_this_state_dirs() {
    let mut a = vm_outputs(10, 11, "fort-a");
    a["ports_table"] = "fort-ports-a-abcd".into();
    let recorded: BTreeMap<Address, Record> =
        [rec("vm.a", a), rec("vm.b", vm_outputs(12, 13, "fort-b"))]
            .into_iter()
            .collect();
    let seen = Seen {
        port_tables: vec![
            "fort-ports-a-abcd".into(),
            // vm.b's record does not name it (a crash before it did, or an older row).
            "fort-ports-b-abcd".into(),
            // A VM nobody records.
            "fort-ports-gone-1-abcd".into(),
            // Another state dir's: not ours to judge.
            "fort-ports-a-ffff".into(),
        ],
        ..Seen::default()
    };
    let o = classify(Path::new("/s"), "abcd", &seen, &recorded);
    assert_eq!(
        lines(&o),
        [
            "nftables table ip fort-ports-b-abcd (deleted): it publishes ports of vm.b, whose record does not name it",
            "nftables table ip fort-ports-gone-1-abcd (deleted): it publishes ports of vm.gone-1, whose record does not name it",
        ]
    );
    assert_eq!(o[1].owner(), Some(Address::new(Kind::Vm, "gone-1")));
}

#[test]
fn uids_and_cgroups_nobody_records() {
    let recorded: BTreeMap<Address, Record> = [rec(
        "vm.a",
        serde_json::json!({"cgroup": {"path": "fort/abcd/vm-a", "version": 1,
            "dirs": ["/cg/cpu/fort/abcd/vm-a", "/cg/pids/fort/abcd/vm-a"]}}),
    )]
    .into_iter()
    .collect();
    let seen = Seen {
        uids: vec![crate::state::uids::UidLease {
            owner: "vm.gone".into(),
            uid: 2_000_000_007,
        }],
        cgroups: [
            "/cg/cpu/fort/abcd/vm-a",
            "/cg/pids/fort/abcd/vm-a",
            "/cg/memory/fort/abcd/vm-a",
            "/cg/cpu/fort/abcd/vm-gone",
        ]
        .map(PathBuf::from)
        .to_vec(),
        ..Seen::default()
    };
    assert_eq!(
        lines(&classify(Path::new("/s"), "abcd", &seen, &recorded)),
        [
            "uid 2000000007 held for vm.gone (released): vm.gone is not recorded",
            "cgroup /cg/memory/fort/abcd/vm-a (removed): vm.a's record does not name it",
            "cgroup /cg/cpu/fort/abcd/vm-gone (removed): vm.gone is not recorded",
        ]
    );
}

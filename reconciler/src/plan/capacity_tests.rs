//! Capacity tables: changes × manifest × host → exactly this refusal, or none.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use super::*;
use crate::manifest;
use crate::plan::{Effect, FieldDiff};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn desired(vms: &[(&str, &str, &str)], drives: &[(&str, &str)]) -> BTreeMap<Address, Resource> {
    let mut text = String::from(
        "[fort]\nversion = 1\n[kernel.k]\nurl = \"/boot/vmlinux\"\n[drive.root]\nsize = \"1GiB\"\n",
    );
    for (name, memory, state) in vms {
        text.push_str(&format!(
            "[vm.{name}]\nkernel = \"k\"\nroot = {{ template = \"t\", size = \"1GiB\" }}\nmemory = \"{memory}\"\nstate = \"{state}\"\n"
        ));
    }
    for (name, size) in drives {
        text.push_str(&format!("[drive.{name}]\nsize = \"{size}\"\n"));
    }
    text.push_str(
        "[rootfs.r]\nurl = \"/srv/r.tar\"\n[template.t]\nrootfs = \"r\"\nsize = \"512MiB\"\n",
    );
    manifest::load_files(&[(PathBuf::from("f.toml"), text)], Path::new("f.toml"))
        .unwrap()
        .resources
}

fn change(addr: &str, op: Op) -> Change {
    Change {
        address: addr.parse().unwrap(),
        op,
        reasons: vec![],
        data_loss: false,
        fields: vec![],
    }
}

fn host(total: u64, avail: u64, free: u64, running: &[(&str, u64)]) -> Host {
    Host {
        memory_total: Some(total),
        memory_available: Some(avail),
        disk_free: Some((PathBuf::from("/var/lib/fort"), free)),
        running: running
            .iter()
            .map(|(a, n)| (a.parse().unwrap(), *n))
            .collect(),
    }
}

fn recorded_drive(addr: &str, size: u64) -> BTreeMap<Address, Record> {
    let a: Address = addr.parse().unwrap();
    let d = desired(&[], &[(a.name.as_str(), "1GiB")]);
    let mut r = Record::applied(&d[&a], serde_json::json!({ "size": size }), 1, 1);
    r.address = a.clone();
    [(a, r)].into_iter().collect()
}

#[test]
fn table() {
    let none = BTreeMap::new();
    type Case<'a> = (
        &'a str,
        BTreeMap<Address, Resource>,
        BTreeMap<Address, Record>,
        Vec<Change>,
        Host,
        Result<(), &'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "a restart to more memory than the host has is refused like a create",
            desired(&[("a", "99GiB", "running")], &[]),
            none.clone(),
            vec![change("vm.a", Op::Restart)],
            host(24 * GIB, 20 * GIB, 100 * GIB, &[("vm.a", 300 * MIB)]),
            Err("vm.a: the manifest wants 99GiB of VM memory running on this host (vm.a 99GiB), more than the 24GiB it has in total"),
        ),
        (
            "the total counts every VM the manifest wants running, not the one that changes",
            desired(&[("a", "16GiB", "running"), ("b", "10GiB", "running"), ("c", "30GiB", "stopped")], &[]),
            none.clone(),
            vec![change("vm.b", Op::Create)],
            host(24 * GIB, 20 * GIB, 100 * GIB, &[("vm.a", 2 * GIB)]),
            Err("vm.b: the manifest wants 26GiB of VM memory running on this host (vm.a 16GiB, vm.b 10GiB), more than the 24GiB it has in total"),
        ),
        (
            "what starts must fit in what is available, plus what the VMs it stops use",
            desired(&[("a", "4GiB", "running"), ("b", "6GiB", "running")], &[]),
            none.clone(),
            vec![change("vm.a", Op::Restart), change("vm.b", Op::Create)],
            host(24 * GIB, 8 * GIB, 100 * GIB, &[("vm.a", GIB)]),
            Err("vm.a: this plan starts VMs with 10GiB of memory (vm.b 6GiB, vm.a 4GiB), more than the 9GiB this host has available, counting the 1GiB the VMs it stops use now"),
        ),
        (
            "a running VM that stays costs nothing new; a stopped one started again does",
            desired(&[("a", "4GiB", "running"), ("b", "6GiB", "running")], &[]),
            none.clone(),
            vec![change("vm.b", Op::Update)],
            host(24 * GIB, 5 * GIB + 512 * MIB, 100 * GIB, &[("vm.a", 4 * GIB)]),
            Err("vm.b: this plan starts VMs with 6GiB of memory (vm.b 6GiB), more than the 5.5GiB this host has available"),
        ),
        (
            "an update of a running VM starts nothing",
            desired(&[("a", "4GiB", "running"), ("b", "6GiB", "running")], &[]),
            none.clone(),
            vec![change("vm.b", Op::Update)],
            host(24 * GIB, GIB, 100 * GIB, &[("vm.a", 4 * GIB), ("vm.b", 5 * GIB)]),
            Ok(()),
        ),
        (
            "it fits",
            desired(&[("a", "4GiB", "running"), ("b", "6GiB", "running")], &[]),
            none.clone(),
            vec![change("vm.a", Op::Create), change("vm.b", Op::Create)],
            host(24 * GIB, 12 * GIB, 100 * GIB, &[]),
            Ok(()),
        ),
        (
            "new drives and images must fit on the state dir's filesystem",
            desired(&[], &[("big", "20GiB"), ("small", "1GiB")]),
            none.clone(),
            vec![change("drive.big", Op::Create), change("drive.small", Op::Create), change("template.t", Op::Create)],
            host(24 * GIB, 20 * GIB, 12 * GIB, &[]),
            Err("drive.big: this plan adds 21.5GiB of drives and images (drive.big 20GiB, drive.small 1GiB, template.t 512MiB), more than the 12GiB free on /var/lib/fort"),
        ),
        (
            "a grown drive needs only what it grows by",
            desired(&[], &[("big", "20GiB")]),
            recorded_drive("drive.big", 10 * GIB),
            vec![Change {
                fields: vec![FieldDiff { field: "size".into(), before: None, after: None, effect: Effect::Update }],
                ..change("drive.big", Op::Update)
            }],
            host(24 * GIB, 20 * GIB, 12 * GIB, &[]),
            Ok(()),
        ),
    ];
    for (name, d, r, changes, h, want) in cases {
        let got = check(&changes, &d, &r, &h).map_err(|e| e.to_string());
        assert_eq!(
            got.as_ref().map(|_| ()).map_err(String::as_str),
            want,
            "{name}"
        );
    }
}

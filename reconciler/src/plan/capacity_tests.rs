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
        protected: false,
        details: vec![],
        fields: vec![],
    }
}

fn host(total: u64, avail: u64, free: u64, running: &[(&str, u64)]) -> Host {
    Host {
        memory_total: Some(total),
        memory_available: Some(avail),
        disk_free: Some((PathBuf::from("/var/lib/fort"), free)),
        reflink: false,
        image_bytes: [("t".to_string(), 300 * MIB)].into_iter().collect(),
        running: running
            .iter()
            .map(|(a, n)| (a.parse().unwrap(), *n))
            .collect(),
    }
}

#[test]
fn table() {
    type Case<'a> = (
        &'a str,
        BTreeMap<Address, Resource>,
        Vec<Change>,
        Host,
        Result<(), &'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "a restart to more memory than the host has is refused like a create",
            desired(&[("a", "99GiB", "running")], &[]),
            vec![change("vm.a", Op::Restart)],
            host(24 * GIB, 20 * GIB, 100 * GIB, &[("vm.a", 300 * MIB)]),
            Err("vm.a: the manifest wants 99GiB of VM memory running on this host (vm.a 99GiB), more than the 24GiB it has in total"),
        ),
        (
            "the total counts every VM the manifest wants running, not the one that changes",
            desired(&[("a", "16GiB", "running"), ("b", "10GiB", "running"), ("c", "30GiB", "stopped")], &[]),
            vec![change("vm.b", Op::Create)],
            host(24 * GIB, 20 * GIB, 100 * GIB, &[("vm.a", 2 * GIB)]),
            Err("vm.b: the manifest wants 26GiB of VM memory running on this host (vm.a 16GiB, vm.b 10GiB), more than the 24GiB it has in total"),
        ),
        (
            "what starts must fit in what is available, plus what the VMs it stops use",
            desired(&[("a", "4GiB", "running"), ("b", "6GiB", "running")], &[]),
            vec![change("vm.a", Op::Restart), change("vm.b", Op::Create)],
            host(24 * GIB, 8 * GIB, 100 * GIB, &[("vm.a", GIB)]),
            Err("vm.a: this plan starts VMs with 10GiB of memory (vm.b 6GiB, vm.a 4GiB), more than the 9GiB this host has available, counting the 1GiB the VMs it stops use now"),
        ),
        (
            "a running VM that stays costs nothing new; a stopped one started again does",
            desired(&[("a", "4GiB", "running"), ("b", "6GiB", "running")], &[]),
            vec![change("vm.b", Op::Update)],
            host(24 * GIB, 5 * GIB + 512 * MIB, 100 * GIB, &[("vm.a", 4 * GIB)]),
            Err("vm.b: this plan starts VMs with 6GiB of memory (vm.b 6GiB), more than the 5.5GiB this host has available"),
        ),
        (
            "an update of a running VM starts nothing",
            desired(&[("a", "4GiB", "running"), ("b", "6GiB", "running")], &[]),
            vec![change("vm.b", Op::Update)],
            host(24 * GIB, GIB, 100 * GIB, &[("vm.a", 4 * GIB), ("vm.b", 5 * GIB)]),
            Ok(()),
        ),
        (
            "it fits",
            desired(&[("a", "4GiB", "running"), ("b", "6GiB", "running")], &[]),
            vec![change("vm.a", Op::Create), change("vm.b", Op::Create)],
            host(24 * GIB, 12 * GIB, 100 * GIB, &[]),
            Ok(()),
        ),
        (
            "what the apply writes must fit on the state dir's filesystem: images and copies",
            desired(&[("a", "1GiB", "running")], &[("big", "20GiB")]),
            vec![change("template.t", Op::Create), change("drive.a-root", Op::Create), change("drive.big", Op::Create)],
            host(24 * GIB, 20 * GIB, 500 * MIB, &[]),
            Err("template.t: this plan writes about 600MiB of images and drive copies (template.t 300MiB, drive.a-root 300MiB), more than the 500MiB free on /var/lib/fort"),
        ),
        (
            "drives are sparse: empty ones and grown ones write next to nothing",
            desired(&[], &[("big", "20GiB")]),
            vec![
                Change {
                    fields: vec![FieldDiff { field: "size".into(), before: None, after: None, effect: Effect::Update }],
                    ..change("drive.big", Op::Update)
                },
                change("drive.root", Op::Create),
            ],
            host(24 * GIB, 20 * GIB, 100 * MIB, &[]),
            Ok(()),
        ),
    ];
    for (name, d, changes, h, want) in cases {
        let got = check(&changes, &d, &h).map_err(|e| e.to_string());
        assert_eq!(
            got.as_ref().map(|_| ()).map_err(String::as_str),
            want,
            "{name}"
        );
    }
}

//! What the plan says of new VMs of a warm template, by VMM, jailer and data drives.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::address::{Address, Kind};
use crate::manifest::Spec;
use crate::plan::Op;

fn load(text: &str) -> crate::manifest::Manifest {
    crate::manifest::load_files(
        &[(std::path::PathBuf::from("fort.toml"), text.to_string())],
        std::path::Path::new("fort.toml"),
    )
    .unwrap()
}

fn details(m: &crate::manifest::Manifest, vm: &str, op: Op) -> Vec<String> {
    let Spec::Vm(spec) = &m.resources[&Address::new(Kind::Vm, vm)].spec else {
        panic!("vm.{vm}");
    };
    plan_details(spec, op)
}

const STARTS_WARM: &str = "starts warm: restored from template.base's snapshot (made by booting one VM of it, if there is none for this shape), then given its own identity";

/// What the plan says of a new VM of a warm template, by VMM, jailer and data drives.
#[test]
fn the_plan_says_which_vms_of_a_warm_template_start_warm_and_why_others_boot() {
    let text = r#"[fort]
version = 1
[firecracker.jailed]
url = "/srv/firecracker-v1.12.0-x86_64.tgz"
member = "release-v1.12.0-x86_64/firecracker-v1.12.0-x86_64"
jailer_member = "release-v1.12.0-x86_64/jailer-v1.12.0-x86_64"
[firecracker.plain]
url = "/srv/firecracker-v1.12.0-x86_64.tgz"
member = "release-v1.12.0-x86_64/firecracker-v1.12.0-x86_64"
[kernel.k]
url = "/boot/vmlinux"
[rootfs.r]
url = "/srv/r.tar"
[template.base]
rootfs = "r"
size = "128MiB"
warm = true
[template.cold]
rootfs = "r"
size = "128MiB"
[drive.data]
size = "32MiB"
[drive.data2]
size = "32MiB"
[vm.q]
vmm = "qemu"
kernel = "k"
root = { template = "base", size = "256MiB" }
[vm.fj]
firecracker = "jailed"
kernel = "k"
root = { template = "base", size = "256MiB" }
[vm.fu]
firecracker = "plain"
kernel = "k"
root = { template = "base", size = "256MiB" }
[vm.fd]
firecracker = "jailed"
kernel = "k"
root = { template = "base", size = "256MiB" }
drives = ["data2"]
[vm.d]
vmm = "qemu"
kernel = "k"
root = { template = "base", size = "256MiB" }
drives = ["data"]
[vm.c]
vmm = "qemu"
kernel = "k"
root = { template = "cold", size = "256MiB" }
"#;
    let m = load(text);
    let data = "boots: template.base is warm, but a VM with data drives does not start warm (the template's snapshot has none)";
    let cases: [(&str, &[&str]); 6] = [
        ("q", &[STARTS_WARM]),
        ("fj", &[STARTS_WARM]),
        ("fu", &["boots: template.base is warm, but a Firecracker VM starts warm only through the jailer and firecracker.plain has no jailer_member (a snapshot reopens the drive and vsock paths it was made with, and only each VM's own chroot makes them the clone's own)"]),
        ("fd", &[data]),
        ("d", &[data]),
        ("c", &[]),
    ];
    for (vm, want) in cases {
        assert_eq!(details(&m, vm, Op::Create), want, "vm.{vm}");
        let Spec::Vm(spec) = &m.resources[&Address::new(Kind::Vm, vm)].spec else {
            panic!("vm.{vm}");
        };
        // Only a first start.
        assert!(plan_details(spec, Op::Update).is_empty(), "vm.{vm}");
        // Not part of the spec the plan diffs and the state records.
        assert!(serde_json::to_value(spec)
            .unwrap()
            .get("not_warm")
            .is_none());
    }
}

/// A Firecracker from PATH has no jailer.
#[test]
fn a_firecracker_vm_without_an_asset_boots_and_the_plan_says_why() {
    let m = load(
        r#"[fort]
version = 1
[kernel.k]
url = "/boot/vmlinux"
[rootfs.r]
url = "/srv/r.tar"
[template.base]
rootfs = "r"
size = "128MiB"
warm = true
[vm.f]
kernel = "k"
root = { template = "base", size = "256MiB" }
"#,
    );
    assert_eq!(
        details(&m, "f", Op::Create),
        ["boots: template.base is warm, but a Firecracker VM starts warm only through the jailer and its firecracker comes from PATH (a snapshot reopens the drive and vsock paths it was made with, and only each VM's own chroot makes them the clone's own)"]
    );
}

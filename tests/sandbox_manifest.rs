//! `[sandbox.NAME]` shapes and sandbox files, table-driven: the exact error text of each bad
//! input, what a good one resolves to, and how a bad sandbox file is held without stopping
//! the others (real files in a temporary directory).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use fort::manifest::{self, HostSelection, Spec};
use fort::{Address, Kind};

use common::manifests::{base, load, H};

const SHAPE: &str = "[sandbox.ci]\nvmm = \"qemu\"\nkernel = \"k\"\nroot = { template = \"t\", size = \"256MiB\" }\nmemory = \"256MiB\"\nnetwork = \"lan\"\n";

#[test]
fn shape_errors() {
    let cases: Vec<(String, &str)> = vec![
        (base("[sandbox.ci]\nkernel = \"nope\"\nroot = { template = \"t\", size = \"1GiB\" }\n"),
         "fort.toml:13:10: sandbox.ci: kernel `nope` is not defined (defined: k)"),
        (base("[sandbox.ci]\nkernel = \"k\"\nroot = \"d\"\n"),
         "fort.toml:14:8: sandbox.ci: root must be { template = \"…\", size = \"…\" }: every instance gets a root drive of its own"),
        (base("[sandbox.ci]\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\nttl = \"3h\"\nmax_ttl = \"2h\"\n"),
         "fort.toml:15:7: sandbox.ci: ttl (3h) is longer than max_ttl (2h)"),
        (base("[sandbox.ci]\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\nttl = \"soon\"\n"),
         "fort.toml:15:7: sandbox.ci: ttl: `soon` is not a duration such as \"30s\", \"15m\" or \"2h\" (expected number at 0)"),
        (base("[sandbox.ci]\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\nmax_instances = 0\n"),
         "fort.toml:15:17: sandbox.ci: max_instances must be between 1 and 1000, got 0"),
        (base("[sandbox.runner]\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\nnetwork = \"lan\"\n"),
         "fort.toml:15:11: sandbox.runner: its instances are named runner-XXXX (11 characters) but a VM with a network has at most 10: use a sandbox name of at most 5 characters"),
        (base("[sandbox.ci]\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\nmemory = \"64MiB\"\n"),
         "fort.toml:15:10: sandbox.ci: memory must be at least 128MiB, got 64MiB"),
        (base("[sandbox.ci]\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\n[instance]\nsandbox = \"ci\"\ncreated = \"2026-12-03T10:00:00Z\"\nexpires = \"2026-12-03T11:00:00Z\"\n"),
         "fort.toml:15:1: [instance] is written by fort into sandbox files (state_dir/sandboxes/); a manifest declares shapes with [sandbox.NAME]"),
    ];
    // Every mismatch at once, each with its input.
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(body, want)| {
            let got = load(body).err().unwrap_or_else(|| "no error".into());
            (got != *want).then(|| format!("for:\n{body}\n  got: {got}\n want: {want}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn a_shape_resolves_with_its_defaults_and_declares_no_resource() {
    let m = load(&base(SHAPE)).unwrap();
    let s = &m.sandboxes["ci"];
    assert_eq!(
        (
            s.ttl,
            s.max_ttl,
            s.idle_timeout,
            s.max_instances,
            s.memory,
            s.size
        ),
        (3600, 86400, None, None, 256 << 20, 256 << 20)
    );
    assert_eq!(s.network.as_deref(), Some("lan"));
    assert!(!m.resources.keys().any(|a| a.name.starts_with("ci")));
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const INSTANCE: &str = "[instance]\nsandbox = \"ci\"\ncreated = \"2026-12-03T10:00:00Z\"\nexpires = \"2026-12-03T11:00:00Z\"\n\n";

fn vm(name: &str) -> String {
    format!("[vm.{name}]\nvmm = \"qemu\"\nkernel = \"k\"\nroot = {{ template = \"t\", size = \"256MiB\" }}\nmemory = \"256MiB\"\nnetwork = \"lan\"\n")
}

#[test]
fn sandbox_files_merge_and_a_bad_one_is_held_alone() {
    let t = tempfile::tempdir().unwrap();
    let manifest_path = t.path().join("fort.toml");
    std::fs::write(&manifest_path, format!("{H}{}", base(SHAPE))).unwrap();
    let dir = t.path().join("sandboxes");
    std::fs::create_dir(&dir).unwrap();
    write(
        &dir,
        "ci-0001.toml",
        &format!("{INSTANCE}{}", vm("ci-0001")),
    );
    // Hand-edited: an unknown key.
    write(
        &dir,
        "ci-0002.toml",
        &format!("{INSTANCE}{}colour = \"red\"\n", vm("ci-0002")),
    );
    // Its VM is not named like the file.
    write(&dir, "ci-0003.toml", &format!("{INSTANCE}{}", vm("other")));
    // No [instance].
    write(&dir, "ci-0004.toml", &vm("ci-0004"));
    // A bad time.
    write(
        &dir,
        "ci-0005.toml",
        &format!(
            "{}{}",
            INSTANCE.replace("2026-12-03T11:00:00Z", "tomorrow"),
            vm("ci-0005")
        ),
    );
    // Not a sandbox file: ignored.
    write(&dir, ".ci-0006.toml.tmp", "half written");

    let m = manifest::merge_sandboxes(&manifest_path, &HostSelection::Every, &dir).unwrap();
    let vms: Vec<String> = m
        .resources
        .keys()
        .filter(|a| a.kind == Kind::Vm)
        .map(ToString::to_string)
        .collect();
    assert_eq!(vms, ["vm.ci-0001"]);
    let Spec::Vm(v) = &m.resources[&Address::new(Kind::Vm, "ci-0001")].spec else {
        panic!("not a VM");
    };
    assert_eq!(v.sandbox.as_deref(), Some("ci"));
    let i = &m.instances["ci-0001"];
    assert_eq!(
        (i.sandbox.as_str(), i.created, i.expires),
        ("ci", 1_796_292_000, 1_796_295_600)
    );
    let held: Vec<String> = m.held.iter().map(ToString::to_string).collect();
    assert_eq!(
        held,
        [
            "drive.ci-0002-root",
            "drive.ci-0003-root",
            "drive.ci-0004-root",
            "drive.ci-0005-root",
            "vm.ci-0002",
            "vm.ci-0003",
            "vm.ci-0004",
            "vm.ci-0005"
        ]
    );
    let d = dir.display();
    let problems: Vec<String> = m.sandbox_problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            format!("{d}/ci-0002.toml:12:1: unknown field `colour`, expected one of `vmm`, `firecracker`, `kernel`, `root`, `drives`, `vcpus`, `memory`, `network`, `ip`, `mac`, `state`, `restart`, `count`, `ports`, `keep`, `hosts`"),
            format!("{d}/ci-0003.toml:6:5: vm.other: a sandbox file's VM is named like the file (ci-0003)"),
            format!("{d}/ci-0004.toml:1:1: a sandbox file starts with an [instance] table (sandbox, created, expires)"),
            format!("{d}/ci-0005.toml:4:11: [instance] expires: `tomorrow` is not an RFC 3339 time such as \"2026-12-03T12:00:00Z\" (timestamp format is invalid)"),
        ]
    );
    // A manifest error is still an error, whatever the sandbox files.
    std::fs::write(&manifest_path, format!("{H}[kernel.k]\n")).unwrap();
    let e = manifest::merge_sandboxes(&manifest_path, &HostSelection::Every, &dir).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}:3:1: missing field `url`", manifest_path.display())
    );
}

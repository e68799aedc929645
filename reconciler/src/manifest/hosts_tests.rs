#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use super::HostSelection;
use crate::manifest::{load_sources, Fs, Source};

const FORT: &str = "[fort]\nversion = 1\n";
const ASSETS: &str = "[kernel.k]\nurl = \"/k\"\n[rootfs.r]\nurl = \"/r.tar\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n";

fn load(files: &[(&str, &str)], sel: &HostSelection) -> Result<Vec<String>, String> {
    let sources: Vec<Source> = files
        .iter()
        .map(|(n, t)| Source {
            path: PathBuf::from(n),
            dir: PathBuf::from("/m"),
            text: t.to_string(),
            sandbox: false,
        })
        .collect();
    load_sources(&sources, Path::new("/m"), sel, &Fs)
        .map(|m| m.resources.keys().map(ToString::to_string).collect())
        .map_err(|e| e.to_string())
}

fn host(h: &str) -> HostSelection {
    HostSelection::Host(h.to_string())
}

fn vm(name: &str, extra: &str) -> String {
    format!("[vm.{name}]\nkernel = \"k\"\nroot = {{ template = \"t\", size = \"1GiB\" }}\n{extra}")
}

#[test]
fn selection_keeps_what_is_for_the_host() {
    let shared = format!("{FORT}{ASSETS}");
    let h1 = format!("[fort]\nhosts = [\"h1\"]\n{}", vm("a", ""));
    let both = vm("b", "hosts = [\"h1\", \"h2\"]\n");
    // A resource's own hosts win over its file's.
    let moved = format!(
        "[fort]\nhosts = [\"h1\"]\n{}",
        vm("c", "hosts = [\"h2\"]\n")
    );
    let files = [
        ("fort.toml", shared.as_str()),
        ("h1.toml", h1.as_str()),
        ("both.toml", both.as_str()),
        ("moved.toml", moved.as_str()),
    ];
    let assets = ["kernel.k", "rootfs.r", "template.t"];
    let with = |vms: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = assets.iter().map(|s| s.to_string()).collect();
        v.extend(vms.iter().map(|s| s.to_string()));
        v.sort();
        v
    };
    let cases: Vec<(HostSelection, Vec<String>)> = vec![
        (
            HostSelection::Every,
            with(&[
                "drive.a-root",
                "drive.b-root",
                "drive.c-root",
                "vm.a",
                "vm.b",
                "vm.c",
            ]),
        ),
        (
            host("h1"),
            with(&["drive.a-root", "drive.b-root", "vm.a", "vm.b"]),
        ),
        (
            host("h2"),
            with(&["drive.b-root", "drive.c-root", "vm.b", "vm.c"]),
        ),
        (host("h3"), with(&[])),
    ];
    for (sel, want) in cases {
        let mut got = load(&files, &sel).unwrap();
        got.sort();
        assert_eq!(got, want, "{sel:?}");
    }
}

#[test]
fn a_name_may_be_defined_once_per_host() {
    let text = format!("{FORT}{ASSETS}[network.lan]\ncidr = \"10.1.0.0/24\"\nhosts = [\"h1\"]\n");
    let other = "[network.lan]\ncidr = \"10.2.0.0/24\"\nhosts = [\"h2\"]\n";
    let files = [("a.toml", text.as_str()), ("b.toml", other)];
    assert!(load(&files, &host("h1"))
        .unwrap()
        .contains(&"network.lan".to_string()));
    assert!(load(&files, &host("h2"))
        .unwrap()
        .contains(&"network.lan".to_string()));
    assert_eq!(
        load(&files, &HostSelection::Every).unwrap_err(),
        "b.toml:1:1: network.lan is defined twice: a.toml:10:1 and b.toml:1:1"
    );
}

#[test]
fn errors_are_exact() {
    let net_h2 = "[network.lan]\ncidr = \"10.1.0.0/24\"\nhosts = [\"h2\"]\n";
    type Files<'a> = Vec<(&'a str, String)>;
    let cases: Vec<(Files, HostSelection, &str)> = vec![
        (
            // A VM for h1 on a network only h2 has: both places named.
            vec![
                ("a.toml", format!("{FORT}{ASSETS}{net_h2}")),
                ("vm.toml", vm("web", "network = \"lan\"\nhosts = [\"h1\"]\n")),
            ],
            host("h1"),
            "vm.toml:4:11: vm.web is for host h1 but uses network.lan, which is not: network.lan at a.toml:10:1 is for h2",
        ),
        (
            // The file's selector counts as the referenced one's.
            vec![
                ("a.toml", format!("{FORT}{ASSETS}")),
                ("d.toml", "[fort]\nhosts = [\"h2\", \"h3\"]\n[drive.data]\nsize = \"1GiB\"\n".to_string()),
                ("vm.toml", vm("db", "drives = [\"data\"]\n")),
            ],
            host("h1"),
            "vm.toml:4:11: vm.db is for host h1 but uses drive.data, which is not: drive.data at d.toml:3:1 is for h2, h3",
        ),
        (
            vec![
                ("a.toml", format!("{FORT}[kernel.k]\nurl = \"/k\"\nhosts = [\"h2\"]\n[rootfs.r]\nurl = \"/r.tar\"\n[template.t]\nrootfs = \"r\"\nsize = \"1GiB\"\n")),
                ("vm.toml", vm("a", "")),
            ],
            host("h1"),
            "vm.toml:2:10: vm.a is for host h1 but uses kernel.k, which is not: kernel.k at a.toml:3:1 is for h2",
        ),
        (
            vec![("a.toml", format!("{FORT}hosts = []\n"))],
            HostSelection::Every,
            "a.toml:3:9: [fort]: hosts = [] selects no host (leave `hosts` out for every host)",
        ),
        (
            vec![("a.toml", format!("{FORT}{ASSETS}{}", vm("a", "hosts = [\"h1\", \"h1\"]\n")))],
            host("h1"),
            "a.toml:13:16: vm.a: hosts: `h1` is listed twice",
        ),
        (
            vec![("a.toml", format!("{FORT}[kernel.k]\nurl = \"/k\"\nhosts = [\"web 1\"]\n"))],
            host("h1"),
            "a.toml:5:10: kernel.k: hosts: `web 1` is not a host name (letters, digits, `-`, `.` and `_`, as `hostname` prints it)",
        ),
        (
            // A `[fort]` with settings needs its version; one with only hosts does not.
            vec![("a.toml", "[fort]\nstate_dir = \"s\"\n".to_string())],
            HostSelection::Every,
            "a.toml:1:1: missing field `version`",
        ),
        (
            vec![("a.toml", "[fort]\nhosts = [\"h1\"]\n".to_string())],
            HostSelection::Every,
            "a.toml:1:1: missing [fort] table: a manifest needs `[fort]` with `version = 1` in one of its files",
        ),
    ];
    for (files, sel, want) in cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        assert_eq!(load(&files, &sel).unwrap_err(), want, "{files:?}");
    }
}

#[test]
fn every_host_view_and_the_names() {
    let text = format!(
        "{FORT}{ASSETS}{}{}",
        vm("a", "hosts = [\"h2\", \"h1\"]\n"),
        vm("b", "hosts = [\"h3\"]\n")
    );
    let sources = [Source {
        path: PathBuf::from("a.toml"),
        dir: PathBuf::from("/m"),
        text,
        sandbox: false,
    }];
    let m = load_sources(&sources, Path::new("/m"), &host("h3"), &Fs).unwrap();
    assert_eq!(
        m.hosts.iter().map(String::as_str).collect::<Vec<_>>(),
        ["h1", "h2", "h3"]
    );
    assert_eq!(m.host.as_deref(), Some("h3"));
    assert!(m.resources.keys().any(|a| a.to_string() == "vm.b"));
    assert!(!m.resources.keys().any(|a| a.to_string() == "vm.a"));
}

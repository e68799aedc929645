//! Manifest resolution of what templates and VMs carry beyond the basics, table-driven with
//! exact texts: template init and auto size, published ports, the `[fort] uid_range`, mounted
//! drives.

#![allow(clippy::unwrap_used)]

mod common;

use fort::manifest::{self, Spec};
use fort::{Address, Kind};

use common::manifests::{base, load, load_many};

#[test]
fn template_init_and_auto_size() {
    let m = load("[rootfs.r]\nurl = \"/r\"\n[template.a]\nrootfs = \"r\"\nsize = \"auto\"\ninit = \"distro\"\n[template.b]\nrootfs = \"r\"\nsize = \"1GiB\"\n").unwrap();
    let spec = |n: &str| match &m.resources[&Address::new(Kind::Template, n)].spec {
        Spec::Template(t) => t.clone(),
        s => panic!("{s:?}"),
    };
    let (a, b) = (spec("a"), spec("b"));
    assert_eq!(
        (a.size, a.init),
        (manifest::ImageSize::AUTO, manifest::InitMode::Distro)
    );
    assert_eq!(
        (b.size, b.init),
        (
            manifest::ImageSize::Fixed(1 << 30),
            manifest::InitMode::Agent
        )
    );
    // The serialized spec (what the plan diffs and the state records): "auto" as written, no
    // `init` key for the default, so templates written before `init` existed are unchanged.
    let json = |t: &manifest::TemplateSpec| serde_json::to_value(t).unwrap();
    assert_eq!(json(&a)["size"], "auto");
    assert_eq!(json(&a)["init"], "distro");
    assert_eq!(json(&b)["size"], 1u64 << 30);
    assert!(json(&b).get("init").is_none());
}

#[test]
fn published_ports_resolve_to_one_normal_form_and_a_port_per_pool_instance() {
    let m = load(&base(
        "[vm.solo]\nkernel = \"k\"\nroot = { template = \"t\", size = \"2GiB\" }\nnetwork = \"lan\"\nports = [\"8080:80\", \"0.0.0.0:9000-9001:9000-9001/udp\", \"127.0.0.1:2222:22\"]\n\
         [vm.w]\ncount = 2\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\nnetwork = \"lan\"\nports = [\"8000-8009:80\"]\n\
         [vm.none]\nkernel = \"k\"\nroot = { template = \"t\", size = \"1GiB\" }\n",
    ))
    .unwrap();
    let ports = |a: &str| match &m.resources[&a.parse::<Address>().unwrap()].spec {
        Spec::Vm(v) => v.ports.clone(),
        s => panic!("{s:?}"),
    };
    assert_eq!(
        ports("vm.solo"),
        [
            "8080:80/tcp",
            "9000-9001:9000-9001/udp",
            "127.0.0.1:2222:22/tcp"
        ]
    );
    assert_eq!(ports("vm.w-0"), ["8000:80/tcp"]);
    assert_eq!(ports("vm.w-1"), ["8001:80/tcp"]);
    // No ports: the spec (and its hash) is what a fort without published ports recorded.
    let none = m.resources[&"vm.none".parse::<Address>().unwrap()].spec_json();
    assert!(none.get("ports").is_none(), "{none}");
}

#[test]
fn uid_range_errors_name_the_line_and_the_users_it_overlaps() {
    let fort = |r: &str| format!("[fort]\nversion = 1\nuid_range = \"{r}\"\n");
    let cases = [
        ("2000000000", "a.toml:3:13: invalid uid_range `2000000000`: expected FIRST-LAST, two uids (e.g. \"2000000000-2000065535\")"),
        ("a-b", "a.toml:3:13: invalid uid_range `a-b`: expected FIRST-LAST, two uids (e.g. \"2000000000-2000065535\")"),
        ("2000000010-2000000000", "a.toml:3:13: invalid uid_range `2000000010-2000000000`: it is empty (2000000010 is greater than 2000000000)"),
        ("0-65535", "a.toml:3:13: invalid uid_range `0-65535`: it includes uid 0 (root); VMs must run unprivileged"),
    ];
    for (r, want) in cases {
        assert_eq!(load_many(&[("a.toml", &fort(r))]).unwrap_err(), want, "{r}");
    }
    // Overlapping the host's users (uid 1 is `daemon` on Debian and most distributions).
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let user = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&"1")).then(|| f[0].to_string())
        })
        .unwrap();
    assert_eq!(
        load_many(&[("a.toml", &fort("1-1"))]).unwrap_err(),
        format!("a.toml:3:13: uid_range `1-1` overlaps users of this host (/etc/passwd): {user} (1); VMs need uids nobody else has")
    );
    let m = load_many(&[("a.toml", &fort("3000000000-3000000999"))]).unwrap();
    assert_eq!(m.uid_range, Some((3_000_000_000, 3_000_000_999)));
    assert_eq!(load(&base("")).unwrap().uid_range, None);
}

/// `drives` entries with `mount`: what they resolve to, and every bad input with its position.

#[test]
fn mounted_drives_resolve_and_bad_mounts_name_the_line() {
    let drives = "[drive.data]\nsize = \"1GiB\"\n[drive.scratch]\nsize = \"1GiB\"\n[drive.logs]\nsize = \"1GiB\"\n";
    let vm = |list: &str| {
        base(&format!(
            "{drives}[vm.a]\nkernel = \"k\"\nroot = {{ template = \"t\", size = \"2GiB\" }}\ndrives = {list}\n"
        ))
    };
    let m = load(&vm(
        r#"[{ drive = "data", mount = "/data/", options = "ro,noatime" }, "scratch", { drive = "logs", mount = "//var/./log" }]"#,
    ))
    .unwrap();
    let spec = m.resources[&"vm.a".parse::<Address>().unwrap()].spec_json();
    assert_eq!(
        spec["drives"],
        serde_json::json!(["data", "scratch", "logs"])
    );
    assert_eq!(
        spec["mounts"],
        serde_json::json!([
            {"drive": "data", "path": "/data", "options": "ro,noatime"},
            {"drive": "logs", "path": "/var/log"}
        ])
    );
    // No mounts: no `mounts` key, so the spec (and its hash) is what older forts recorded.
    let plain = load(&vm(r#"["data", "scratch"]"#)).unwrap();
    let plain = plain.resources[&"vm.a".parse::<Address>().unwrap()].spec_json();
    assert!(plain.get("mounts").is_none(), "{plain}");

    let cases: Vec<(String, &str)> = vec![
        (vm(r#"[{ drive = "data", mount = "data" }]"#),
         "fort.toml:21:37: vm.a: drive.data: mount point `data` is not an absolute path (e.g. \"/data\")"),
        (vm(r#"[{ drive = "data", mount = "/" }]"#),
         "fort.toml:21:37: vm.a: drive.data: mount point `/` is the root: the root drive is mounted there"),
        (vm(r#"[{ drive = "data", mount = "/srv/../etc" }]"#),
         "fort.toml:21:37: vm.a: drive.data: mount point `/srv/../etc` contains `..`"),
        (vm(r#"[{ drive = "data", mount = "/proc/x" }]"#),
         "fort.toml:21:37: vm.a: drive.data: mount point `/proc/x` is inside /proc, which the guest agent mounts itself"),
        (vm(r#"[{ drive = "data", mount = "/data", options = "ro;rm -rf" }]"#),
         "fort.toml:21:56: vm.a: drive.data: mount option `ro;rm -rf` contains ';': options are a-z, 0-9 and _ = . -"),
        (vm(r#"[{ drive = "data", mount = "/data", options = "ro,rw" }]"#),
         "fort.toml:21:56: vm.a: drive.data: mount options `ro,rw` say both ro and rw"),
        // One drive mounted twice, or attached and mounted: listed twice.
        (vm(r#"[{ drive = "data", mount = "/a" }, { drive = "data", mount = "/b" }]"#),
         "fort.toml:21:45: vm.a: drive.data is listed twice in `drives` (a drive is attached, and mounted, once)"),
        (vm(r#"["data", { drive = "data", mount = "/data" }]"#),
         "fort.toml:21:19: vm.a: drive.data is listed twice in `drives` (a drive is attached, and mounted, once)"),
        (vm(r#"[{ drive = "data", mount = "/srv" }, { drive = "logs", mount = "/srv/" }]"#),
         "fort.toml:21:73: vm.a: drive.logs and drive.data are both mounted at /srv"),
        (vm(r#"[{ drive = "nope", mount = "/data" }]"#),
         "fort.toml:21:21: vm.a: drive `nope` is not defined (defined: data, logs, scratch)"),
        (vm(r#"[{ drive = "data", mount = "/data", fstype = "xfs" }]"#),
         "fort.toml:21:46: unknown field `fstype`, expected one of `drive`, `mount`, `options`"),
        (vm(r#"[{ drive = "data" }]"#),
         "fort.toml:21:11: missing field `mount`"),
        (vm(r#"[{ drive = "data", mount = 5 }]"#),
         "fort.toml:21:37: invalid type: integer `5`, expected a string"),
    ];
    let mut failures = Vec::new();
    for (body, want) in &cases {
        match load(body) {
            Ok(_) => failures.push(format!("expected an error for:\n{body}\nwant: {want}\n")),
            Err(got) if got != *want => {
                failures.push(format!("for:\n{body}\n got: {got}\nwant: {want}\n"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn paused_and_suspended_states_and_the_vmms_that_can_do_them() {
    let vm = |vmm: &str, state: &str| {
        base(&format!(
            "[vm.a]\nvmm = \"{vmm}\"\nkernel = \"k\"\nroot = {{ template = \"t\", size = \"2GiB\" }}\nstate = \"{state}\"\n"
        ))
    };
    // Both VMMs do both (Firecracker through its snapshot API, docs/snapshots.md).
    for (state, want) in [
        ("paused", manifest::VmState::Paused),
        ("suspended", manifest::VmState::Suspended),
    ] {
        for vmm in ["qemu", "firecracker"] {
            let m = load(&vm(vmm, state)).unwrap();
            match &m.resources[&Address::new(Kind::Vm, "a")].spec {
                Spec::Vm(v) => assert_eq!(v.state, want, "{vmm}"),
                s => panic!("{s:?}"),
            }
        }
    }
    let e = load(&vm("qemu", "asleep")).unwrap_err();
    assert!(
        e.contains(
            "unknown variant `asleep`, expected one of `running`, `stopped`, `paused`, `suspended`"
        ),
        "{e}"
    );
}

//! Templates with `init = "distro"` as real VMs under QEMU/TCG: a Debian bookworm with systemd
//! (built by scripts/build-debian-rootfs, pulled as an OCI image from a registry on loopback,
//! its data drive mounted at /data) and busybox init with an /etc/inittab — the image's
//! init is PID 1, fort's agent runs as its service, stop goes through that init. Plus what the
//! plan says about a template's init and the one error for an image without an init.

#![allow(clippy::unwrap_used)]

mod common;

use common::fort::{Run, Workspace};
use common::netns::in_netns;
use common::oci_image::{Image, LAYER_TAR};
use common::registry::{Auth, Registry};
use common::rootfs::{busybox_rootfs, static_agent};
use common::vms::{assets, debian_rootfs, processes_mentioning, ConsoleOnFailure, ONE_AT_A_TIME};

/// The kernel section: Debian's cloud kernel + the initrd, its default command line (the
/// image's empty /etc/machine-id would make systemd-firstboot prompt on the console: fort
/// masks that unit in distro templates, so nothing is needed here).
fn kernel() -> String {
    let dir = assets();
    format!(
        "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n",
        k = dir.join("vmlinuz").display(),
        i = dir.join("initrd.cpio.gz").display(),
    )
}

fn exec(ws: &Workspace, vm: &str, argv: &[&str]) -> Run {
    let mut args = vec!["exec", vm, "--"];
    args.extend_from_slice(argv);
    ws.run(&args)
}

fn state(ws: &Workspace, addr: &str) -> serde_json::Value {
    serde_json::from_str(&ws.run(&["state", "show", addr, "--json"]).ok().stdout).unwrap()
}

fn console(ws: &Workspace, vm: &str) -> String {
    std::fs::read_to_string(ws.state_dir().join("run").join(vm).join("console.log"))
        .unwrap_or_default()
}

/// The console without systemd's colours (`ESC[…m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

const HELLO_UNIT: &str = "[Unit]\nDescription=a service the template declares\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo hello from $(hostname) > /run/hello'\n";

/// The Debian rootfs as an image: its tarball is the one layer, pushed to `reg`. Its
/// reference and digest.
fn push_debian(reg: &Registry, tar: &std::path::Path) -> (String, String) {
    let layer = std::fs::read(tar).unwrap();
    let image = Image::new(
        vec![(layer, LAYER_TAR)],
        serde_json::json!({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}),
    );
    let digest = reg.push("debian", "bookworm", &image);
    (format!("{}/debian:bookworm", reg.host()), digest)
}

fn debian_manifest(ws: &Workspace, image: &str, vm_state: &str, motd: &str) {
    ws.write_manifest(&format!(
        r#"{kernel}[rootfs.debian]
image = "{image}"

[template.deb]
rootfs = "debian"
size = "auto"
init = "distro"

[template.deb.files]
"/etc/systemd/system/hello.service" = '''{HELLO_UNIT}'''
"/etc/systemd/system/multi-user.target.d/hello.conf" = "[Unit]\nWants=hello.service\n"
"/etc/motd" = "{motd}\n"

[network.lan]
cidr = "10.79.0.0/24"

[drive.data]
size = "64MiB"

[vm.x]
vmm = "qemu"
kernel = "deb"
root = {{ template = "deb", size = "1GiB" }}
drives = [{{ drive = "data", mount = "/data" }}]
memory = "512MiB"
network = "lan"
state = "{vm_state}"
"#,
        kernel = kernel(),
    ));
}

#[test]
fn debian_with_systemd_as_pid1() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    let tar = debian_rootfs();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        // Debian's tree as an OCI image in a registry on this namespace's loopback.
        let reg = Registry::start(Auth::Anonymous);
        let (image, digest) = push_debian(&reg, &tar);
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        debian_manifest(&ws, &image, "running", "one");

        // Nothing cached yet: apply will detect the init after the fetch.
        let p = ws.run(&["plan"]);
        p.ok();
        assert!(
            p.stdout
                .contains("  + template.deb\n      reason: not yet created\n      init: detected by apply once the rootfs is fetched\n"),
            "{}",
            p.stdout
        );
        let r = ws.run(&["apply", "--yes"]);
        r.ok();
        assert!(r.stdout.contains("vm.x: created in"), "{}", r.stdout);
        let p = ws.run(&["plan", "--detailed-exitcode"]);
        p.ok();
        assert_eq!(
            p.stdout.trim(),
            format!("No changes. The host matches the manifest.\nnote: rootfs.debian: image: {image} → {digest} (unchanged)")
        );

        let t = state(&ws, "template.deb");
        assert_eq!(
            t["outputs"]["init"],
            "systemd (/sbin/init → /usr/lib/systemd/systemd)"
        );
        // size = "auto": at least 1.5× the ~210MiB tree, and what the image file is.
        let size = t["outputs"]["size"].as_u64().unwrap();
        assert!((300 << 20..600 << 20).contains(&size), "auto size {size}");
        assert_eq!(
            std::fs::metadata(t["outputs"]["image"].as_str().unwrap())
                .unwrap()
                .len(),
            size
        );

        // systemd is PID 1, the agent its service; the system came up.
        assert_eq!(
            exec(&ws, "vm.x", &["cat", "/proc/1/comm"]).ok().stdout,
            "systemd\n"
        );
        let running = exec(&ws, "vm.x", &["systemctl", "is-system-running", "--wait"]);
        let failed = exec(
            &ws,
            "vm.x",
            &["systemctl", "--failed", "--no-legend", "--plain"],
        );
        eprintln!(
            "is-system-running: {}failed units:\n{}",
            running.stdout, failed.stdout
        );
        assert!(
            running.stdout == "running\n" || running.stdout == "degraded\n",
            "{}{}",
            running.stdout,
            failed.stdout
        );
        assert_eq!(
            exec(
                &ws,
                "vm.x",
                &[
                    "systemctl",
                    "is-active",
                    "fort-guest-agent.service",
                    "hello.service"
                ]
            )
            .ok()
            .stdout,
            "active\nactive\n"
        );
        assert_eq!(
            exec(&ws, "vm.x", &["cat", "/run/hello"]).ok().stdout,
            "hello from x\n"
        );
        let os = exec(&ws, "vm.x", &["cat", "/etc/os-release"]);
        assert!(
            os.ok()
                .stdout
                .contains("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\""),
            "{}",
            os.stdout
        );
        // udev kept the name (its predictable-names policy is masked), and the name and
        // address are the ones fort assigned (the agent configured eth0 before networking).
        assert_eq!(
            exec(&ws, "vm.x", &["ls", "/sys/class/net"]).ok().stdout,
            "eth0\nlo\n"
        );
        assert_eq!(exec(&ws, "vm.x", &["hostname"]).ok().stdout, "x\n");
        let ip = state(&ws, "vm.x")["outputs"]["network"]["ip"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            exec(&ws, "vm.x", &["hostname", "-I"]).ok().stdout.trim(),
            ip
        );
        assert_eq!(
            exec(
                &ws,
                "vm.x",
                &["cat", "/etc/systemd/network/00-fort-eth0.network"]
            )
            .ok()
            .stdout,
            fort::host::image::service::NETWORKD_UNMANAGED
        );
        // The data drive is mounted at /data, and the distro's fstab knows it.
        let mounts = exec(&ws, "vm.x", &["cat", "/proc/mounts"])
            .ok()
            .stdout
            .clone();
        assert!(mounts.contains("/dev/vdb /data ext4 rw"), "{mounts}");
        let fstab = exec(&ws, "vm.x", &["cat", "/etc/fstab"])
            .ok()
            .stdout
            .clone();
        assert!(
            fstab.lines().any(|l| l.starts_with("UUID=")
                && l.contains(" /data ext4 ")
                && l.ends_with("# fort")),
            "{fstab}"
        );
        exec(&ws, "vm.x", &["sh", "-c", "echo kept > /data/note && sync"]).ok();
        let boot_ms = state(&ws, "vm.x")["outputs"]["boot_ms"].as_u64().unwrap();
        eprintln!("debian agent-ready boot_ms={boot_ms}");

        // Stop goes through systemd: its shutdown shows on the console, then the VM is gone.
        debian_manifest(&ws, &image, "stopped", "one");
        ws.run(&["apply", "--yes"]).ok();
        let log = console(&ws, "x");
        assert!(
            log.contains("systemd-shutdown[1]:") && log.contains("reboot: Power down"),
            "{log}"
        );
        let plain = strip_ansi(&log);
        assert!(
            plain.contains("fort-guest-agent: asked Systemd (PID 1) to power off")
                && plain.contains("Stopped hello.service - a service the template declares.")
                && plain.contains("Stopping fort-guest-agent.")
                && plain.contains("Reached target poweroff.target - System Power Off."),
            "systemd stopped the services: {plain}"
        );
        assert_eq!(
            processes_mentioning(&ws.state_dir().display().to_string()),
            Vec::<String>::new()
        );
        ws.run(&["plan", "--detailed-exitcode"]).ok();

        // Start again works, the data drive kept what was written; a second apply does nothing.
        debian_manifest(&ws, &image, "running", "one");
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(
            exec(&ws, "vm.x", &["cat", "/proc/1/comm"]).ok().stdout,
            "systemd\n"
        );
        assert_eq!(
            exec(&ws, "vm.x", &["cat", "/data/note"]).ok().stdout,
            "kept\n"
        );
        let p = ws.run(&["plan", "--detailed-exitcode"]);
        assert_eq!(p.code, 0, "{}", p.stdout);
        let again = ws.run(&["apply", "--yes"]);
        again.ok();
        assert!(again.stdout.contains("No changes"), "{}", again.stdout);

        // The rootfs is cached now: the plan of a changed template names its init.
        debian_manifest(&ws, &image, "running", "two");
        let p = ws.run(&["plan"]);
        p.ok();
        assert!(
            p.stdout.contains("  ~ template.deb\n")
                && p.stdout
                    .contains("      init: systemd (/sbin/init → /usr/lib/systemd/systemd)\n"),
            "{}",
            p.stdout
        );

        ws.run(&["destroy", "--yes"]).ok();
        assert_eq!(
            processes_mentioning(&ws.state_dir().display().to_string()),
            Vec::<String>::new()
        );
    });
}

const INITTAB: &str = "::sysinit:/bin/sh -c 'echo inittab-sysinit-ran > /dev/console'\n::shutdown:/bin/sh -c 'echo inittab-shutdown-ran > /dev/console'\n";

#[test]
fn busybox_init_with_inittab() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    let kernel = kernel();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        // The busybox rootfs of the image tests: /sbin/init -> ../bin/busybox.
        let tar = ws.path().join("bb.tar.gz");
        busybox_rootfs(&tar);
        let manifest = |vm_state: &str| {
            format!(
                "{kernel}[rootfs.bb]\nurl = \"file://{tar}\"\n\n\
                 [template.bb]\nrootfs = \"bb\"\nsize = \"auto\"\ninit = \"distro\"\n\n\
                 [template.bb.files]\n\"/etc/inittab\" = \"\"\"{INITTAB}\"\"\"\n\n\
                 [network.lan]\ncidr = \"10.80.0.0/24\"\n\n\
                 [vm.y]\nvmm = \"qemu\"\nkernel = \"deb\"\nroot = {{ template = \"bb\", size = \"128MiB\" }}\nmemory = \"192MiB\"\nnetwork = \"lan\"\nstate = \"{vm_state}\"\n",
                tar = tar.display(),
            )
        };
        ws.write_manifest(&manifest("running"));
        ws.run(&["apply", "--yes"]).ok();
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        assert_eq!(
            state(&ws, "template.bb")["outputs"]["init"],
            "busybox (/sbin/init → /bin/busybox)"
        );
        // PID 1 is busybox init; the agent is its respawned child.
        assert_eq!(
            exec(&ws, "vm.y", &["cat", "/proc/1/comm"]).ok().stdout,
            "init\n"
        );
        let exe = exec(&ws, "vm.y", &["ls", "-l", "/proc/1/exe"]);
        assert!(
            exe.ok().stdout.ends_with("-> /bin/busybox\n"),
            "{}",
            exe.stdout
        );
        let inittab = exec(&ws, "vm.y", &["cat", "/etc/inittab"]);
        assert_eq!(
            inittab.ok().stdout,
            format!("{INITTAB}# fort's guest agent (template init = \"distro\")\n::respawn:/usr/local/sbin/fort-guest-agent --service busybox\n")
        );
        assert_eq!(
            exec(&ws, "vm.y", &["cat", "/proc/sys/kernel/hostname"])
                .ok()
                .stdout,
            "y\n"
        );
        let boot_ms = state(&ws, "vm.y")["outputs"]["boot_ms"].as_u64().unwrap();
        eprintln!("busybox agent-ready boot_ms={boot_ms}");
        let log = console(&ws, "y");
        assert!(log.contains("inittab-sysinit-ran"), "{log}");

        // Stop goes through busybox init: its shutdown entries run, then it powers off.
        ws.write_manifest(&manifest("stopped"));
        ws.run(&["apply", "--yes"]).ok();
        let log = console(&ws, "y");
        assert!(
            log.contains("asked Busybox (PID 1) to power off")
                && log.contains("inittab-shutdown-ran")
                && log.contains("reboot: Power down"),
            "{log}"
        );
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        ws.run(&["destroy", "--yes"]).ok();
    });
}

/// An image without an init, with `init = "distro"`: refused by the plan once the rootfs is
/// cached and by apply otherwise, with the same words; no image is built.
#[test]
fn no_init_is_one_error() {
    let ws = Workspace::new();
    let tar = ws.path().join("noinit.tar");
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    t.append_data(&mut h, "etc/hostname", &b"none\n"[..])
        .unwrap();
    std::fs::write(&tar, t.into_inner().unwrap()).unwrap();
    let why = "init = \"distro\" but the image has no init: /sbin/init does not exist (use init = \"agent\" to make fort's guest agent PID 1)";
    ws.write_manifest(&format!(
        "[rootfs.r]\nurl = \"file://{}\"\n\n[template.t]\nrootfs = \"r\"\nsize = \"16MiB\"\ninit = \"distro\"\n",
        tar.display()
    ));
    let r = ws
        .command(&["apply", "--yes"])
        .env("FORT_GUEST_AGENT", static_agent())
        .output()
        .unwrap();
    let r = Run::from(r);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&format!("template.t: creating failed: {why}\n")),
        "{}",
        r.stdout
    );
    let images: Vec<_> = std::fs::read_dir(ws.state_dir().join("images"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "ext4"))
                .collect()
        })
        .unwrap_or_default();
    assert!(images.is_empty(), "no image is built");
    // The rootfs is cached now: the plan says the same, and refuses.
    let p = ws.run(&["plan"]);
    assert_eq!(p.code, 1, "{}", p.stdout);
    assert!(
        p.stderr.contains(&format!("error: template.t: {why}")),
        "{}",
        p.stderr
    );
}

//! End to end with real VMs (QEMU under TCG here; `FORT_TEST_VMM=firecracker` on a host with
//! KVM): a kernel from Debian's cloud kernel package via file://, a rootfs tarball over
//! loopback HTTP with sha256, a NAT + isolated network, two VMs — booted, used through the
//! agent, stopped and started, resized, killed and healed, and destroyed without a trace.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::fort::{sha256_hex, Workspace, FORT};
use common::netns::in_netns;
use common::rootfs::static_agent;
use common::server::{Reply, Server};
use common::vms::{
    assets, host_memory, kernel_file, processes_mentioning, vmm, ConsoleOnFailure, ONE_AT_A_TIME,
};

fn manifest(ws: &Workspace, srv: &Server, memory_a: &str, a_state: &str) {
    let dir = assets();
    let rootfs = std::fs::read(dir.join("rootfs.tar.gz")).unwrap();
    let sha = sha256_hex(&rootfs);
    srv.route("/rootfs.tar.gz", Reply::ok(rootfs));
    let vmm = vmm();
    ws.write_manifest(&format!(
        r#"[kernel.deb]
url = "file://{k}"
initrd = {{ url = "file://{i}" }}

[rootfs.bb]
url = "{url}/rootfs.tar.gz"
sha256 = "{sha}"

[template.base]
rootfs = "bb"
size = "128MiB"

[network.lan]
cidr = "10.77.0.0/24"
nat = true
isolated = true
dns = ["192.0.2.53"]

[drive.data]
size = "32MiB"

[vm.a]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
drives = ["data"]
memory = "{memory_a}"
network = "lan"
state = "{a_state}"

[vm.b]
vmm = "{vmm}"
kernel = "deb"
root = {{ template = "base", size = "256MiB" }}
memory = "192MiB"
network = "lan"
"#,
        k = dir.join(kernel_file()).display(),
        i = dir.join("initrd.cpio.gz").display(),
        url = srv.url("").trim_end_matches('/'),
    ));
}

fn exec(ws: &Workspace, vm: &str, argv: &[&str]) -> common::fort::Run {
    let mut args = vec!["exec", vm, "--"];
    args.extend_from_slice(argv);
    ws.run(&args)
}

#[test]
fn two_real_vms_from_manifest_to_destroy() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    let kver = std::fs::read_to_string(assets().join("KVER")).unwrap();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let srv = Server::start();
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        manifest(&ws, &srv, "256MiB", "running");

        let r = ws.run(&["apply", "--yes"]);
        r.ok();
        assert!(
            r.stdout.contains("vm.a: created in") && r.stdout.contains("vm.b: created in"),
            "{}",
            r.stdout
        );
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        let console = ws.run(&["console", "vm.a"]);
        console.ok();
        assert!(
            console.stdout.contains("Linux version")
                && console
                    .stdout
                    .contains("fort-guest-agent: listening on vsock:52"),
            "{}",
            console.stdout
        );

        // The Debian kernel runs, the agent answers.
        assert_eq!(exec(&ws, "vm.a", &["uname", "-r"]).ok().stdout, kver);
        // A real MCP client, through `fort mcp vm.a`.
        let out = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/mcp_client.py"
            ))
            .args([FORT, "vm.a", ws.path().to_str().unwrap()])
            .env("FORT_MANIFEST", ws.manifest())
            .env("FORT_STATE_DIR", ws.state_dir())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(
                "tools: run_command,file_read,file_write,file_delete,list_dir,stat,process_start,process_output,process_input,process_signal,process_resize,process_list,port_check,shutdown\n"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("uname -r: {}", kver.trim())),
            "{stdout}"
        );

        // The network: the gateway answers; the other VM is unreachable (isolated ports).
        let b_ip = {
            let s: serde_json::Value =
                serde_json::from_str(&ws.run(&["state", "show", "vm.b", "--json"]).stdout).unwrap();
            s["outputs"]["network"]["ip"].as_str().unwrap().to_string()
        };
        exec(&ws, "vm.a", &["ping", "-c", "1", "-W", "3", "10.77.0.1"]).ok();
        let r = exec(&ws, "vm.a", &["ping", "-c", "1", "-W", "2", &b_ip]);
        assert_eq!(
            r.code, 1,
            "vm.a reached vm.b on an isolated network: {}",
            r.stdout
        );
        assert_eq!(exec(&ws, "vm.a", &["hostname"]).ok().stdout, "a\n");

        // Data on the data drive survives a stop and a start.
        exec(&ws, "vm.a", &["sh", "-c", "mkdir -p /data && mount /dev/vdb /data && echo kept > /data/f && umount /data && sync"]).ok();
        manifest(&ws, &srv, "256MiB", "stopped");
        ws.run(&["apply", "--yes"]).ok();
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        assert!(
            exec(&ws, "vm.a", &["true"]).code != 0,
            "a stopped VM does not answer"
        );
        assert!(
            !ws.state_dir().join("run/a/pid").exists(),
            "a stopped VM keeps no pid file"
        );
        manifest(&ws, &srv, "256MiB", "running");
        ws.run(&["apply", "--yes"]).ok();
        assert_eq!(
            exec(
                &ws,
                "vm.a",
                &[
                    "sh",
                    "-c",
                    "mkdir -p /data && mount /dev/vdb /data && cat /data/f"
                ]
            )
            .ok()
            .stdout,
            "kept\n"
        );

        // More memory is a restart, and the guest sees it.
        manifest(&ws, &srv, "320MiB", "running");
        let p = ws.run(&["plan"]);
        assert!(
            p.stdout.contains("  ~restart vm.a\n      ~ memory: "),
            "{}",
            p.stdout
        );
        assert!(p.stdout.contains("(needs restart)"), "{}", p.stdout);
        ws.run(&["apply", "--yes"]).ok();
        let mem = exec(&ws, "vm.a", &["sh", "-c", "grep MemTotal /proc/meminfo"])
            .ok()
            .stdout
            .clone();
        let kib: u64 = mem.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            kib > 256 * 1024 && kib <= 320 * 1024,
            "MemTotal {kib} kB after asking for 320MiB"
        );

        // A killed VMM is drift; apply brings the VM back.
        let s: serde_json::Value =
            serde_json::from_str(&ws.run(&["state", "show", "vm.b", "--json"]).stdout).unwrap();
        let pid = s["outputs"]["started"]["vmm"]["pid"].as_u64().unwrap();
        let pid_file = ws.state_dir().join("run/b/pid");
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap(),
            format!("{pid}\n")
        );
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let p = ws.run(&["plan", "--detailed-exitcode"]);
        assert_eq!(p.code, 2, "{}", p.stdout);
        assert!(
            p.stdout.contains(&format!(
                "  + vm.b\n      reason: drift: its VMM process {pid} is gone"
            )),
            "{}",
            p.stdout
        );
        ws.run(&["apply", "--yes"]).ok();
        exec(&ws, "vm.b", &["true"]).ok();
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        let s: serde_json::Value =
            serde_json::from_str(&ws.run(&["state", "show", "vm.b", "--json"]).stdout).unwrap();
        let new_pid = s["outputs"]["started"]["vmm"]["pid"].as_u64().unwrap();
        assert_ne!(new_pid, pid);
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap(),
            format!("{new_pid}\n")
        );

        // Destroy leaves nothing: no VMM or helper, no fort interface or table, no rows.
        ws.run(&["destroy", "--yes"]).ok();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let state = ws.state_dir().display().to_string();
        assert_eq!(processes_mentioning(&state), Vec::<String>::new());
        let links = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("fort-"))
            .collect::<Vec<_>>();
        assert_eq!(links, Vec::<String>::new());
        assert_eq!(
            fort::host::net::nft::rule_comments("fort-lan").unwrap(),
            None
        );
        assert_eq!(
            ws.run(&["state", "list"]).stdout.trim(),
            "No resources recorded."
        );
        assert!(!ws.state_dir().join("run/a").exists());
    });
}

#[test]
fn vm_errors_are_exact_and_leave_nothing_running() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = static_agent();
    let dir = assets();
    in_netns(move || {
        std::env::set_var("FORT_GUEST_AGENT", &agent);
        let ws = Workspace::new();
        let _console = ConsoleOnFailure(ws.state_dir().join("run"));
        let base = format!(
            "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n\
             [rootfs.bb]\nurl = \"file://{r}\"\n\n\
             [network.lan]\ncidr = \"10.78.0.0/24\"\n\n",
            k = dir.join("vmlinuz").display(),
            i = dir.join("initrd.cpio.gz").display(),
            r = dir.join("rootfs.tar.gz").display(),
        );

        // More memory than the host has: refused by the plan, nothing created.
        ws.write_manifest(&format!(
            "{base}[template.t]\nrootfs = \"bb\"\nsize = \"128MiB\"\n\n[vm.a]\nvmm = \"qemu\"\nkernel = \"deb\"\nroot = {{ template = \"t\", size = \"128MiB\" }}\nmemory = \"4TiB\"\n"
        ));
        let r = ws.run(&["plan"]);
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert!(
            r.stderr.contains(&format!(
                "error: vm.a: the manifest wants 4TiB of VM memory running on this host (vm.a 4TiB), more than the {} it has in total",
                host_memory()
            )),
            "{}",
            r.stderr
        );

        // No firecracker binary: the VM fails with what to do, its dependencies stay.
        ws.write_manifest(&format!(
            "{base}[template.t]\nrootfs = \"bb\"\nsize = \"128MiB\"\n\n[vm.a]\nvmm = \"firecracker\"\nkernel = \"deb\"\nroot = {{ template = \"t\", size = \"128MiB\" }}\nnetwork = \"lan\"\n"
        ));
        let r = ws
            .command(&["apply", "--yes"])
            .env("PATH", "/usr/sbin:/sbin")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&r.stdout);
        assert_eq!(r.status.code(), Some(1), "{out}");
        assert!(out.contains("vm.a: creating failed: firecracker is not installed (PATH): declare a [firecracker.NAME] asset or install it"), "{out}");
        assert!(
            !std::path::Path::new("/sys/class/net/fort-a").exists(),
            "the TAP of a VM that never started was removed"
        );

        // A bzImage for Firecracker (with a stand-in binary, so the kernel check is reached).
        let fc = ws.path().join("firecracker");
        std::fs::write(&fc, "#!/bin/sh\necho Firecracker v1.12.0\n").unwrap();
        Command::new("chmod")
            .args(["755", fc.to_str().unwrap()])
            .status()
            .unwrap();
        let r = ws
            .command(&["apply", "--yes"])
            .env("PATH", format!("{}:/usr/bin:/bin", ws.path().display()))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&r.stdout);
        assert_eq!(r.status.code(), Some(1), "{out}");
        let cached = {
            let s: serde_json::Value =
                serde_json::from_str(&ws.run(&["state", "show", "kernel.deb", "--json"]).stdout)
                    .unwrap();
            s["outputs"]["path"].as_str().unwrap().to_string()
        };
        if std::path::Path::new("/dev/kvm").exists() {
            assert!(out.contains(&format!("vm.a: creating failed: {cached} is not an ELF vmlinux (a bzImage?): Firecracker boots uncompressed ELF kernels on x86_64; use a vmlinux or vmm = \"qemu\"")), "{out}");
        } else {
            assert!(out.contains("vm.a: creating failed: /dev/kvm does not exist: Firecracker needs KVM (enable virtualisation, load kvm_intel or kvm_amd), or use vmm = \"qemu\""), "{out}");
        }

        // A guest whose agent never answers: the timeout names the console log, the VM is
        // stopped and its TAP removed.
        ws.write_manifest(&format!(
            "{base}[template.mute]\nrootfs = \"bb\"\nsize = \"128MiB\"\nguest_agent = false\n[template.mute.files]\n\"/sbin/init\" = {{ content = \"#!/bin/sh\\nexec sleep 100000\\n\", mode = \"0755\" }}\n\n\
             [vm.c]\nvmm = \"qemu\"\nkernel = \"deb\"\nroot = {{ template = \"mute\", size = \"128MiB\" }}\nnetwork = \"lan\"\n"
        ));
        let r = ws
            .command(&["apply", "--yes"])
            .env("FORT_BOOT_TIMEOUT", "8")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&r.stdout);
        assert_eq!(r.status.code(), Some(1), "{out}");
        let console = ws.state_dir().join("run/c/console.log");
        assert!(out.contains(&format!("vm.c: creating failed: the guest agent did not answer within 8s (the VM was stopped; console log: {})", console.display())), "{out}");
        assert!(
            std::fs::read_to_string(&console)
                .unwrap()
                .contains("Linux version"),
            "the console log is kept"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            processes_mentioning(&ws.state_dir().display().to_string()),
            Vec::<String>::new()
        );
        assert!(!std::path::Path::new("/sys/class/net/fort-c").exists());
        ws.run(&["destroy", "--yes"]).ok();
    });
}

#[test]
fn scaling_a_pool_down_removes_the_highest_indices_and_their_drives() {
    let dir = assets();
    in_netns(move || {
        let ws = Workspace::new();
        let pool = |count: u32| {
            format!(
                "[kernel.deb]\nurl = \"file://{k}\"\ninitrd = {{ url = \"file://{i}\" }}\n\n\
                 [rootfs.bb]\nurl = \"file://{r}\"\n\n[template.t]\nrootfs = \"bb\"\nsize = \"64MiB\"\nguest_agent = false\n\n\
                 [vm.w]\ncount = {count}\nvmm = \"qemu\"\nkernel = \"deb\"\nroot = {{ template = \"t\", size = \"64MiB\" }}\nstate = \"stopped\"\n",
                k = dir.join("vmlinuz").display(),
                i = dir.join("initrd.cpio.gz").display(),
                r = dir.join("rootfs.tar.gz").display(),
            )
        };
        ws.write_manifest(&pool(3));
        ws.run(&["apply", "--yes"]).ok();
        let listed = ws.run(&["state", "list"]).stdout.clone();
        for i in 0..3 {
            assert!(listed.contains(&format!("vm.w-{i} ")), "{listed}");
            assert!(listed.contains(&format!("drive.w-{i}-root ")), "{listed}");
        }
        ws.write_manifest(&pool(1));
        let p = ws.run(&["plan", "--detailed-exitcode"]);
        assert_eq!(p.code, 2, "{}", p.stdout);
        assert!(
            p.stdout.contains("  - drive.w-1-root !\n")
                && p.stdout.contains("  - drive.w-2-root !\n"),
            "{}",
            p.stdout
        );
        assert!(
            p.stdout.contains("  - vm.w-1\n") && p.stdout.contains("  - vm.w-2\n"),
            "{}",
            p.stdout
        );
        assert!(
            p.stdout.contains(
                "Plan: 0 to create, 0 to update, 0 to restart, 0 to replace, 4 to destroy."
            ),
            "{}",
            p.stdout
        );
        ws.run(&["apply", "--yes"]).ok();
        let listed = ws.run(&["state", "list"]).stdout.clone();
        assert!(
            listed.contains("vm.w-0 ")
                && !listed.contains("vm.w-1 ")
                && !listed.contains("drive.w-2-root "),
            "{listed}"
        );
        ws.run(&["plan", "--detailed-exitcode"]).ok();
        ws.run(&["destroy", "--yes"]).ok();
    });
}

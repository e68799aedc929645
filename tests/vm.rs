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
use common::vms::{assets, processes_mentioning, vmm, ConsoleOnFailure};

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
        k = dir.join("vmlinuz").display(),
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
                "tools: run_command,file_read,file_write,file_delete,list_dir,stat,shutdown\n"
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

//! The agent as a system component: the static release build, and PID 1 duties in fresh
//! namespaces (needs root, `ip`, `unshare` and busybox-static; .ci/run installs them).

#![allow(clippy::unwrap_used)]

#[path = "common/agent_conn.rs"]
mod agent_conn;

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_conn::Conn;
use serde_json::{json, Value};

/// `PT_INTERP` among the ELF64 program headers means a dynamic loader is needed.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

#[test]
fn the_release_build_is_static_small_and_lean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/build-agent"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let elf = std::fs::read(&bin).unwrap();
    assert_eq!(u16::from_le_bytes([elf[0x12], elf[0x13]]), 0x3e, "x86_64");
    assert!(
        !has_interpreter(&elf),
        "{} needs a dynamic loader",
        bin.display()
    );
    assert!(
        elf.len() < 3 << 20,
        "{} is {} bytes (target < 3 MiB)",
        bin.display(),
        elf.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a.sock");
    let mut child = Command::new(&bin)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !socket.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // One session, then idle.
    let s = UnixStream::connect(&socket).unwrap();
    let mut c = Conn {
        reader: BufReader::new(s.try_clone().unwrap()),
        writer: s,
        next: 1,
    };
    c.request("initialize", json!({"protocolVersion": "2025-11-25"}));
    // Idle with 10 finished background processes retained (their output kept, ~9 KiB each).
    for _ in 0..10 {
        let r = c.call("process_start", json!({"command": "seq 1 2000"}));
        let id = r["result"]["structuredContent"]["id"].clone();
        while c.call("process_output", json!({"id": id, "wait_ms": 10_000}))["result"]
            ["structuredContent"]["eof"]
            != true
        {}
    }
    let list = c.call("process_list", json!({}));
    assert_eq!(
        list["result"]["structuredContent"]["processes"]
            .as_array()
            .map(Vec::len),
        Some(10)
    );
    std::thread::sleep(Duration::from_millis(500));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        rss < 5 * 1024,
        "idle RSS {rss} KiB with 10 finished processes (target < 5 MiB)"
    );
}

fn static_agent() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/build-agent"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn sh(c: &mut Conn, script: &str) -> Value {
    let r = c.call("run_command", json!({"argv": ["/bin/sh", "-c", script]}));
    r["result"]["structuredContent"].clone()
}

/// As PID 1 of fresh PID, mount, UTS and network namespaces, chrooted into a directory with
/// just the static agent and busybox: the init duties, observed from inside through the tools.
#[test]
fn as_pid1_it_mounts_names_configures_reaps_and_powers_off() {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox-static is needed (.ci/run installs it)"
    );
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::copy(static_agent(), r.join("agent")).unwrap();
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::copy(busybox, r.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    let ns = format!("fort-agent-test-{}", std::process::id());
    let ip = |args: &[&str]| {
        let s = Command::new("ip").args(args).status().unwrap();
        assert!(s.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &ns]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    // No dummy module on these machines: a veth pair, both ends in the namespace.
    ip(&[
        "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);

    let console = r.join("console.log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "unshare", "--pid", "--fork", "--mount", "--uts", "--kill-child", "--root"])
        .arg(r)
        .args(["/agent", "--listen", "unix:/agent.sock"])
        .env("FORT_AGENT_CMDLINE", "console=ttyS0 fort.hostname=vm-test fort.ip=10.9.0.2/24 fort.gw=10.9.0.1 fort.dns=9.9.9.9,1.1.1.1")
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::fs::File::create(r.join("console.err")).unwrap())
        .spawn()
        .unwrap();
    // Whatever happens, the namespace's init goes away with the test.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
    let _kill = Kill(child.id());
    let socket = r.join("agent.sock");
    let t = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the agent did not come up as PID 1"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the agent exited as PID 1"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut c = Conn {
        reader: BufReader::new(s.try_clone().unwrap()),
        writer: s,
        next: 1,
    };
    c.request("initialize", json!({"protocolVersion": "2025-11-25"}));
    let read = |c: &mut Conn, p: &str| {
        c.call("file_read", json!({"path": p}))["result"]["structuredContent"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    assert_eq!(
        sh(&mut c, "echo $PPID")["stdout"],
        "1\n",
        "commands are children of PID 1"
    );
    assert_eq!(read(&mut c, "/proc/sys/kernel/hostname"), "vm-test\n");
    assert_eq!(
        read(&mut c, "/etc/resolv.conf"),
        "nameserver 9.9.9.9\nnameserver 1.1.1.1\n"
    );
    let mounts = read(&mut c, "/proc/mounts");
    for m in [
        "proc /proc proc",
        "sysfs /sys sysfs",
        "devtmpfs /dev devtmpfs",
        "devpts /dev/pts devpts",
        "tmpfs /run tmpfs",
        "tmpfs /tmp tmpfs",
    ] {
        assert!(mounts.contains(m), "{m} not mounted:\n{mounts}");
    }
    let addr = sh(&mut c, "busybox ip -4 addr show eth0");
    assert!(
        addr["stdout"]
            .as_str()
            .unwrap()
            .contains("inet 10.9.0.2/24"),
        "{addr}"
    );
    let routes = read(&mut c, "/proc/net/route");
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("eth0\t00000000\t0100090A")),
        "no default route via 10.9.0.1:\n{routes}"
    );

    // An orphan (its parent sh exits first) is re-parented to us and must be reaped.
    sh(&mut c, "sleep 0.2 & exit 0");
    std::thread::sleep(Duration::from_millis(1500));
    let zombies = sh(&mut c, "for f in /proc/[0-9]*/stat; do read l < $f; case \"$l\" in *') Z '*) echo \"$l\";; esac; done");
    assert_eq!(zombies["stdout"], "", "zombies left behind");

    let r = c.call("shutdown", json!({}));
    assert_eq!(r["result"]["structuredContent"]["shutting_down"], true);
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "PID 1 did not power off"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connecting needs a VM (no vsock loopback transport on these machines; the VM tests of
/// issue 6 connect for real), but binding the AF_VSOCK listener works here.
#[test]
fn listens_on_vsock() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fort-guest-agent"))
        .args(["--listen", "vsock:40052", "--listen"])
        .arg(format!("unix:{}", dir.path().join("s").display()))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening on unix:") || t.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("fort-guest-agent: listening on vsock:40052\n"),
        "{text}"
    );
}

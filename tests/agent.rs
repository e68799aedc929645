//! The guest agent as a normal process on a unix socket: protocol, tools, and bad input —
//! each asserted exactly, and the agent must survive all of it.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Agent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_fort-guest-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .spawn()
            .unwrap();
        let t = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "agent did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent {
            child,
            socket,
            _dir: dir,
        }
    }

    fn connect(&self) -> Conn {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            next: 1,
        }
    }

    /// An initialized connection.
    fn session(&self) -> Conn {
        let mut c = self.connect();
        let r = c.request("initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}));
        assert_eq!(r["result"]["protocolVersion"], "2025-06-18");
        c.send_raw(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        c
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next: i64,
}

impl Conn {
    fn send_raw(&mut self, line: &[u8]) {
        self.writer.write_all(line).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send_raw(
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
                .to_string()
                .as_bytes(),
        );
        let r = self.recv();
        assert_eq!(r["id"], id, "{r}");
        r
    }

    fn call(&mut self, tool: &str, args: Value) -> Value {
        self.request("tools/call", json!({"name": tool, "arguments": args}))
    }
}

fn err(r: &Value) -> (i64, String) {
    (
        r["error"]["code"].as_i64().unwrap(),
        r["error"]["message"].as_str().unwrap().to_string(),
    )
}

fn tool_error(r: &Value) -> String {
    assert_eq!(r["result"]["isError"], true, "{r}");
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn protocol_errors_are_exact_and_the_connection_survives() {
    let mut agent = Agent::start();
    let mut c = agent.connect();
    c.send_raw(b"{not json");
    let r = c.recv();
    assert_eq!(r["id"], Value::Null);
    assert_eq!(err(&r).0, -32700);
    assert!(err(&r).1.starts_with("parse error: "), "{r}");

    c.send_raw(b"[1,2]");
    assert_eq!(
        err(&c.recv()),
        (
            -32600,
            "invalid request: expected a JSON object (batches are not supported)".into()
        )
    );
    c.send_raw(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#);
    assert_eq!(
        err(&c.recv()),
        (
            -32600,
            "invalid request: \"jsonrpc\" must be \"2.0\"".into()
        )
    );

    // Before initialize: ping works, everything else is refused.
    assert_eq!(c.request("ping", json!({}))["result"], json!({}));
    assert_eq!(
        err(&c.request("tools/list", json!({}))),
        (
            -32002,
            "not initialized: send \"initialize\" before \"tools/list\"".into()
        )
    );

    // Version negotiation: an unknown revision gets ours.
    let init = c.request("initialize", json!({"protocolVersion": "1999-01-01", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}));
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(init["result"]["serverInfo"]["name"], "fort-guest-agent");
    assert_eq!(
        init["result"]["capabilities"]["tools"],
        json!({"listChanged": false})
    );

    assert_eq!(
        err(&c.request("resources/list", json!({}))),
        (-32601, "method not found: resources/list".into())
    );
    assert_eq!(
        err(&c.call("format_disk", json!({}))),
        (
            -32602,
            "invalid params: unknown tool \"format_disk\"".into()
        )
    );
    assert_eq!(
        err(&c.call("file_read", json!({"path": 7}))),
        (
            -32602,
            "invalid params: invalid type: integer `7`, expected a string".into()
        )
    );
    assert_eq!(err(&c.call("file_read", json!({"paht": "/x"}))), (-32602, "invalid params: unknown field `paht`, expected one of `path`, `offset`, `length`, `encoding`".into()));
    assert_eq!(
        err(&c.call("run_command", json!({}))),
        (
            -32602,
            "invalid params: give exactly one of `argv` (non-empty) or `command`".into()
        )
    );

    // A 10 MiB line is rejected; the connection goes on.
    let mut big = br#"{"jsonrpc":"2.0","id":99,"method":"ping","params":{"pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 10 << 20));
    big.extend_from_slice(br#""}}"#);
    c.send_raw(&big);
    assert_eq!(
        err(&c.recv()),
        (
            -32600,
            "request too large: lines are limited to 8 MiB".into()
        )
    );
    assert_eq!(c.request("ping", json!({}))["result"], json!({}));
    assert!(agent.alive());
}

#[test]
fn tools_list_has_schemas() {
    let agent = Agent::start();
    let mut c = agent.session();
    let tools = c.request("tools/list", json!({}))["result"]["tools"].clone();
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "run_command",
            "file_read",
            "file_write",
            "file_delete",
            "list_dir",
            "stat",
            "shutdown"
        ]
    );
    for t in tools.as_array().unwrap() {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(t["description"].as_str().unwrap().len() > 20);
    }
}

#[test]
fn file_tools() {
    let agent = Agent::start();
    let mut c = agent.session();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();

    assert_eq!(
        tool_error(&c.call("file_read", json!({"path": format!("{d}/missing")}))),
        format!("cannot read {d}/missing: no such file or directory")
    );
    assert_eq!(
        tool_error(&c.call("file_read", json!({"path": d}))),
        format!("cannot read {d}: it is a directory (use list_dir)")
    );
    std::fs::write(dir.path().join("bin"), [b'o', b'k', 0xff, 0xfe]).unwrap();
    assert_eq!(
        tool_error(&c.call("file_read", json!({"path": format!("{d}/bin")}))),
        format!("{d}/bin is not valid UTF-8 (at byte 2): read it with encoding = \"base64\"")
    );
    let b = c.call(
        "file_read",
        json!({"path": format!("{d}/bin"), "encoding": "base64"}),
    );
    assert_eq!(b["result"]["structuredContent"]["content"], "b2v//g==");

    assert_eq!(
        tool_error(&c.call("file_write", json!({"path": format!("{d}/a/b/c.txt"), "content": "x"}))),
        format!("cannot write {d}/a/b/c.txt: directory {d}/a/b does not exist (set create_parents = true)")
    );
    let w = c.call("file_write", json!({"path": format!("{d}/a/b/c.txt"), "content": "hello\n", "create_parents": true, "mode": "0600"}));
    assert_eq!(w["result"]["structuredContent"]["bytes_written"], 6, "{w}");
    c.call(
        "file_write",
        json!({"path": format!("{d}/a/b/c.txt"), "content": "world\n", "append": true}),
    );
    let r = c.call(
        "file_read",
        json!({"path": format!("{d}/a/b/c.txt"), "offset": 6}),
    );
    assert_eq!(r["result"]["content"][0]["text"], "world\n");
    assert_eq!(r["result"]["structuredContent"]["size"], 12);
    assert_eq!(r["result"]["structuredContent"]["eof"], true);
    let s = c.call("stat", json!({"path": format!("{d}/a/b/c.txt")}));
    assert_eq!(s["result"]["structuredContent"]["mode"], "0600");
    assert_eq!(s["result"]["structuredContent"]["type"], "file");
    let l = c.call("list_dir", json!({"path": format!("{d}/a")}));
    assert_eq!(l["result"]["structuredContent"]["entries"][0]["name"], "b");
    assert_eq!(
        l["result"]["structuredContent"]["entries"][0]["type"],
        "directory"
    );

    assert_eq!(
        tool_error(&c.call("file_delete", json!({"path": format!("{d}/a")}))),
        format!("cannot delete {d}/a: directory is not empty (set recursive = true)")
    );
    c.call(
        "file_delete",
        json!({"path": format!("{d}/a"), "recursive": true}),
    );
    assert!(!dir.path().join("a").exists());
    assert_eq!(
        err(&c.call(
            "file_write",
            json!({"path": "/x", "content": "%%%", "encoding": "base64"})
        ))
        .0,
        -32602
    );
}

#[test]
fn commands_exit_codes_stdin_env_and_cwd() {
    let agent = Agent::start();
    let mut c = agent.session();
    let r = c.call("run_command", json!({"command": "echo \"$FOO\" $(pwd); cat; echo err >&2; exit 3", "env": {"FOO": "bar"}, "cwd": "/tmp", "stdin": "piped\n"}));
    let s = &r["result"]["structuredContent"];
    assert_eq!(s["exit_code"], 3, "{r}");
    assert_eq!(s["stdout"], "bar /tmp\npiped\n");
    assert_eq!(s["stderr"], "err\n");
    assert_eq!(s["timed_out"], false);
    let r = c.call("run_command", json!({"argv": ["/no/such/program"]}));
    assert_eq!(
        tool_error(&r),
        "cannot run `/no/such/program`: No such file or directory (os error 2)"
    );
    let r = c.call("run_command", json!({"command": "kill -9 $$"}));
    assert_eq!(r["result"]["structuredContent"]["signal"], 9);
}

#[test]
fn a_command_that_never_ends_is_killed_with_its_children() {
    let agent = Agent::start();
    let mut c = agent.session();
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let t = Instant::now();
    let r = c.call("run_command", json!({"command": format!("sleep 1000 & echo $! > {}; wait", pidfile.path().display()), "timeout_secs": 1}));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(r["result"]["structuredContent"]["timed_out"], true, "{r}");
    let pid: i32 = std::fs::read_to_string(pidfile.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let gone = !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(gone, "the background child {pid} survived the timeout");
}

#[test]
fn huge_output_is_capped_and_memory_stays_bounded() {
    let mut agent = Agent::start();
    let mut c = agent.session();
    let r = c.call(
        "run_command",
        json!({"command": "head -c 104857600 /dev/zero | tr '\\0' x"}),
    );
    let s = &r["result"]["structuredContent"];
    assert_eq!(s["stdout_truncated"], true);
    assert_eq!(s["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(s["exit_code"], 0);
    let rss = agent.rss_kib();
    assert!(
        rss < 64 * 1024,
        "agent RSS {rss} KiB after 100 MiB of output"
    );
    assert!(agent.alive());
}

#[test]
fn two_hundred_concurrent_calls_on_twenty_connections() {
    let mut agent = Agent::start();
    let socket = agent.socket.clone();
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let s = UnixStream::connect(&socket).unwrap();
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\"}}\n").unwrap();
                // Ten calls written at once, answered in any order, matched by id.
                for i in 1..=10 {
                    let req = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "run_command", "arguments": {"argv": ["echo", format!("{t}-{i}")]}}});
                    w.write_all(format!("{req}\n").as_bytes()).unwrap();
                }
                let mut seen = std::collections::BTreeMap::new();
                for _ in 0..11 {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let v: Value = serde_json::from_str(&line).unwrap();
                    seen.insert(v["id"].as_i64().unwrap(), v);
                }
                for i in 1..=10 {
                    assert_eq!(seen[&i]["result"]["structuredContent"]["stdout"], format!("{t}-{i}\n"));
                }
                seen.len() - 1
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 200);
    assert!(agent.alive());
}

#[test]
fn shutdown_outside_a_vm_exits() {
    let mut agent = Agent::start();
    let mut c = agent.session();
    let r = c.call("shutdown", json!({}));
    assert_eq!(r["result"]["structuredContent"]["shutting_down"], true);
    let t = Instant::now();
    while agent.alive() {
        assert!(t.elapsed() < Duration::from_secs(5), "agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
    assert!(rss < 5 * 1024, "idle RSS {rss} KiB (target < 5 MiB)");
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

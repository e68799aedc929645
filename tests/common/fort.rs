//! Running the real `fort` binary in tests: a temp workspace with a manifest and a state dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const FORT: &str = env!("CARGO_BIN_EXE_fort");

/// A temp dir holding `fort.toml` and `state/`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // Confined VMs run as their own uid, which must be able to traverse to the state dir
        // (as it can to /var/lib/fort).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod tempdir");
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn manifest(&self) -> PathBuf {
        self.dir.path().join("fort.toml")
    }

    /// Write `fort.toml` (a `[fort] version = 1` header is prepended).
    pub fn write_manifest(&self, body: &str) {
        std::fs::write(self.manifest(), format!("[fort]\nversion = 1\n\n{body}"))
            .expect("write manifest");
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FORT);
        c.arg("-f")
            .arg(self.manifest())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Run fort to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("run fort");
        Run::from(out)
    }

    /// Files below `state/cache` (excluding the `tmp` dir itself), sorted, relative names.
    pub fn cache_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let cache = self.state_dir().join("cache");
        walk(&cache, &cache, &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// The result of one fort run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "fort failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(&self, want: i32) -> &Run {
        assert_eq!(
            self.code, want,
            "unexpected exit code:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The guest agent binary, built on demand (it lives in another package of the workspace).
pub fn agent_binary() -> PathBuf {
    let dir = Path::new(FORT).parent().expect("target dir").to_path_buf();
    let bin = dir.join("fort-guest-agent");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "fort-guest-agent"])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building fort-guest-agent failed");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// A guest agent on a unix socket, killed on drop.
pub struct AgentProcess {
    pub child: std::process::Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl AgentProcess {
    pub fn start() -> AgentProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let child = Command::new(agent_binary())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("start agent");
        let t = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "agent did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        AgentProcess {
            child,
            socket,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

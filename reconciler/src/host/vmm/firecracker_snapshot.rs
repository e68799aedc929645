//! Firecracker snapshots as Firecracker documents them (docs/snapshotting/snapshot-support.md,
//! network-for-clones.md, versioning.md and the API schema src/firecracker/swagger/
//! firecracker.yaml): the API requests (`GET /`, `PATCH /vm` Paused/Resumed,
//! `PUT /snapshot/create`, `PUT /snapshot/load`) as pure builders, fort's small HTTP/1.1
//! client for the API socket, the command line of a Firecracker that loads a snapshot instead
//! of a config, the suspend and restore sequences, and the snapshot files: where they go, how
//! they get into a jailer's chroot, and how they are made durable. The VM lifecycle drives
//! them through `firecracker_suspend`.
//!
//! Firecracker cannot run on the machines that test fort: everything here is tested against
//! golden request bodies written from that documentation and against a stand-in server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::jailer::{self, Jail};
use super::{Confine, RunDir, VmmError};

/// The microVM state file in a snapshot directory.
pub const STATE_FILE: &str = "snapshot.bin";
/// The guest memory file in a snapshot directory.
pub const MEM_FILE: &str = "mem.bin";
/// The first line of `firecracker --version` of the binary that made the snapshot.
pub const VERSION_FILE: &str = "firecracker-version";

/// One request to Firecracker's API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: &'static str,
    pub path: &'static str,
    pub body: Value,
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// `PATCH /vm {"state":"Paused"}`: stop the vCPUs, memory kept (swagger `Vm`).
pub fn pause() -> ApiRequest {
    ApiRequest {
        method: "PATCH",
        path: "/vm",
        body: json!({"state": "Paused"}),
    }
}

/// `PATCH /vm {"state":"Resumed"}`.
pub fn resume() -> ApiRequest {
    ApiRequest {
        method: "PATCH",
        path: "/vm",
        body: json!({"state": "Resumed"}),
    }
}

/// `GET /`: the instance's description (swagger `InstanceInfo`), whose `state` is "Running",
/// "Paused" or "Not started".
pub fn instance_info() -> ApiRequest {
    ApiRequest {
        method: "GET",
        path: "/",
        body: Value::Null,
    }
}

/// `PUT /actions {"action_type":"SendCtrlAltDel"}` (swagger `InstanceActionInfo`).
pub fn ctrl_alt_del() -> ApiRequest {
    ApiRequest {
        method: "PUT",
        path: "/actions",
        body: json!({"action_type": "SendCtrlAltDel"}),
    }
}

/// `PUT /snapshot/create` for a full snapshot (swagger `SnapshotCreateParams`; the VM must be
/// paused). Paths are as Firecracker sees them (inside its chroot when jailed).
pub fn create(snapshot_path: &Path, mem_path: &Path) -> ApiRequest {
    ApiRequest {
        method: "PUT",
        path: "/snapshot/create",
        body: json!({
            "snapshot_type": "Full",
            "snapshot_path": path_str(snapshot_path),
            "mem_file_path": path_str(mem_path),
        }),
    }
}

/// `PUT /snapshot/load` with the file memory backend (swagger `SnapshotLoadParams`,
/// `MemoryBackend`; `mem_file_path` is deprecated there). `network_overrides` — pairs of
/// (`iface_id`, new `host_dev_name`) — is sent only when non-empty: it needs Firecracker
/// v1.12.0 or later (see docs/snapshots.md).
pub fn load(
    snapshot_path: &Path,
    mem_path: &Path,
    resume_vm: bool,
    network_overrides: &[(String, String)],
) -> ApiRequest {
    let mut body = json!({
        "snapshot_path": path_str(snapshot_path),
        "mem_backend": {
            "backend_type": "File",
            "backend_path": path_str(mem_path),
        },
        "resume_vm": resume_vm,
    });
    if !network_overrides.is_empty() {
        body["network_overrides"] = network_overrides
            .iter()
            .map(|(iface, dev)| json!({"iface_id": iface, "host_dev_name": dev}))
            .collect();
    }
    ApiRequest {
        method: "PUT",
        path: "/snapshot/load",
        body,
    }
}

/// The bytes of `req` on the wire; a `Null` body is none at all (a GET).
pub(crate) fn encode(req: &ApiRequest) -> Vec<u8> {
    if req.body.is_null() {
        return format!(
            "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n",
            req.method, req.path
        )
        .into_bytes();
    }
    let body = req.body.to_string();
    format!(
        "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        req.method,
        req.path,
        body.len()
    )
    .into_bytes()
}

const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: usize = 1 << 20;

/// Send `req` to the Firecracker listening on `api_sock` and wait, at most `timeout` in all,
/// for its answer: 204 (or 200) is success; any other status is [`VmmError::Api`] with
/// Firecracker's `fault_message`.
pub async fn call(api_sock: &Path, req: &ApiRequest, timeout: Duration) -> Result<(), VmmError> {
    ask(api_sock, req, timeout).await.map(|_| ())
}

/// `GET path` from the Firecracker on `api_sock` (at most `timeout`): its JSON answer.
pub async fn get(
    api_sock: &Path,
    path: &'static str,
    timeout: Duration,
) -> Result<Value, VmmError> {
    let req = ApiRequest {
        path,
        ..instance_info()
    };
    let body = ask(api_sock, &req, timeout).await?;
    serde_json::from_slice(&body).map_err(|e| {
        VmmError::Unusable(format!(
            "Firecracker answered GET {path} with a body that is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        ))
    })
}

/// The instance's `state` (`GET /`): "Running", "Paused" or "Not started".
pub async fn instance_state(api_sock: &Path, timeout: Duration) -> Result<String, VmmError> {
    let info = get(api_sock, "/", timeout).await?;
    info.get("state")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            VmmError::Unusable(format!(
                "Firecracker answered GET / without a state: {info}"
            ))
        })
}

/// One request and its answer's body (success only).
async fn ask(api_sock: &Path, req: &ApiRequest, timeout: Duration) -> Result<Vec<u8>, VmmError> {
    let exchange = async {
        let s = UnixStream::connect(api_sock)
            .await
            .map_err(|e| VmmError::io("cannot connect to Firecracker's API socket", api_sock, e))?;
        exchange(s, api_sock, req).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| timed_out(req, timeout))?
}

/// [`call`] on a connection already made (the power button connects first to learn whether
/// Firecracker is there at all).
pub(crate) async fn call_on(
    s: UnixStream,
    api_sock: &Path,
    req: &ApiRequest,
    timeout: Duration,
) -> Result<(), VmmError> {
    tokio::time::timeout(timeout, exchange(s, api_sock, req))
        .await
        .map_err(|_| timed_out(req, timeout))?
        .map(|_| ())
}

fn timed_out(req: &ApiRequest, after: Duration) -> VmmError {
    VmmError::ApiTimeout {
        method: req.method,
        path: req.path,
        after,
    }
}

async fn exchange(
    mut s: UnixStream,
    api_sock: &Path,
    req: &ApiRequest,
) -> Result<Vec<u8>, VmmError> {
    let io = |e| VmmError::io("cannot talk to Firecracker on", api_sock, e);
    s.write_all(&encode(req)).await.map_err(io)?;
    let malformed = |what: &str| {
        VmmError::Unusable(format!(
            "Firecracker answered {} {} with {what}",
            req.method, req.path
        ))
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(malformed("a header over 64 KiB"));
        }
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(malformed("nothing (the connection closed)"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = match status_line.split(' ').collect::<Vec<_>>()[..] {
        [v, code, ..] if v.starts_with("HTTP/1.") => code
            .parse()
            .map_err(|_| malformed(&format!("the status line {status_line:?}")))?,
        _ => return Err(malformed(&format!("the status line {status_line:?}"))),
    };
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    if status == 204 || status == 200 {
        return Ok(body);
    }
    let fault = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("fault_message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => v.to_string(),
        },
        Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
    };
    Err(VmmError::Api {
        method: req.method,
        path: req.path,
        status,
        fault: if fault.is_empty() {
            "no fault_message".into()
        } else {
            fault
        },
    })
}

/// Wait until Firecracker accepts connections on `api_sock` (it binds the socket shortly
/// after it starts), at most `within`.
pub async fn wait_for_socket(api_sock: &Path, within: Duration) -> Result<(), VmmError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if UnixStream::connect(api_sock).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(VmmError::NoApiSocket {
                path: api_sock.to_path_buf(),
                after: within,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Suspend's API half: pause, then a full snapshot into `snapshot_path` and `mem_path` (as
/// Firecracker sees them). Each call waits at most `timeout` (creating writes all of the
/// guest's memory). If the snapshot fails the VM is resumed (a failed create has no side
/// effects, per snapshot-support.md) and the error returned. The caller then makes the files
/// durable ([`commit`]) and ends the process.
pub async fn suspend(
    api_sock: &Path,
    snapshot_path: &Path,
    mem_path: &Path,
    timeout: Duration,
) -> Result<(), VmmError> {
    call(api_sock, &pause(), timeout).await?;
    if let Err(e) = call(api_sock, &create(snapshot_path, mem_path), timeout).await {
        let _ = call(api_sock, &resume(), timeout).await;
        return Err(e);
    }
    Ok(())
}

/// Restore's API half, in a Firecracker started with [`restore_args`] or
/// [`jailed_restore_args`]: wait for its API socket (at most `timeout`), then load the
/// snapshot — and resume it in the same call if `resume_vm` (else the VM stays paused until
/// [`resume`] is sent).
pub async fn restore(
    api_sock: &Path,
    snapshot_path: &Path,
    mem_path: &Path,
    network_overrides: &[(String, String)],
    resume_vm: bool,
    timeout: Duration,
) -> Result<(), VmmError> {
    wait_for_socket(api_sock, timeout).await?;
    let req = load(snapshot_path, mem_path, resume_vm, network_overrides);
    call(api_sock, &req, timeout).await
}

/// Firecracker's command line for a restore: API socket and log, no `--config-file` (a
/// snapshot loads only into a Firecracker that has had no configuration, per the swagger's
/// `/snapshot/load`). `vmm.log` must exist first, as for a boot.
pub fn restore_args(run_dir: &Path) -> Vec<String> {
    let run = RunDir(run_dir);
    vec![
        "--api-sock".into(),
        path_str(&run.api()),
        "--log-path".into(),
        path_str(&run.vmm_log()),
    ]
}

/// The jailer's command line for a restore: the boot's ([`jailer::args`]) without the config
/// file.
pub fn jailed_restore_args(jail: &Jail, confine: &Confine) -> Vec<String> {
    let mut a = jailer::jailer_args(jail, confine);
    for s in ["--", "--api-sock", "/api.sock", "--log-path", "/vmm.log"] {
        a.push(s.into());
    }
    a
}

/// A snapshot's two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub state: PathBuf,
    pub mem: PathBuf,
}

impl SnapshotFiles {
    /// The files of the snapshot directory `dir`.
    pub fn in_dir(dir: &Path) -> SnapshotFiles {
        SnapshotFiles {
            state: dir.join(STATE_FILE),
            mem: dir.join(MEM_FILE),
        }
    }

    /// The files as a jailed Firecracker sees them: `/snapshot.bin` and `/mem.bin` at the top
    /// of its chroot.
    pub fn jailed() -> SnapshotFiles {
        SnapshotFiles::in_dir(Path::new("/"))
    }
}

/// Create `files` empty (mode 0600, owned by `owner` when given) for Firecracker to fill: it
/// truncates and overwrites existing files (snapshot-support.md), and a confined Firecracker
/// could not create them in a directory it does not own.
pub fn precreate(files: &SnapshotFiles, owner: Option<(u32, u32)>) -> Result<(), VmmError> {
    use std::os::unix::fs::OpenOptionsExt;
    for f in [&files.state, &files.mem] {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(f)
            .map_err(|e| VmmError::io("cannot create", f, e))?;
        if let Some((uid, gid)) = owner {
            jailer::chown(f, uid, gid)?;
        }
    }
    Ok(())
}

/// Hard-link `files` into the jail's chroot (`jail_root`, [`Jail::root`]) as
/// [`SnapshotFiles::jailed`] names them (as [`jailer::prepare`] does for the drives; the same
/// filesystem is needed) and return those chroot-relative paths for the requests. For a
/// create, link [`precreate`]d files: what Firecracker writes inside the chroot is then
/// already in fort's snapshot directory. Call after `jailer::prepare`, which empties the
/// chroot.
pub fn link_into_jail(jail_root: &Path, files: &SnapshotFiles) -> Result<SnapshotFiles, VmmError> {
    jailer::link(&files.state, &jail_root.join(STATE_FILE))?;
    jailer::link(&files.mem, &jail_root.join(MEM_FILE))?;
    Ok(SnapshotFiles::jailed())
}

fn fsync(path: &Path) -> Result<(), VmmError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| VmmError::io("cannot fsync", path, e))
}

/// fsync every file and directory under `dir`, `dir` last.
pub fn fsync_tree(dir: &Path) -> Result<(), VmmError> {
    let entries = std::fs::read_dir(dir).map_err(|e| VmmError::io("cannot read", dir, e))?;
    for e in entries {
        let p = e.map_err(|e| VmmError::io("cannot read", dir, e))?.path();
        let t = std::fs::symlink_metadata(&p)
            .map_err(|e| VmmError::io("cannot stat", &p, e))?
            .file_type();
        if t.is_dir() {
            fsync_tree(&p)?;
        } else if t.is_file() {
            fsync(&p)?;
        }
    }
    fsync(dir)
}

/// Make the snapshot written into `tmp` the one at `dest`: fsync it, rename it into place
/// (a previous snapshot at `dest` is moved aside first and removed after), fsync the parent.
/// A crash leaves either the old snapshot or the new one at `dest`, never half of one.
pub fn commit(tmp: &Path, dest: &Path) -> Result<(), VmmError> {
    fsync_tree(tmp)?;
    let mut old = dest.as_os_str().to_owned();
    old.push(".old");
    let old = PathBuf::from(old);
    let had_old = match std::fs::rename(dest, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(VmmError::io("cannot move aside", dest, e)),
    };
    std::fs::rename(tmp, dest).map_err(|e| VmmError::io("cannot rename into place", dest, e))?;
    if let Some(parent) = dest.parent() {
        fsync(parent)?;
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| VmmError::io("cannot remove", &old, e))?;
    }
    Ok(())
}

/// Record, with the snapshot in `dir`, the `firecracker --version` line of the binary that
/// made it.
pub fn record_version(dir: &Path, version: &str) -> Result<(), VmmError> {
    let f = dir.join(VERSION_FILE);
    std::fs::write(&f, format!("{}\n", version.trim()))
        .map_err(|e| VmmError::io("cannot write", &f, e))
}

/// Refuse to load the snapshot in `dir` with a Firecracker whose `--version` line differs
/// from the recorded one: each binary loads only the snapshot data format versions it
/// supports (docs/snapshotting/versioning.md), and a refused load ends the process.
pub fn check_version(dir: &Path, version: &str) -> Result<(), VmmError> {
    let f = dir.join(VERSION_FILE);
    let recorded = std::fs::read_to_string(&f).map_err(|e| VmmError::io("cannot read", &f, e))?;
    let (recorded, version) = (recorded.trim(), version.trim());
    if recorded != version {
        return Err(VmmError::Unusable(format!(
            "the snapshot in {} was made by {recorded}, not {version}: restore it with that Firecracker or discard it",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "firecracker_snapshot_tests.rs"]
pub(crate) mod tests;

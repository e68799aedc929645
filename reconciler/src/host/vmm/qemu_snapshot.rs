//! QEMU's pause, suspend and restore over QMP. QEMU refuses to migrate a VM with a
//! vhost-user-vsock device ("State blocked by non-migratable device"), so suspending unplugs
//! it first (ACPI hot-unplug: the guest's agent keeps listening) and restoring plugs a fresh
//! one in, served by a new vhost-device-vsock. The state stream (devices, with
//! `x-ignore-shared` not the guest's RAM) goes through a pipe fort reads, hashing it as it
//! writes the file, and the guest's RAM is copied from QEMU's memfd beside it
//! (`qemu_memory`); restoring fills the new QEMU's memory and gives it the file, and checks
//! both hashes before the guest runs a single instruction. A checkpoint is a suspend whose
//! VM runs on: the drives are copied while the vCPUs are stopped, then it continues.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::qemu_memory::{self, MEMORY_FILE};
use super::qmp::Qmp;
use super::RunDir;
use crate::host::snapshot::{free_bytes, FileSum, Meta, SnapshotError, STATE_FILE};
use crate::manifest::units::human_size;

/// The vsock device's id and PCI slot (QEMU's args give every device a fixed slot, so the
/// restored VM's devices sit where the snapshot expects them without it).
pub const VSOCK_ID: &str = "vsock0";
pub const VSOCK_CHARDEV: &str = "vsock";
pub const VSOCK_ADDR: &str = "0x2";

const UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);
const STREAM_TIMEOUT: Duration = Duration::from_secs(600);

fn qmp(run_dir: &Path) -> Result<Qmp, SnapshotError> {
    Ok(Qmp::connect(
        &RunDir(run_dir).qmp(),
        Duration::from_secs(5),
    )?)
}

/// Stop the vCPUs (memory kept).
pub fn pause(run_dir: &Path) -> Result<(), SnapshotError> {
    qmp(run_dir)?.execute("stop", json!({}))?;
    Ok(())
}

/// Let the vCPUs run again.
pub fn resume(run_dir: &Path) -> Result<(), SnapshotError> {
    qmp(run_dir)?.execute("cont", json!({}))?;
    Ok(())
}

/// Plug a vsock device in, on the vhost-user socket of the run dir (a new
/// vhost-device-vsock, or the one the device was unplugged from).
pub fn plug_vsock(q: &mut Qmp, run_dir: &Path) -> Result<(), SnapshotError> {
    let _ = q.execute("chardev-remove", json!({ "id": VSOCK_CHARDEV }));
    let path = RunDir(run_dir).vhost();
    // vhost-device-vsock binds its socket again after QEMU's last connection went: right
    // after an unplug it may not be there yet.
    let end = Instant::now() + Duration::from_secs(5);
    while !path.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    q.execute(
        "chardev-add",
        json!({ "id": VSOCK_CHARDEV, "backend": { "type": "socket", "data": {
            "addr": { "type": "unix", "data": { "path": path.display().to_string() } },
            "server": false } } }),
    )?;
    q.execute(
        "device_add",
        json!({ "driver": "vhost-user-vsock-pci", "chardev": VSOCK_CHARDEV, "id": VSOCK_ID, "addr": VSOCK_ADDR }),
    )?;
    Ok(())
}

/// Unplug the vsock device and plug a fresh one in, the vCPUs running: for a guest that
/// missed the last hot-plug (its agent unreachable after a snapshot).
pub fn replug_vsock(run_dir: &Path) -> Result<(), SnapshotError> {
    let mut q = qmp(run_dir)?;
    unplug_vsock(&mut q)?;
    plug_vsock(&mut q, run_dir)
}

fn unplug_vsock(q: &mut Qmp) -> Result<(), SnapshotError> {
    if !q.has_device(VSOCK_ID)? {
        return Ok(());
    }
    q.execute("device_del", json!({ "id": VSOCK_ID }))?;
    let end = Instant::now() + UNPLUG_TIMEOUT;
    while q.has_device(VSOCK_ID)? {
        if Instant::now() > end {
            return Err(SnapshotError::Failed(format!(
                "the guest did not release its vsock device within {}s (ACPI hot-unplug)",
                UNPLUG_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Poll `query-migrate` until the stream is done; its final `status`.
fn wait_migration(q: &mut Qmp, end: Instant) -> Result<serde_json::Value, SnapshotError> {
    loop {
        let r = q.execute("query-migrate", json!({}))?;
        match r.get("status").and_then(|s| s.as_str()) {
            Some("completed") | Some("failed") | Some("cancelled") => return Ok(r),
            _ if Instant::now() > end => {
                return Err(SnapshotError::Failed(
                    "the snapshot stream did not finish in time".into(),
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// What a snapshot stream came to, and the guest memory saved beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub bytes: u64,
    pub sha256: String,
    /// `memory` (`qemu_memory`); `None` in a snapshot whose stream holds the RAM (made
    /// before fort saved it apart, still loadable).
    pub memory: Option<FileSum>,
}

impl Stream {
    /// The snapshot's description, for `snapshot.json`: its size is the stream's and the
    /// memory's saved pages; `files` names both when the memory is apart.
    pub fn meta(self, vm: &str, spec: serde_json::Value) -> Meta {
        let total = self.bytes + self.memory.as_ref().map_or(0, |m| m.bytes);
        let mut m = Meta::new(
            vm,
            "qemu",
            &super::qemu::version(),
            spec,
            total,
            self.sha256.clone(),
        );
        if let Some(mem) = self.memory {
            m.files = vec![
                FileSum {
                    name: STATE_FILE.to_string(),
                    bytes: self.bytes,
                    sha256: self.sha256,
                },
                mem,
            ];
        }
        m
    }
}

/// The guest memory recorded in `meta`, if it is saved apart from the stream.
fn memory_of(meta: &Meta) -> Option<&FileSum> {
    meta.files.iter().find(|f| f.name == MEMORY_FILE)
}

/// Copy `from` to `to` until `from` ends, hashing what was read (sha256). A read error, or a
/// write error unless `drain`, ends the copy with the bytes copied so far; with `drain` a
/// failed write only stops the writing, and the rest of `from` is read and hashed.
fn hashed_copy(
    from: &mut impl Read,
    to: &mut impl Write,
    drain: bool,
) -> Result<Stream, (std::io::Error, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut bytes, mut writing) = (0u64, true);
    loop {
        let n = from.read(&mut buf).map_err(|e| (e, bytes))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if writing {
            match to.write_all(&buf[..n]) {
                Ok(()) => {}
                Err(_) if drain => writing = false,
                Err(e) => return Err((e, bytes)),
            }
        }
        bytes += n as u64;
    }
    Ok(Stream {
        bytes,
        sha256: hex::encode(h.finalize()),
        memory: None,
    })
}

/// Write a full snapshot of the running VM to `dir/vmstate` (created, fsynced by the caller's
/// commit). On success the VM is left stopped (the caller ends QEMU); on failure it runs
/// again with its vsock device back, and the partial file is removed.
pub fn suspend(run_dir: &Path, dir: &Path, memory_bytes: u64) -> Result<Stream, SnapshotError> {
    let mut q = qmp(run_dir)?;
    let was_running = q.status()? == "running";
    unplug_vsock(&mut q)?;
    let out = suspend_stream(&mut q, dir, memory_bytes);
    if out.is_err() {
        let _ = std::fs::remove_file(dir.join(STATE_FILE));
        let _ = std::fs::remove_file(dir.join(MEMORY_FILE));
        // Back as it was: a failed suspend loses nothing.
        let _ = plug_vsock(&mut q, run_dir);
        if was_running {
            let _ = q.execute("cont", json!({}));
        }
    }
    out
}

/// A checkpoint of the running VM: its state stream written to `dir/vmstate` as a suspend
/// writes it, then `while_stopped` (the drive copies) while the vCPUs are still stopped —
/// QEMU flushed and released its drives when the stream completed, so they hold what the
/// memory describes — and then the vsock device is plugged back and the vCPUs continue (if
/// they ran before). The VM runs on in the same QEMU either way; on error the partial
/// stream file is removed.
pub fn checkpoint(
    run_dir: &Path,
    dir: &Path,
    memory_bytes: u64,
    while_stopped: impl FnOnce() -> Result<(), SnapshotError>,
) -> Result<Stream, SnapshotError> {
    let mut q = qmp(run_dir)?;
    let was_running = q.status()? == "running";
    unplug_vsock(&mut q)?;
    let out = suspend_stream(&mut q, dir, memory_bytes).and_then(|s| while_stopped().map(|()| s));
    if out.is_err() {
        let _ = std::fs::remove_file(dir.join(STATE_FILE));
        let _ = std::fs::remove_file(dir.join(MEMORY_FILE));
    }
    let plugged = plug_vsock(&mut q, run_dir);
    let continued = if was_running {
        q.execute("cont", json!({}))
            .map(|_| ())
            .map_err(SnapshotError::from)
    } else {
        Ok(())
    };
    let s = out?;
    plugged?;
    continued?;
    Ok(s)
}

fn suspend_stream(q: &mut Qmp, dir: &Path, memory_bytes: u64) -> Result<Stream, SnapshotError> {
    q.execute("stop", json!({}))?;
    // QEMU's default bandwidth cap (32 MiB/s) is for live migration over a network.
    q.execute(
        "migrate-set-parameters",
        json!({ "max-bandwidth": 64u64 << 30 }),
    )?;
    // The guest's RAM (the shared memfd) stays out of the stream: fort copies its touched
    // pages itself, below.
    ignore_shared(q)?;
    let path = dir.join(STATE_FILE);
    let free = free_bytes(dir);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| SnapshotError::io("cannot create", &path, e))?;
    let (rx, tx) = rustix::pipe::pipe()
        .map_err(|e| SnapshotError::io("cannot make a pipe for", &path, e.into()))?;
    q.execute_with_fd("getfd", json!({ "fdname": "fort-snapshot" }), tx.as_fd())?;
    drop(tx);
    // The stream is written as QEMU sends it; a write error (ENOSPC) ends the copy.
    let writer =
        std::thread::spawn(move || hashed_copy(&mut std::fs::File::from(rx), &mut file, false));
    let started = q.execute("migrate", json!({ "uri": "fd:fort-snapshot" }));
    if let Err(e) = started {
        let _ = q.execute("closefd", json!({ "fdname": "fort-snapshot" }));
        let _ = writer.join();
        return Err(e.into());
    }
    let r = wait_migration(q, Instant::now() + STREAM_TIMEOUT);
    let written = writer
        .join()
        .map_err(|_| SnapshotError::Failed("the snapshot writer panicked".into()))?;
    let r = r?;
    match written {
        Err((e, bytes)) if e.raw_os_error() == Some(libc::ENOSPC) => Err(SnapshotError::DiskFull {
            needed: human_size(memory_bytes),
            written: human_size(bytes),
            free: human_size(free.saturating_sub(bytes)),
            path,
        }),
        Err((e, _)) => Err(SnapshotError::io("cannot write", &path, e)),
        Ok(s) => {
            let status = r.get("status").and_then(|s| s.as_str()).unwrap_or("?");
            if status != "completed" {
                let why = r
                    .get("error-desc")
                    .and_then(|s| s.as_str())
                    .unwrap_or(status);
                return Err(SnapshotError::Failed(format!(
                    "QEMU could not write the snapshot: {why}"
                )));
            }
            let memfd = qemu_memory::find_memfd(q.peer_pid()?, memory_bytes)?;
            let mem = dir.join(MEMORY_FILE);
            match qemu_memory::save(&memfd, memory_bytes, dir) {
                Ok(m) => Ok(Stream {
                    memory: Some(m),
                    ..s
                }),
                Err((e, n)) if qemu_memory::is_disk_full(&e) => Err(SnapshotError::DiskFull {
                    needed: human_size(memory_bytes),
                    written: human_size(s.bytes + n),
                    free: human_size(free.saturating_sub(s.bytes + n)),
                    path: mem,
                }),
                Err((e, _)) => Err(SnapshotError::io("cannot write", &mem, e)),
            }
        }
    }
}

/// Leave shared RAM out of the migration stream (both ends must say so).
fn ignore_shared(q: &mut Qmp) -> Result<(), SnapshotError> {
    q.execute(
        "migrate-set-capabilities",
        json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
    )?;
    Ok(())
}

fn corrupt(path: &Path, hash: &str, sha256: &str) -> Result<(), SnapshotError> {
    if hash != sha256 {
        return Err(SnapshotError::Failed(format!(
            "{} is corrupt: its sha256 is {hash}, the snapshot recorded {sha256}",
            path.display()
        )));
    }
    Ok(())
}

/// Check `dir/vmstate` (and `dir/memory`) against `meta` without loading them (before a
/// restore stops the VM that runs, so a corrupt checkpoint leaves it as it was).
pub fn verify(dir: &Path, meta: &Meta, memory_bytes: u64) -> Result<(), SnapshotError> {
    let path = dir.join(STATE_FILE);
    let mut file =
        std::fs::File::open(&path).map_err(|e| SnapshotError::io("cannot open", &path, e))?;
    let s = hashed_copy(&mut file, &mut std::io::sink(), false)
        .map_err(|(e, _)| SnapshotError::io("cannot read", &path, e))?;
    corrupt(&path, &s.sha256, &meta.state_sha256)?;
    match memory_of(meta) {
        Some(m) => qemu_memory::verify(dir, memory_bytes, m),
        None => Ok(()),
    }
}

/// The sha256 of a snapshot's state file, computed on a thread of its own: started before
/// the QEMU it is loaded into, it is done by the time the load is (it is not on a restore's
/// critical path).
pub struct PendingHash {
    path: std::path::PathBuf,
    thread: std::thread::JoinHandle<std::io::Result<String>>,
}

impl PendingHash {
    /// Start hashing `dir/vmstate`.
    pub fn start(dir: &Path) -> PendingHash {
        let path = dir.join(STATE_FILE);
        let p = path.clone();
        let thread = std::thread::spawn(move || {
            let mut f = std::fs::File::open(&p)?;
            hashed_copy(&mut f, &mut std::io::sink(), false)
                .map(|s| s.sha256)
                .map_err(|(e, _)| e)
        });
        PendingHash { path, thread }
    }

    fn wait(self) -> Result<String, SnapshotError> {
        self.thread
            .join()
            .map_err(|_| SnapshotError::Failed("the snapshot reader panicked".into()))?
            .map_err(|e| SnapshotError::io("cannot read", &self.path, e))
    }
}

/// Load a snapshot into a QEMU started with `-incoming defer -S` (see `qemu::args`), check
/// the stream's checksum and plug a vsock device in; the guest stays stopped until
/// [`resume`]. On error the caller stops that QEMU (it never ran the guest).
pub fn load(
    run_dir: &Path,
    dir: &Path,
    meta: &Meta,
    memory_bytes: u64,
    hash: PendingHash,
    alive: impl Fn() -> bool,
) -> Result<(), SnapshotError> {
    let path = dir.join(STATE_FILE);
    let t0 = Instant::now();
    let file =
        std::fs::File::open(&path).map_err(|e| SnapshotError::io("cannot open", &path, e))?;
    let mut q = qmp(run_dir)?;
    let connected = t0.elapsed();
    // The guest's RAM first, straight into the new QEMU's memfd, checked before the stream
    // that describes the devices around it is given.
    if let Some(m) = memory_of(meta) {
        ignore_shared(&mut q)?;
        let memfd = qemu_memory::find_memfd(q.peer_pid()?, memory_bytes)?;
        qemu_memory::load(&memfd, memory_bytes, dir, m)?;
    }
    let filled = t0.elapsed();
    // QEMU reads the file itself (no pipe to copy through); `hash` reads it meanwhile, and
    // the guest runs only once both are done.
    q.execute_with_fd("getfd", json!({ "fdname": "fort-snapshot" }), file.as_fd())?;
    drop(file);
    q.execute("migrate-incoming", json!({ "uri": "fd:fort-snapshot" }))?;
    let end = Instant::now() + STREAM_TIMEOUT;
    let loaded = loop {
        if !alive() {
            break Err(SnapshotError::Failed(
                "QEMU exited while loading the snapshot".into(),
            ));
        }
        match q.status() {
            Ok(s) if s == "inmigrate" => {}
            Ok(_) => break Ok(()),
            Err(e) => break Err(e.into()),
        }
        if Instant::now() > end {
            break Err(SnapshotError::Failed(
                "loading the snapshot did not finish in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let streamed = t0.elapsed();
    let hash = hash.wait()?;
    corrupt(&path, &hash, &meta.state_sha256)?;
    loaded?;
    let r = q.execute("query-migrate", json!({}))?;
    if let Some(s) = r.get("status").and_then(|s| s.as_str()) {
        if s != "completed" {
            return Err(SnapshotError::Failed(format!(
                "QEMU could not load the snapshot: {s}"
            )));
        }
    }
    let hashed = t0.elapsed();
    let plugged = plug_vsock(&mut q, run_dir);
    tracing::debug!(
        "snapshot load: QMP {connected:?}, memory filled {filled:?}, stream in {streamed:?}, hashed {hashed:?}, vsock plugged {:?}",
        t0.elapsed()
    );
    plugged
}

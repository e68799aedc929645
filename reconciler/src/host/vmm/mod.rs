//! Virtual machine monitors behind one trait. Both backends share the run-dir layout
//! (`state_dir/run/<vm>/`): `vsock.sock` (Firecracker's hybrid vsock protocol, which
//! vhost-device-vsock serves for QEMU too), `console.log`, `vmm.log`, the VMM's config, so
//! the agent client, `fort exec`, `fort mcp` and `fort console` work the same on both.

pub mod firecracker;
pub mod firecracker_snapshot;
pub mod firecracker_suspend;
pub mod firecracker_warm;
pub mod jailer;
pub mod process;
pub mod qemu;
pub mod qemu_memory;
pub mod qemu_snapshot;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use process::Proc;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unusable(String),
    /// Firecracker answered an API request with an error status and its `fault_message`.
    #[error("Firecracker refused {method} {path}: {fault} (HTTP {status})")]
    Api {
        method: &'static str,
        path: &'static str,
        status: u16,
        fault: String,
    },
    #[error("Firecracker did not answer {method} {path} within {after:?}")]
    ApiTimeout {
        method: &'static str,
        path: &'static str,
        after: Duration,
    },
    #[error("Firecracker's API socket {} did not appear within {after:?}", path.display())]
    NoApiSocket { path: PathBuf, after: Duration },
}

impl VmmError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> VmmError {
        VmmError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Everything a VMM needs to boot one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub run_dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line, `fort.*` guest parameters included.
    pub cmdline: String,
    pub root: PathBuf,
    pub drives: Vec<PathBuf>,
    /// The serial of each of `drives` (same order), given to the guest where the VMM can
    /// (QEMU); Firecracker has none, the guest finds them by order.
    pub serials: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub net: Option<NetConfig>,
    /// The guest's vsock CID (≥ 3).
    pub cid: u32,
    /// Who the VM's processes run as and the cgroup they run in; `None` runs them as fort's
    /// own user, unconfined (a record made before confinement existed).
    pub confine: Option<Confine>,
}

/// How a VM's processes are confined: a uid/gid of their own (allocated per VM, stable, in
/// state), the extra groups that open devices (the group of `/dev/kvm`), and the VM's cgroup
/// with its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confine {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, e.g. the owner group of `/dev/kvm`.
    pub groups: Vec<u32>,
    /// The cgroup, relative to each hierarchy's root, e.g. `fort/<state id>/vm-NAME`.
    pub cgroup: String,
    /// Which cgroup hierarchy the host gives: 1 (per-controller v1 mounts) or 2 (unified).
    pub cgroup_version: u8,
    /// The VM's cgroup directories, one per hierarchy mount (v1 has one per controller),
    /// whose `cgroup.procs` the VM's processes join before they exec. Empty: no cgroup (the
    /// host has no usable hierarchy).
    pub cgroup_dirs: Vec<PathBuf>,
    pub limits: Limits,
}

/// A VM's cgroup limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per `cpu_period_us`: `vcpus × period` (a guest spinning every vCPU gets at
    /// most its vCPUs' worth of host CPUs).
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
    /// The guest's memory plus the VMM's documented overhead.
    pub memory_bytes: u64,
    pub pids: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Empty: a NIC on no network (QEMU `-netdev hubport`), for a warm template's builder,
    /// whose clones get a TAP each.
    pub tap: String,
    pub mac: String,
}

/// The run-dir layout both backends use.
pub struct RunDir<'a>(pub &'a Path);

impl RunDir<'_> {
    pub fn vsock(&self) -> PathBuf {
        self.0.join("vsock.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.0.join("console.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.0.join("vmm.log")
    }
    pub fn api(&self) -> PathBuf {
        self.0.join("api.sock")
    }
    pub fn vhost(&self) -> PathBuf {
        self.0.join("vhost.sock")
    }
    pub fn helper_log(&self) -> PathBuf {
        self.0.join("vhost.log")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn qmp(&self) -> PathBuf {
        self.0.join("qmp.sock")
    }
    /// The VMM's PID, for people and scripts (`kill $(cat …/pid)`); fort itself trusts the
    /// PID and start time in state, which survive PID reuse.
    pub fn pid(&self) -> PathBuf {
        self.0.join("pid")
    }

    /// Ready the directory for a new boot: create it, remove sockets a previous run left
    /// (VMMs bind them and fail when they exist), and rotate the previous boot's logs to
    /// `*.1`, so every boot's logs — and the failure scan over them — hold only that boot.
    pub fn prepare(&self) -> Result<(), VmmError> {
        std::fs::create_dir_all(self.0).map_err(|e| VmmError::io("cannot create", self.0, e))?;
        for s in [self.vsock(), self.api(), self.vhost(), self.qmp()] {
            match std::fs::remove_file(&s) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(VmmError::io("cannot remove stale socket", &s, e))
                }
                _ => {}
            }
        }
        for log in [self.console(), self.vmm_log(), self.helper_log()] {
            let mut old = log.clone().into_os_string();
            old.push(".1");
            match std::fs::rename(&log, &old) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(VmmError::io("cannot rotate", &log, e))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A started VM: the VMM process and, for QEMU, its vhost-device-vsock helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Started {
    pub vmm: Proc,
    pub helper: Option<Proc>,
}

impl Started {
    pub fn alive(&self) -> bool {
        self.vmm.alive() && self.helper.is_none_or(|h| h.alive())
    }

    /// SIGTERM then SIGKILL for whatever is still running (the clean shutdown through the
    /// agent is the caller's first step).
    pub fn kill(&self, grace: Duration) {
        self.vmm.terminate(grace);
        if let Some(h) = self.helper {
            h.terminate(Duration::from_secs(2));
        }
    }
}

/// A VMM backend. Starting a VM is split into the processes it runs, in order, so the caller
/// records each one the moment it exists (a crash in between leaves nothing unrecorded).
pub trait Vmm: Send + Sync {
    fn name(&self) -> &'static str;
    /// Check the host and the inputs before starting (missing binary, /dev/kvm, kernel format).
    fn check(&self, cfg: &VmConfig) -> Result<(), VmmError>;
    /// Start what the VMM needs running first (QEMU: vhost-device-vsock, once its socket is
    /// there). Call after [`RunDir::prepare`].
    fn start_helper(&self, _cfg: &VmConfig) -> Result<Option<Proc>, VmmError> {
        Ok(None)
    }
    /// Write the VMM's config and start it detached; returns once the process runs (not once
    /// the guest is ready).
    fn start_vmm(&self, cfg: &VmConfig) -> Result<Proc, VmmError>;
    /// Start the VMM to load a snapshot into (QEMU: `-incoming defer -S`); the caller loads
    /// it (`qemu_snapshot::restore`).
    fn start_vmm_incoming(&self, _cfg: &VmConfig) -> Result<Proc, VmmError> {
        Err(VmmError::Unusable(format!(
            "{} cannot restore snapshots in fort yet",
            self.name()
        )))
    }
    /// The VMM's version, recorded with snapshots.
    fn version(&self) -> String {
        String::new()
    }
    /// Problems the VMM reported in this boot's log that leave the VM useless though it keeps
    /// running.
    fn fatal_log(&self, run_dir: &Path) -> Option<String>;
    /// Does this backend need more time to boot (software emulation)?
    fn slow(&self) -> bool {
        false
    }
}

/// Find a program in PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Real hardware virtualisation (not nested PVM, which cannot run ordinary guests).
pub fn hardware_kvm() -> bool {
    Path::new("/dev/kvm").exists()
        && (Path::new("/sys/module/kvm_intel").exists()
            || Path::new("/sys/module/kvm_amd").exists())
}

/// Ask the guest to power off the way its virtual hardware does it, without the agent:
/// Firecracker's `SendCtrlAltDel` action (the agent as PID 1 powers off on it) or QEMU's ACPI
/// `system_powerdown` over QMP. Best effort: the caller escalates to signals.
pub async fn request_poweroff(run_dir: &Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let run = RunDir(run_dir);
    if let Ok(s) = tokio::net::UnixStream::connect(run.api()).await {
        let req = firecracker_snapshot::ctrl_alt_del();
        return firecracker_snapshot::call_on(s, &run.api(), &req, Duration::from_secs(10))
            .await
            .is_ok();
    }
    if let Ok(mut s) = tokio::net::UnixStream::connect(run.qmp()).await {
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await; // the greeting
        for cmd in [
            r#"{"execute":"qmp_capabilities"}"#,
            r#"{"execute":"system_powerdown"}"#,
        ] {
            if s.write_all(format!("{cmd}\n").as_bytes()).await.is_err() {
                return false;
            }
            let _ = s.read(&mut buf).await;
        }
        return true;
    }
    false
}

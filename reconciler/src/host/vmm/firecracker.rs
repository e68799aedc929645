//! The Firecracker backend: a `--config-file` in Firecracker's documented schema
//! (boot-source, drives, machine-config, network-interfaces, vsock), started detached with
//! its API socket in the run dir. Firecracker boots an ELF `vmlinux` and needs a usable
//! `/dev/kvm`; both are checked before starting.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::process::spawn_detached;
use super::{RunDir, Started, VmConfig, Vmm, VmmError};

pub struct Firecracker {
    /// The binary: a `[firecracker.*]` asset, or `firecracker` from PATH when `None`.
    pub binary: Option<PathBuf>,
}

/// The `--config-file` document for `cfg`.
pub fn config(cfg: &VmConfig) -> Value {
    let run = RunDir(&cfg.run_dir);
    let mut boot = json!({
        "kernel_image_path": cfg.kernel,
        "boot_args": cfg.cmdline,
    });
    if let Some(i) = &cfg.initrd {
        boot["initrd_path"] = json!(i);
    }
    let mut drives = vec![json!({
        "drive_id": "root",
        "path_on_host": cfg.root,
        "is_root_device": true,
        "is_read_only": false,
        "cache_type": "Writeback",
    })];
    for (i, d) in cfg.drives.iter().enumerate() {
        drives.push(json!({
            "drive_id": format!("data{i}"),
            "path_on_host": d,
            "is_root_device": false,
            "is_read_only": false,
            "cache_type": "Writeback",
        }));
    }
    let mut doc = json!({
        "boot-source": boot,
        "drives": drives,
        "machine-config": {
            "vcpu_count": cfg.vcpus,
            "mem_size_mib": cfg.memory_mib,
            "smt": false,
        },
        "vsock": {
            "guest_cid": cfg.cid,
            "uds_path": run.vsock(),
        },
    });
    if let Some(n) = &cfg.net {
        doc["network-interfaces"] = json!([{
            "iface_id": "eth0",
            "host_dev_name": n.tap,
            "guest_mac": n.mac,
        }]);
    }
    doc
}

/// Is `path` an ELF file (what Firecracker boots on x86_64), rather than e.g. a bzImage?
pub fn is_elf(path: &Path) -> Result<bool, VmmError> {
    let mut f = std::fs::File::open(path).map_err(|e| VmmError::io("cannot open", path, e))?;
    let mut magic = [0u8; 4];
    Ok(f.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

impl Firecracker {
    fn binary(&self) -> Result<PathBuf, VmmError> {
        match &self.binary {
            Some(b) => Ok(b.clone()),
            None => super::which("firecracker").ok_or_else(|| {
                VmmError::Unusable(
                    "firecracker is not installed (PATH): declare a [firecracker.NAME] asset or install it".into(),
                )
            }),
        }
    }
}

impl Vmm for Firecracker {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn check(&self, cfg: &VmConfig) -> Result<(), VmmError> {
        self.binary()?;
        let kvm = Path::new("/dev/kvm");
        if !kvm.exists() {
            return Err(VmmError::Unusable(
                "/dev/kvm does not exist: Firecracker needs KVM (enable virtualisation, load kvm_intel or kvm_amd), or use vmm = \"qemu\"".into(),
            ));
        }
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
            return Err(VmmError::Unusable(format!(
                "/dev/kvm is not usable ({e}): run fort as root or add its user to the kvm group"
            )));
        }
        if !is_elf(&cfg.kernel)? {
            return Err(VmmError::Unusable(format!(
                "{} is not an ELF vmlinux (a bzImage?): Firecracker boots uncompressed ELF kernels on x86_64; use a vmlinux or vmm = \"qemu\"",
                cfg.kernel.display()
            )));
        }
        Ok(())
    }

    fn start(&self, cfg: &VmConfig) -> Result<Started, VmmError> {
        self.check(cfg)?;
        let run = RunDir(&cfg.run_dir);
        run.prepare()?;
        let doc = serde_json::to_string_pretty(&config(cfg)).unwrap_or_default();
        std::fs::write(run.config(), doc)
            .map_err(|e| VmmError::io("cannot write", &run.config(), e))?;
        // Firecracker opens its log file but does not create it.
        std::fs::write(run.vmm_log(), b"")
            .map_err(|e| VmmError::io("cannot create", &run.vmm_log(), e))?;
        let mut c = Command::new(self.binary()?);
        c.arg("--api-sock")
            .arg(run.api())
            .arg("--config-file")
            .arg(run.config())
            .arg("--log-path")
            .arg(run.vmm_log());
        // The serial console is Firecracker's stdout.
        let vmm = spawn_detached(c, &run.console(), "firecracker")?;
        Ok(Started { vmm, helper: None })
    }

    fn fatal_log(&self, _run_dir: &Path) -> Option<String> {
        None
    }
}

//! The Firecracker backend: a `--config-file` in Firecracker's documented schema
//! (boot-source, drives, machine-config, network-interfaces, vsock), started detached with
//! its API socket in the run dir. Firecracker boots an ELF `vmlinux` and needs a usable
//! `/dev/kvm`; both are checked before starting.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::process::{spawn_detached, Proc};
use super::{RunDir, VmConfig, Vmm, VmmError};

pub struct Firecracker {
    /// The binary: a `[firecracker.*]` asset, or `firecracker` from PATH when `None`.
    pub binary: Option<PathBuf>,
    /// The asset's jailer (`jailer_member`): a confined VM starts through it.
    pub jailer: Option<PathBuf>,
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

impl Vmm for Firecracker {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn check(&self, cfg: &VmConfig) -> Result<(), VmmError> {
        self.binary()?;
        if let Some(j) = &self.jailer {
            if !j.is_file() {
                return Err(VmmError::Unusable(format!(
                    "the jailer {} is not there: apply its [firecracker.*] asset again",
                    j.display()
                )));
            }
        }
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

    fn start_vmm(&self, cfg: &VmConfig) -> Result<Proc, VmmError> {
        self.start(cfg, false)
    }

    /// A Firecracker with nothing configured, for `PUT /snapshot/load`
    /// (`firecracker_suspend::restore`).
    fn start_vmm_incoming(&self, cfg: &VmConfig) -> Result<Proc, VmmError> {
        self.start(cfg, true)
    }

    fn version(&self) -> String {
        match self.binary() {
            Ok(b) => version(&b),
            Err(_) => "unknown".into(),
        }
    }

    fn fatal_log(&self, _run_dir: &Path) -> Option<String> {
        None
    }
}

/// `BINARY --version`'s first line ("Firecracker v1.12.0"): each build loads only the snapshot
/// data formats it supports. Asked once per binary file (path and modification time, so a
/// binary upgraded in place is asked again).
pub fn version(binary: &Path) -> String {
    use std::collections::HashMap;
    use std::sync::Mutex;
    /// A binary file: its path and modification time.
    type Build = (PathBuf, Option<std::time::SystemTime>);
    static SEEN: Mutex<Option<HashMap<Build, String>>> = Mutex::new(None);
    let key = (
        binary.to_path_buf(),
        std::fs::metadata(binary).and_then(|m| m.modified()).ok(),
    );
    if let Some(v) = SEEN
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(&key).cloned()))
    {
        return v;
    }
    let v = Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    if let Ok(mut m) = SEEN.lock() {
        m.get_or_insert_with(HashMap::new).insert(key, v.clone());
    }
    v
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

    /// Start Firecracker (through the jailer when it has one and the VM is confined), booting
    /// `cfg` from its config file, or with no config at all when `restore` (a snapshot loads
    /// only into a Firecracker that has none).
    fn start(&self, cfg: &VmConfig, restore: bool) -> Result<Proc, VmmError> {
        self.check(cfg)?;
        if let (Some(jailer), Some(confine)) = (&self.jailer, &cfg.confine) {
            let jail = super::jailer::prepare(cfg, confine, &self.binary()?)?;
            let mut c = Command::new(jailer);
            if restore {
                c.args(super::firecracker_snapshot::jailed_restore_args(
                    &jail, confine,
                ));
            } else {
                c.args(super::jailer::args(&jail, confine));
            }
            // The jailer runs as root (it makes the chroot and the device nodes, then drops to
            // the VM's uid/gid and execs Firecracker in the same process, so the PID fort
            // records is Firecracker's), in the VM's cgroup from its first instruction; it
            // installs Firecracker's own seccomp filters. The serial console is its stdout.
            let mut jail = super::process::jail(cfg)?;
            if let Some(j) = &mut jail {
                j.uid = 0;
                j.gid = 0;
                j.groups.clear();
                j.seccomp = None;
            }
            return spawn_detached(c, &RunDir(&cfg.run_dir).console(), "jailer", jail.as_ref());
        }
        let run = RunDir(&cfg.run_dir);
        if !restore {
            let doc = serde_json::to_string_pretty(&config(cfg)).unwrap_or_default();
            std::fs::write(run.config(), doc)
                .map_err(|e| VmmError::io("cannot write", &run.config(), e))?;
        }
        // Firecracker opens its log file but does not create it.
        std::fs::write(run.vmm_log(), b"")
            .map_err(|e| VmmError::io("cannot create", &run.vmm_log(), e))?;
        if let Some(c) = &cfg.confine {
            // Opened by Firecracker itself, as the VM's user.
            std::os::unix::fs::chown(run.vmm_log(), Some(c.uid), Some(c.gid))
                .map_err(|e| VmmError::io("cannot chown", &run.vmm_log(), e))?;
        }
        let mut c = Command::new(self.binary()?);
        if restore {
            c.args(super::firecracker_snapshot::restore_args(&cfg.run_dir));
        } else {
            c.arg("--api-sock")
                .arg(run.api())
                .arg("--config-file")
                .arg(run.config())
                .arg("--log-path")
                .arg(run.vmm_log());
        }
        // The serial console is Firecracker's stdout.
        let jail = super::process::jail(cfg)?;
        spawn_detached(c, &run.console(), "firecracker", jail.as_ref())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::host::vmm::NetConfig;

    pub(crate) fn cfg() -> VmConfig {
        VmConfig {
            name: "a".into(),
            run_dir: "/var/lib/fort/run/a".into(),
            kernel: "/var/lib/fort/cache/vmlinux".into(),
            initrd: Some("/var/lib/fort/cache/initrd".into()),
            cmdline: "console=ttyS0 reboot=k panic=1 fort.hostname=a fort.ip=10.77.0.2/24 fort.gw=10.77.0.1 fort.dns=192.0.2.53".into(),
            root: "/var/lib/fort/drives/a-root.ext4".into(),
            drives: vec!["/var/lib/fort/drives/data.ext4".into()],
            serials: vec!["fort-data".into()],
            vcpus: 2,
            memory_mib: 512,
            net: Some(NetConfig {
                tap: "fort-a".into(),
                mac: "02:fc:0a:4d:00:02".into(),
            }),
            cid: 7,
            confine: None,
        }
    }

    /// The config file against a golden copy written from Firecracker's documented schema
    /// (src/firecracker/swagger/firecracker.yaml: BootSource, Drive, MachineConfiguration,
    /// NetworkInterface, Vsock), field by field so a difference names its path.
    #[test]
    fn config_matches_the_golden_file_field_by_field() {
        let golden: Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/golden/firecracker-config.json"
        )))
        .unwrap();
        let ours = config(&cfg());
        fn walk(path: &str, a: &Value, b: &Value, diffs: &mut Vec<String>) {
            match (a, b) {
                (Value::Object(x), Value::Object(y)) => {
                    for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                        let p = format!("{path}/{k}");
                        match (x.get(k), y.get(k)) {
                            (Some(u), Some(v)) => walk(&p, u, v, diffs),
                            (u, v) => diffs.push(format!("{p}: {u:?} vs {v:?}")),
                        }
                    }
                }
                (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                    for (i, (u, v)) in x.iter().zip(y).enumerate() {
                        walk(&format!("{path}/{i}"), u, v, diffs);
                    }
                }
                (u, v) if u != v => diffs.push(format!("{path}: {u} vs {v}")),
                _ => {}
            }
        }
        let mut diffs = Vec::new();
        walk("", &ours, &golden, &mut diffs);
        assert_eq!(diffs, Vec::<String>::new());
        // Without network and initrd those sections are absent, not null.
        let mut bare = cfg();
        bare.net = None;
        bare.initrd = None;
        let doc = config(&bare);
        assert!(doc.get("network-interfaces").is_none());
        assert!(doc["boot-source"].get("initrd_path").is_none());
    }

    #[test]
    fn the_version_is_the_first_line_of_version_and_asked_again_after_an_upgrade() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("firecracker");
        let script = |v: &str| {
            // As v1.12.0 prints it: the version, a blank line, the snapshot formats.
            let body = format!(
                "#!/bin/sh\nprintf '{v}\\n\\nSupported snapshot data format versions: v5.0.0\\n'\n"
            );
            let tmp = dir.path().join("new");
            std::fs::write(&tmp, body).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &bin).unwrap();
        };
        script("Firecracker v1.12.0");
        assert_eq!(version(&bin), "Firecracker v1.12.0");
        // Another binary at the same path (a new modification time) is asked again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        script("Firecracker v1.13.0");
        let f = std::fs::File::open(&bin).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(version(&bin), "Firecracker v1.13.0");
        assert_eq!(version(&dir.path().join("none")), "unknown");
        let fc = Firecracker {
            binary: Some(bin),
            jailer: None,
        };
        assert_eq!(fc.version(), "Firecracker v1.13.0");
    }

    #[test]
    fn a_bzimage_or_a_missing_binary_is_refused_before_starting() {
        let dir = tempfile::tempdir().unwrap();
        let bz = dir.path().join("vmlinuz");
        // A bzImage starts with a boot sector, not ELF magic.
        std::fs::write(&bz, [0x4d, 0x5a, 0, 0, 0, 0]).unwrap();
        let mut c = cfg();
        c.kernel = bz.clone();
        let fc = Firecracker {
            binary: Some("/bin/true".into()),
            jailer: None,
        };
        let err = fc.check(&c).unwrap_err().to_string();
        if std::path::Path::new("/dev/kvm").exists() {
            assert_eq!(err, format!("{} is not an ELF vmlinux (a bzImage?): Firecracker boots uncompressed ELF kernels on x86_64; use a vmlinux or vmm = \"qemu\"", bz.display()));
        } else {
            assert_eq!(err, "/dev/kvm does not exist: Firecracker needs KVM (enable virtualisation, load kvm_intel or kvm_amd), or use vmm = \"qemu\"");
        }
        let elf = dir.path().join("vmlinux");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
        assert!(is_elf(&elf).unwrap());
        assert!(!is_elf(&bz).unwrap());
        let old = std::env::var_os("PATH");
        let none = Firecracker {
            binary: None,
            jailer: None,
        };
        c.kernel = elf;
        std::env::set_var("PATH", dir.path());
        let err = none.check(&c).unwrap_err().to_string();
        if let Some(p) = old {
            std::env::set_var("PATH", p);
        }
        assert_eq!(
            err,
            "firecracker is not installed (PATH): declare a [firecracker.NAME] asset or install it"
        );
    }
}

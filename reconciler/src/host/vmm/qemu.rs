//! The QEMU backend: one `vhost-device-vsock` per VM serving the hybrid-vsock socket, QEMU
//! `-M pc` with memfd shared memory (vhost-user needs it), virtio-blk drives, a TAP
//! `virtio-net-pci` with the leased MAC; KVM only on real hardware virtualisation, TCG
//! otherwise.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{jail, spawn_detached, Proc};
use super::qemu_snapshot::{VSOCK_ADDR, VSOCK_CHARDEV, VSOCK_ID};
use super::{hardware_kvm, which, RunDir, VmConfig, Vmm, VmmError};

pub struct Qemu;

pub const QEMU: &str = "qemu-system-x86_64";
pub const VHOST: &str = "vhost-device-vsock";

/// QEMU's arguments for `cfg` (pure, so tests can compare them). `tap_fd`: the TAP as a
/// descriptor fort opened (a confined QEMU cannot open `/dev/net/tun`), else by name.
/// `incoming`: started to load a snapshot (`-incoming defer -S`, no vsock device: it cannot
/// migrate, and is plugged in after the load, see `qemu_snapshot`). Every PCI device has a
/// fixed slot, so a VM restored without its vsock device has the others where the snapshot
/// put them.
pub fn args(cfg: &VmConfig, kvm: bool, tap_fd: Option<i32>, incoming: bool) -> Vec<String> {
    let run = RunDir(&cfg.run_dir);
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
    if kvm {
        push(&["-accel", "kvm", "-cpu", "host"]);
    } else {
        // A bounded translation cache (QEMU's default is 1 GiB, filled as the guest runs new
        // code), so the VM's memory limit holds.
        push(&["-accel", "tcg,tb-size=64", "-cpu", "max"]);
    }
    let mem = format!("{}", cfg.memory_mib);
    push(&["-M", "pc", "-smp", &cfg.vcpus.to_string(), "-m", &mem]);
    push(&[
        "-object",
        // A restore's memory is not preallocated: fort writes the guest's saved pages into
        // this memfd itself (`qemu_memory`), and the rest stays unallocated, as in the
        // guest it was saved from.
        &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-numa",
        "node,memdev=mem",
    ]);
    if !incoming {
        push(&[
            "-chardev",
            &format!("socket,id={VSOCK_CHARDEV},path={}", run.vhost().display()),
            "-device",
            &format!(
                "vhost-user-vsock-pci,chardev={VSOCK_CHARDEV},id={VSOCK_ID},addr={VSOCK_ADDR}"
            ),
        ]);
    }
    // Slot 2 is the vsock device's, whether plugged or not.
    let mut slot = 3u32;
    let mut addr = || {
        let a = format!("addr=0x{slot:x}");
        slot += 1;
        a
    };
    // Explicit devices (not `if=virtio`, which QEMU creates after every `-device`): PCI order
    // is command-line order, so the root is vda and data drives follow in manifest order.
    push(&[
        "-drive",
        &format!(
            "file={},format=raw,if=none,id=root,cache=writeback",
            cfg.root.display()
        ),
        "-device",
        &format!("virtio-blk-pci,drive=root,{}", addr()),
    ]);
    for (i, d) in cfg.drives.iter().enumerate() {
        let mut dev = format!("virtio-blk-pci,drive=data{i},{}", addr());
        if let Some(s) = cfg.serials.get(i) {
            dev.push_str(&format!(",serial={s}"));
        }
        push(&[
            "-drive",
            &format!(
                "file={},format=raw,if=none,id=data{i},cache=writeback",
                d.display()
            ),
            "-device",
            &dev,
        ]);
    }
    if let Some(n) = &cfg.net {
        let netdev = match tap_fd {
            _ if n.tap.is_empty() => "hubport,id=net0,hubid=0".to_string(),
            Some(fd) => format!("tap,id=net0,fd={fd}"),
            None => format!("tap,id=net0,ifname={},script=no,downscript=no", n.tap),
        };
        push(&[
            "-netdev",
            &netdev,
            "-device",
            &format!("virtio-net-pci,netdev=net0,mac={},{}", n.mac, addr()),
        ]);
    }
    push(&[
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            run.0.join("qmp.sock").display()
        ),
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        &format!("file:{}", run.console().display()),
        "-kernel",
        &cfg.kernel.display().to_string(),
    ]);
    if let Some(i) = &cfg.initrd {
        push(&["-initrd", &i.display().to_string()]);
    }
    if kvm
        || cfg
            .cmdline
            .split_whitespace()
            .any(|w| w == "no_timer_check")
    {
        push(&["-append", &cfg.cmdline]);
    } else {
        // Under TCG on a busy host the kernel's early check that the IO-APIC timer ticks can
        // miss its window and panic ("IO-APIC + timer doesn't work!"): skip it, as cloud
        // images do for virtual machines.
        push(&["-append", &format!("{} no_timer_check", cfg.cmdline)]);
    }
    if incoming {
        push(&["-incoming", "defer", "-S"]);
    }
    if cfg.confine.is_some() {
        // QEMU's own seccomp sandbox, on top of fort's deny-list: no obsolete syscalls, no
        // setuid, no fork/exec, no scheduler or CPU-affinity changes.
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    }
    a
}

impl Vmm for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn slow(&self) -> bool {
        !hardware_kvm()
    }

    fn check(&self, _cfg: &VmConfig) -> Result<(), VmmError> {
        for (bin, pkg) in [
            (QEMU, "qemu-system-x86 (Debian)"),
            (VHOST, "cargo install vhost-device-vsock --locked"),
        ] {
            if which(bin).is_none() {
                return Err(VmmError::Unusable(format!(
                    "{bin} is not installed (PATH): install it with {pkg}"
                )));
            }
        }
        Ok(())
    }

    fn start_helper(&self, cfg: &VmConfig) -> Result<Option<Proc>, VmmError> {
        self.check(cfg)?;
        let run = RunDir(&cfg.run_dir);
        let mut vhost = Command::new(VHOST);
        vhost
            .arg("--guest-cid")
            .arg(cfg.cid.to_string())
            .arg("--socket")
            .arg(run.vhost())
            .arg("--uds-path")
            .arg(run.vsock());
        let jail = jail(cfg)?;
        let helper = spawn_detached(vhost, &run.helper_log(), VHOST, jail.as_ref())?;
        // QEMU exits at once when the vhost-user socket is not there yet.
        let end = Instant::now() + Duration::from_secs(10);
        while !run.vhost().exists() {
            if !helper.alive() || Instant::now() > end {
                helper.terminate(Duration::from_secs(1));
                let log = std::fs::read_to_string(run.helper_log()).unwrap_or_default();
                return Err(VmmError::Unusable(format!(
                    "{VHOST} did not create {}: {}",
                    run.vhost().display(),
                    log.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Some(helper))
    }

    fn start_vmm(&self, cfg: &VmConfig) -> Result<Proc, VmmError> {
        start(cfg, false)
    }

    fn start_vmm_incoming(&self, cfg: &VmConfig) -> Result<Proc, VmmError> {
        start(cfg, true)
    }

    fn fatal_log(&self, run_dir: &Path) -> Option<String> {
        let log = std::fs::read_to_string(RunDir(run_dir).vmm_log()).ok()?;
        log.lines()
            .find(|l| {
                let l = l.to_lowercase();
                (l.contains("vhost") && (l.contains("fail") || l.contains("error")))
                    || l.contains("could not")
            })
            .map(|l| format!("QEMU: {}", l.trim()))
    }

    fn version(&self) -> String {
        version()
    }
}

/// QEMU's `--version` first line (a snapshot stream is only loaded by the same build).
pub fn version() -> String {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        Command::new(QEMU)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "unknown".to_string())
    })
    .clone()
}

fn start(cfg: &VmConfig, incoming: bool) -> Result<Proc, VmmError> {
    Qemu.check(cfg)?;
    let run = RunDir(&cfg.run_dir);
    let mut jail = jail(cfg)?;
    let mut tap_fd = None;
    if let (Some(j), Some(n)) = (
        jail.as_mut(),
        cfg.net.as_ref().filter(|n| !n.tap.is_empty()),
    ) {
        use std::os::fd::AsRawFd;
        let f = crate::host::net::tap::open_for_vmm(&n.tap)
            .map_err(|e| VmmError::Unusable(crate::resources::error_chain(&e)))?;
        tap_fd = Some(f.as_raw_fd());
        j.pass_fds.push(f.into());
    }
    let args = args(cfg, hardware_kvm(), tap_fd, incoming);
    std::fs::write(
        run.config(),
        serde_json::to_string_pretty(&serde_json::json!({ "qemu": args })).unwrap_or_default(),
    )
    .map_err(|e| VmmError::io("cannot write", &run.config(), e))?;
    let mut qemu = Command::new(QEMU);
    qemu.args(&args);
    spawn_detached(qemu, &run.vmm_log(), QEMU, jail.as_ref())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::host::vmm::NetConfig;

    #[test]
    fn the_recipe_that_boots_under_tcg() {
        let cfg = VmConfig {
            name: "a".into(),
            run_dir: "/s/run/a".into(),
            kernel: "/s/cache/vmlinuz".into(),
            initrd: Some("/s/cache/initrd".into()),
            cmdline: "console=ttyS0 fort.hostname=a".into(),
            root: "/s/drives/a-root.ext4".into(),
            drives: vec!["/s/drives/data.ext4".into()],
            serials: vec!["fort-data".into()],
            vcpus: 1,
            memory_mib: 256,
            net: Some(NetConfig {
                tap: "fort-a".into(),
                mac: "02:fc:0a:4d:00:02".into(),
            }),
            cid: 9,
            confine: None,
        };
        assert_eq!(
            args(&cfg, false, None, false).join(" "),
            "-accel tcg,tb-size=64 -cpu max -M pc -smp 1 -m 256 \
             -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
             -chardev socket,id=vsock,path=/s/run/a/vhost.sock -device vhost-user-vsock-pci,chardev=vsock,id=vsock0,addr=0x2 \
             -drive file=/s/drives/a-root.ext4,format=raw,if=none,id=root,cache=writeback -device virtio-blk-pci,drive=root,addr=0x3 \
             -drive file=/s/drives/data.ext4,format=raw,if=none,id=data0,cache=writeback -device virtio-blk-pci,drive=data0,addr=0x4,serial=fort-data \
             -netdev tap,id=net0,ifname=fort-a,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=02:fc:0a:4d:00:02,addr=0x5 \
             -qmp unix:/s/run/a/qmp.sock,server=on,wait=off \
             -nographic -no-reboot -nodefaults -serial file:/s/run/a/console.log \
             -kernel /s/cache/vmlinuz -initrd /s/cache/initrd -append console=ttyS0 fort.hostname=a no_timer_check"
        );
        // Restoring: no vsock device (plugged in after the load), the others in their slots.
        let inc = args(&cfg, false, None, true).join(" ");
        assert!(!inc.contains("vhost-user-vsock"), "{inc}");
        assert!(
            inc.contains("-object memory-backend-memfd,id=mem,size=256M,share=on "),
            "{inc}"
        );
        assert!(
            inc.contains("-device virtio-blk-pci,drive=root,addr=0x3 "),
            "{inc}"
        );
        assert!(inc.ends_with(" no_timer_check -incoming defer -S"), "{inc}");
        let kvm = args(&cfg, true, None, false).join(" ");
        assert!(kvm.starts_with("-accel kvm -cpu host "), "{kvm}");
        // The timer check is skipped only under TCG, and never twice.
        assert!(
            kvm.ends_with("-append console=ttyS0 fort.hostname=a"),
            "{kvm}"
        );
        let once = VmConfig {
            cmdline: "console=ttyS0 no_timer_check".into(),
            ..cfg.clone()
        };
        assert!(args(&once, false, None, false)
            .join(" ")
            .ends_with("-append console=ttyS0 no_timer_check"));
        // Confined: the TAP comes as a descriptor, and QEMU's sandbox is on.
        let confined = VmConfig {
            confine: Some(crate::host::vmm::Confine {
                uid: 2_000_000_000,
                gid: 2_000_000_000,
                groups: vec![],
                cgroup: "fort/1a2b3c4d/vm-a".into(),
                cgroup_version: 1,
                cgroup_dirs: vec![],
                limits: crate::host::cgroup::limits(1, 256 << 20),
            }),
            ..cfg
        };
        let a = args(&confined, false, Some(7), false).join(" ");
        assert!(
            a.contains(" -netdev tap,id=net0,fd=7 -device virtio-net-pci"),
            "{a}"
        );
        assert!(
            a.ends_with(
                " -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "{a}"
        );
    }
}
